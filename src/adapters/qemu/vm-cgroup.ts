import { constants } from 'node:fs';
import { access, mkdir, readFile, rmdir } from 'node:fs/promises';
import { join } from 'node:path';
import { TetherError, messageOf } from '../../domain/errors.js';

/**
 * The per-host cgroup VMs run in: `<cgroup2 mount>/tether/<hostId>/` by default.
 *
 * Invariants: every process a VM's QEMU forks stays in its host's cgroup (a process cannot leave a
 * cgroup by forking or daemonising), so `cgroup.procs` lists every process the host's VMs made; a
 * listed process is still signalled only after the ownership check of process-owner.ts (a cgroup
 * is a place, not a proof of ownership). Nothing here signals a process.
 */

/** Sub-folder of the cgroup2 mount that holds one cgroup per host id. */
export const VM_CGROUP_PARENT = 'tether';

/**
 * The script that launches QEMU inside a cgroup: `sh -c SCRIPT <cgroup dir> <qemu> <args…>`.
 * The shell moves itself into the cgroup, then `exec`s QEMU (same pid, argv[0] = the QEMU binary);
 * retried because a concurrent `rmdir` of an empty host cgroup may remove it in between.
 */
export const JOIN_CGROUP_SCRIPT =
  'for i in 1 2 3 4 5; do mkdir -p "$0" && echo $$ > "$0/cgroup.procs" && exec "$@"; sleep 0.05; done; ' +
  'echo "tether: cannot join cgroup $0" >&2; exit 126';

/** The first writable-looking (`rw`) cgroup2 mount in a `/proc/self/mounts` text, preferring /sys/fs/cgroup. */
export function cgroup2MountFrom(mounts: string): string | undefined {
  const found: string[] = [];
  for (const line of mounts.split('\n')) {
    const f = line.split(' ');
    if (f[2] !== 'cgroup2' || f[1] === undefined) continue;
    if (!(f[3] ?? '').split(',').includes('rw')) continue;
    found.push(f[1].replace(/\\040/g, ' '));
  }
  return found.find((m) => m === '/sys/fs/cgroup') ?? found[0];
}

/** Where VM cgroups live, or why there are none. */
export type VmCgroupRoot = { readonly root: string } | { readonly root: undefined; readonly why: string };

/**
 * Resolves the folder that holds the per-host cgroups. `option`: false disables cgroups; a path
 * uses that folder (it must be inside a cgroup2 hierarchy); undefined finds the cgroup2 mount in
 * `/proc/self/mounts` and uses `<mount>/tether`. With `create`, the folder is made (and so proven
 * writable); without, it is only computed (the guardian reads, never creates).
 */
export async function resolveVmCgroupRoot(option: string | false | undefined, create: boolean): Promise<VmCgroupRoot> {
  if (option === false) return { root: undefined, why: 'cgroups disabled by configuration' };
  let root = option;
  if (root === undefined) {
    let mounts: string;
    try {
      mounts = await readFile('/proc/self/mounts', 'utf8');
    } catch (err) {
      return { root: undefined, why: `cannot read /proc/self/mounts: ${messageOf(err)}` };
    }
    const mount = cgroup2MountFrom(mounts);
    if (mount === undefined) return { root: undefined, why: 'no writable cgroup2 hierarchy is mounted' };
    root = join(mount, VM_CGROUP_PARENT);
  }
  if (!create) return { root };
  try {
    await mkdir(root, { recursive: true });
    await access(join(root, 'cgroup.procs'), constants.W_OK);
    return { root };
  } catch (err) {
    if (option !== undefined) throw new TetherError('VMM_ERROR', `cgroup root ${root} is not a writable cgroup2 folder: ${messageOf(err)}`, { cause: err });
    return { root: undefined, why: `cannot use ${root}: ${messageOf(err)}` };
  }
}

/** `<root>/<hostId>`: the cgroup of one host's VMs. */
export function hostCgroupDir(root: string, hostId: string): string {
  return join(root, hostId);
}

/** Pids listed in `<dir>/cgroup.procs`; empty when the cgroup does not exist. */
export async function cgroupPids(dir: string): Promise<number[]> {
  let text: string;
  try {
    text = await readFile(join(dir, 'cgroup.procs'), 'utf8');
  } catch {
    return [];
  }
  return text.split('\n').filter((l) => /^[0-9]+$/.test(l)).map(Number);
}

/** Removes the cgroup `dir` when it holds no process (the kernel refuses otherwise). True if removed or absent. */
export async function removeEmptyCgroup(dir: string): Promise<boolean> {
  try {
    await rmdir(dir);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'ENOENT';
  }
}

/** The cgroup2 path of `pid` (the `0::` line of `/proc/<pid>/cgroup`), e.g. `/tether/h1`. */
export async function cgroupOf(pid: number): Promise<string | undefined> {
  try {
    const text = await readFile(`/proc/${pid}/cgroup`, 'utf8');
    return /^0::(.*)$/m.exec(text)?.[1];
  } catch {
    return undefined;
  }
}
