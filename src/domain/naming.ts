/** Guest-visible identifiers derived from a VM uid (32 lowercase hex chars). Tap names: see tap-name.ts. */

/** Locally administered unicast MAC for interface `index` of VM `uid`: `02:` + 4 uid bytes + index. */
export function guestMac(uid: string, index: number): string {
  const bytes = [0x02, ...[0, 2, 4, 6].map((o) => parseInt(uid.slice(o, o + 2), 16)), index & 0xff];
  return bytes.map((b) => b.toString(16).padStart(2, '0')).join(':');
}

/** True for a uid as Tether makes them. */
export function isVmUid(uid: string): boolean {
  return /^[0-9a-f]{32}$/.test(uid);
}
