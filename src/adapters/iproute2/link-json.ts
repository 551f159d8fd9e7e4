/**
 * Parsing of `ip -json -details link show` output and the owner-mark rules built on it. Pure: no
 * Node imports, unit-tested on their own.
 */
import { ownerAlias, parseOwnerAlias, type TapInfo, type TapOwner } from '../../ports/network.js';

/** Longest alias Linux stores (IFALIASZ 256, minus the NUL). */
export const MAX_ALIAS_LENGTH = 255;

/** A link as `ip -json -details` reports it: a {@link TapInfo} plus what ownership checks need. */
export interface LinkInfo extends TapInfo {
  /** Kernel interface index; a re-created device with the same name gets a new one. */
  readonly ifindex: number;
  /** Raw interface alias (`ifalias`), if any. Ownership compares this string exactly. */
  readonly alias?: string;
  /** `linkinfo.info_kind`, e.g. `tun`, `veth`; undefined for devices without one (e.g. `lo`). */
  readonly kind?: string;
  /** True only for a tun/tap device in tap mode (`info_kind` `tun`, `info_data.type` `tap`). */
  readonly isTap: boolean;
}

/**
 * Why `owner` cannot be written as a mark, or undefined when it can. A mark is usable only if it
 * parses back to exactly the same owner (so `listOwned` finds it) and fits in the kernel's alias.
 */
export function ownerMarkProblem(owner: TapOwner): string | undefined {
  const alias = ownerAlias(owner);
  const back = parseOwnerAlias(alias);
  if (!back || back.hostId !== owner.hostId || back.vmUid !== owner.vmUid) {
    return `owner mark "${alias}" is not well-formed (hostId [A-Za-z0-9._-]+, vmUid [A-Za-z0-9-]+)`;
  }
  if (alias.length > MAX_ALIAS_LENGTH) return `owner mark is ${alias.length} chars, the kernel keeps ${MAX_ALIAS_LENGTH}`;
  return undefined;
}

/**
 * True when `link` is a tap that carries exactly `owner`'s mark: the only devices Tether may
 * delete or adopt. The raw alias is compared byte for byte; a name, a prefix, or a near-miss alias
 * never counts.
 */
export function isOwnedTap(link: LinkInfo, owner: TapOwner): boolean {
  return link.isTap && link.alias === ownerAlias(owner);
}

function asRecord(v: unknown): Record<string, unknown> | undefined {
  return typeof v === 'object' && v !== null && !Array.isArray(v) ? (v as Record<string, unknown>) : undefined;
}

/**
 * Parses the JSON array printed by `ip -json -details link show [dev X]`.
 *
 * Invariants: entries without a string `ifname` or numeric `ifindex` are skipped; `up` is the
 * administrative UP flag (a tap with no reader is UP but has operstate DOWN / NO-CARRIER);
 * `owner` is set only when the alias is a well-formed Tether mark.
 * @throws SyntaxError when the text is not JSON, TypeError when it is not an array.
 */
export function parseLinkJson(text: string): LinkInfo[] {
  const trimmed = text.trim();
  // Old iproute2 prints nothing for an empty namespace.
  if (trimmed === '') return [];
  const data: unknown = JSON.parse(trimmed);
  if (!Array.isArray(data)) throw new TypeError('ip -json output is not an array');
  const out: LinkInfo[] = [];
  for (const item of data) {
    const rec = asRecord(item);
    if (!rec || typeof rec.ifname !== 'string' || typeof rec.ifindex !== 'number') continue;
    const flags = Array.isArray(rec.flags) ? rec.flags : [];
    const linkinfo = asRecord(rec.linkinfo);
    const kind = typeof linkinfo?.info_kind === 'string' ? linkinfo.info_kind : undefined;
    const tunType = asRecord(linkinfo?.info_data)?.type;
    const alias = typeof rec.ifalias === 'string' ? rec.ifalias : undefined;
    const owner = parseOwnerAlias(alias);
    out.push({
      name: rec.ifname,
      ifindex: rec.ifindex,
      up: flags.includes('UP'),
      isTap: kind === 'tun' && tunType === 'tap',
      ...(alias !== undefined ? { alias } : {}),
      ...(kind !== undefined ? { kind } : {}),
      ...(owner ? { owner } : {}),
    });
  }
  return out;
}
