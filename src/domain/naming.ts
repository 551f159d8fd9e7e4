/**
 * Names of host resources, derived from a VM uid (32 lowercase hex chars).
 *
 * Invariant: names are a function of the uid only, never a guess about ownership. Two VMs whose
 * uids share the 11-hex prefix would collide; the collision is detected (the network adapter
 * refuses a device that carries another owner's mark) rather than assumed away.
 */

/** Linux IFNAMSIZ - 1. */
export const MAX_IFNAME = 15;

/** Tap name for interface `index` of VM `uid`: `tt` + 11 hex of the uid + base-36 index (<= 14 chars). */
export function tapName(uid: string, index: number): string {
  if (!/^[0-9a-f]{32}$/.test(uid)) throw new Error(`tapName: uid must be 32 lowercase hex chars, got ${JSON.stringify(uid)}`);
  if (!Number.isInteger(index) || index < 0 || index > 35) throw new Error(`tapName: interface index ${index} out of range 0..35`);
  return `tt${uid.slice(0, 11)}${index.toString(36)}`;
}

/** Locally administered unicast MAC for interface `index` of VM `uid`: `02:` + 4 uid bytes + index. */
export function guestMac(uid: string, index: number): string {
  const bytes = [0x02, ...[0, 2, 4, 6].map((o) => parseInt(uid.slice(o, o + 2), 16)), index & 0xff];
  return bytes.map((b) => b.toString(16).padStart(2, '0')).join(':');
}

/** True for a uid as Tether makes them. */
export function isVmUid(uid: string): boolean {
  return /^[0-9a-f]{32}$/.test(uid);
}
