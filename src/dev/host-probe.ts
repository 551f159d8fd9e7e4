import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, rmdirSync, rmSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { cgroup2MountFrom, VM_CGROUP_PARENT } from '../adapters/qemu/vm-cgroup.js';

/**
 * Looks at the real host (/proc, `ip link`) the way an operator would: used by the integration
 * tests, the benchmarks and the dev cluster to check what exists, never through an agent's view.
 */

/** A real part integration tests and chaos runs need. */
export type RealPart = 'root' | 'qemu' | 'guest' | 'etcd' | 'build';

/**
 * The parts of `parts` this machine lacks, each named with the command that provides it (empty when
 * none is missing). `repo` is the checkout whose build `build` looks for.
 */
export function missingRealParts(parts: readonly RealPart[], repo: string): string[] {
  const missing: string[] = [];
  const have = (bin: string) => {
    try {
      execFileSync('sh', ['-c', `command -v ${bin}`], { stdio: 'ignore' });
      return true;
    } catch {
      return false;
    }
  };
  if (parts.includes('root') && process.getuid?.() !== 0) missing.push('root (taps and QEMU processes need it)');
  if (parts.includes('qemu') && !have('qemu-system-x86_64')) missing.push('qemu-system-x86_64 (run scripts/install-system.sh)');
  if (parts.includes('etcd') && !have('etcd')) missing.push('etcd (run scripts/install-system.sh)');
  const guest = join(process.env.TETHER_CACHE_DIR ?? join(homedir(), '.cache', 'tether'), 'guest');
  if (parts.includes('guest') && !['vmlinux', 'initrd.img', 'rootfs.img'].every((f) => existsSync(join(guest, f)))) {
    missing.push(`the guest image in ${guest} (run scripts/build-guest.sh)`);
  }
  if (parts.includes('build') && !existsSync(join(repo, 'dist/src/cli/main.js'))) missing.push('the build (run npm run build)');
  return missing;
}

/** Every process whose command line contains `needle` (pid -> argv). */
export function processesWith(needle: string): Map<number, string[]> {
  const out = new Map<number, string[]>();
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const raw = readFileSync(`/proc/${name}/cmdline`, 'utf8');
      if (raw.includes(needle)) out.set(Number(name), raw.split('\0').filter(Boolean));
    } catch {
      /* gone */
    }
  }
  return out;
}

/** QEMU processes carrying `tether:<hostId>:`, as uid -> pid. */
export function qemusOf(hostId: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const [pid, argv] of processesWith(`tether:${hostId}:`)) {
    if (!argv[0]?.includes('qemu-system')) continue;
    const name = argv[argv.indexOf('-name') + 1] ?? '';
    const uid = name.split(',')[0]!.split(':')[2];
    if (uid) out.set(uid, pid);
  }
  return out;
}

/** Links as `ip -json -details link show` reports them: name -> alias. */
export function links(): Map<string, string | undefined> {
  const data = JSON.parse(execFileSync('ip', ['-json', '-details', 'link', 'show'], { encoding: 'utf8' })) as { ifname: string; ifalias?: string }[];
  return new Map(data.map((l) => [l.ifname, l.ifalias]));
}

/** Tap devices whose alias marks them as `hostId`'s. */
export function tapsOf(hostId: string): string[] {
  return [...links()].filter(([, a]) => a?.startsWith(`tether:${hostId}:`)).map(([n]) => n);
}

/** Polls `fn` until it returns a truthy value or `timeoutMs` passes (then throws with `what`). */
export async function until<T>(what: string, fn: () => T | Promise<T>, timeoutMs = 30_000, everyMs = 100): Promise<NonNullable<T>> {
  const t0 = Date.now();
  for (;;) {
    const v = await fn();
    if (v) return v as NonNullable<T>;
    if (Date.now() - t0 > timeoutMs) throw new Error(`timed out after ${timeoutMs}ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

/** Kills every QEMU and the guardian of `hostId` and removes its taps: the last-resort cleanup of a test. */
export function killHostLeftovers(hostId: string): void {
  for (const pid of qemusOf(hostId).values()) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      /* gone */
    }
  }
  for (const tap of tapsOf(hostId)) execFileSync('ip', ['link', 'del', 'dev', tap]);
  // Its guardian too: it exits once its state dir is gone, but a write racing the removal can
  // recreate the dir and keep it alive (seen once in CI). Only `tether guardian --host-id <hostId>`.
  for (const [pid, args] of processesWith(hostId)) {
    const at = args.indexOf('--host-id');
    if (args.includes('guardian') && at >= 0 && args[at + 1] === hostId) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
  }
  removeHostCgroup(hostId);
  removeStaleHostLock(hostId);
}

/** Removes `hostId`'s host-id lock (`$TETHER_LOCK_DIR` or /run/tether) when no live process holds it. */
export function removeStaleHostLock(hostId: string): void {
  const path = join(process.env.TETHER_LOCK_DIR ?? '/run/tether', `host-${hostId}.lock`);
  let pid: number;
  try {
    pid = Number(readFileSync(path, 'utf8').split('\n')[0]);
  } catch {
    return;
  }
  if (Number.isInteger(pid) && pid > 0 && existsSync(`/proc/${pid}`)) return;
  rmSync(path, { force: true });
}

/**
 * Removes the per-host VM cgroup of `hostId` (`<cgroup2>/tether/<hostId>`, see vm-cgroup.ts) once the
 * processes killed above have left it (up to 2 s); a cgroup that still holds a process is left alone.
 */
export function removeHostCgroup(hostId: string): void {
  const mount = cgroup2MountFrom(readFileSync('/proc/self/mounts', 'utf8'));
  if (!mount) return;
  const dir = join(mount, VM_CGROUP_PARENT, hostId);
  if (!existsSync(dir)) return;
  const t0 = Date.now();
  while (readFileSync(join(dir, 'cgroup.procs'), 'utf8').trim() !== '' && Date.now() - t0 < 2000) Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 20);
  try {
    rmdirSync(dir);
  } catch {
    /* still busy: the leak check reports it */
  }
}

