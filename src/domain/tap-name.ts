/**
 * Pure naming rules for host network devices (no Node imports, unit-tested on their own).
 *
 * Linux limits interface names to IFNAMSIZ - 1 = 15 bytes and refuses `/`, `:` and whitespace; Tether
 * is stricter so that a name is also a safe single token on an `ip -batch` line.
 */

/** Prefix of every tap name Tether derives. A name with this prefix proves nothing: ownership is the alias. */
export const TAP_NAME_PREFIX = 'tt';

/** Longest interface name Linux accepts (IFNAMSIZ 16, minus the NUL). */
export const MAX_IFNAME_LENGTH = 15;

/** Number of leading hex digits of the VM uid kept in a tap name. */
export const TAP_UID_HEX_DIGITS = 11;

/** Largest interface index {@link tapName} encodes (two base-36 digits). */
export const MAX_TAP_INDEX = 36 * 36 - 1;

const UID_RE = /^[0-9a-f]{32}$/;
const IFNAME_RE = /^[A-Za-z0-9_.][A-Za-z0-9_.-]{0,14}$/;

/**
 * The tap name for interface `index` of the VM `vmUid`: `tt` + the first 11 hex digits of the uid +
 * the index in base 36 (1 or 2 chars). Always 14-15 chars of `[a-z0-9]`, deterministic, so a
 * restarted agent finds the same name again.
 *
 * Invariant: distinct indexes of one uid never collide. Two uids sharing their first 44 bits do
 * collide; that is not assumed away but detected: the second VM's `createTap` finds the first VM's
 * owner alias on the device and fails with NOT_OWNED, and nothing is deleted.
 *
 * @param vmUid 32 lowercase hex chars.
 * @param index interface index, integer in [0, {@link MAX_TAP_INDEX}].
 * @throws RangeError on a uid or index outside those rules.
 */
export function tapName(vmUid: string, index: number): string {
  if (!UID_RE.test(vmUid)) throw new RangeError(`vm uid must be 32 lowercase hex chars, got "${vmUid}"`);
  if (!Number.isInteger(index) || index < 0 || index > MAX_TAP_INDEX) {
    throw new RangeError(`interface index must be an integer in [0, ${MAX_TAP_INDEX}], got ${index}`);
  }
  return `${TAP_NAME_PREFIX}${vmUid.slice(0, TAP_UID_HEX_DIGITS)}${index.toString(36)}`;
}

/**
 * True when `name` is a device name Tether will pass to `ip`: 1-15 chars of `[A-Za-z0-9_.-]`, not
 * starting with `-`, and not `.` or `..`. Every Linux-valid name Tether creates passes.
 */
export function isValidIfName(name: string): boolean {
  return IFNAME_RE.test(name) && name !== '.' && name !== '..';
}
