/** Owner mark stored on a tap device (interface alias). */
export interface TapOwner {
  readonly hostId: string;
  readonly vmUid: string;
}

/** A tap device as found on the host. */
export interface TapInfo {
  readonly name: string;
  /** Parsed owner mark, or undefined when the device has no Tether alias. */
  readonly owner?: TapOwner;
  readonly up: boolean;
}

/**
 * Host networking port (iproute2 in production).
 *
 * Invariants: only devices whose alias is exactly `tether:<hostId>:<vmUid>` of the caller are ever
 * deleted; deleting a missing device succeeds; `createTap` on a device that already exists with
 * the same owner succeeds, with another or no owner fails with code NOT_OWNED.
 */
export interface Network {
  /** Creates the tap, sets its owner alias, and brings it up. */
  createTap(name: string, owner: TapOwner): Promise<void>;
  /** The device named `name`, or undefined. */
  getTap(name: string): Promise<TapInfo | undefined>;
  /** Deletes the tap if it exists and carries exactly `owner`; else leaves it (NOT_OWNED if foreign). */
  deleteTap(name: string, owner: TapOwner): Promise<void>;
  /** Every device whose alias marks it as owned by `hostId`. */
  listOwned(hostId: string): Promise<TapInfo[]>;
}

/** Alias text for an owner: `tether:<hostId>:<vmUid>`. */
export function ownerAlias(owner: TapOwner): string {
  return `tether:${owner.hostId}:${owner.vmUid}`;
}

/** Parses an alias; undefined when it is not a Tether mark. */
export function parseOwnerAlias(alias: string | undefined): TapOwner | undefined {
  if (!alias) return undefined;
  const m = /^tether:([A-Za-z0-9._-]+):([A-Za-z0-9-]+)$/.exec(alias);
  return m ? { hostId: m[1]!, vmUid: m[2]! } : undefined;
}
