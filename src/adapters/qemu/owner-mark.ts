import { basename } from 'node:path';

/**
 * The ownership mark of a VM process: QEMU's `-name` argument `tether:<hostId>:<uid>,process=…`.
 * The same `tether:<hostId>:<uid>` text marks tap devices (see `ownerAlias` in the network port).
 *
 * Invariant: a process is "ours" only if its argv[0] is a QEMU system emulator AND its `-name`
 * value starts with exactly `tether:<hostId>:<uid>` followed by `,` or the end. A process that
 * merely mentions the uid anywhere else in its argv never matches.
 */

/** Allowed host ids: the same alphabet as the tap owner alias. */
export const HOST_ID_PATTERN = /^[A-Za-z0-9._-]+$/;
/** Allowed VM uids: the same alphabet as the tap owner alias. */
export const VM_UID_PATTERN = /^[A-Za-z0-9-]+$/;

/** Owner of a VM process, parsed from its command line. */
export interface ProcessOwner {
  readonly hostId: string;
  readonly uid: string;
}

/** The `-name` value for a VM: `tether:<hostId>:<uid>,process=tether-<first 8 chars of uid>`. */
export function qemuNameArg(owner: ProcessOwner): string {
  // `process=` sets the thread name (comm, 15 chars max) that ps/top show.
  return `tether:${owner.hostId}:${owner.uid},process=tether-${owner.uid.slice(0, 8)}`;
}

/** True when `argv0` names a QEMU system emulator (`qemu-system-*`, any directory). */
export function isQemuArgv0(argv0: string | undefined, extraBinary?: string): boolean {
  if (!argv0) return false;
  const base = basename(argv0);
  return base.startsWith('qemu-system-') || (extraBinary !== undefined && base === basename(extraBinary));
}

/**
 * The owner mark carried by a process's argv (as read from `/proc/<pid>/cmdline`), or undefined
 * when the process is not a marked QEMU. `qemuBinary` also accepts a custom binary name.
 */
export function parseOwnerFromArgv(argv: readonly string[], qemuBinary?: string): ProcessOwner | undefined {
  if (!isQemuArgv0(argv[0], qemuBinary)) return undefined;
  for (let i = 1; i < argv.length - 1; i++) {
    if (argv[i] !== '-name') continue;
    const m = /^tether:([^:,]+):([^:,]+)(?:,|$)/.exec(argv[i + 1] ?? '');
    if (!m) return undefined;
    const hostId = m[1]!;
    const uid = m[2]!;
    if (!HOST_ID_PATTERN.test(hostId) || !VM_UID_PATTERN.test(uid)) return undefined;
    return { hostId, uid };
  }
  return undefined;
}

/**
 * True when argv is a QEMU marked for `uid` and, when `hostId` is given, for that host.
 * This is the check that must pass before any signal or QMP command reaches a pid.
 */
export function argvCarriesMark(argv: readonly string[], uid: string, hostId: string | undefined, qemuBinary?: string): boolean {
  const owner = parseOwnerFromArgv(argv, qemuBinary);
  return owner !== undefined && owner.uid === uid && (hostId === undefined || owner.hostId === hostId);
}
