import { constants } from 'node:fs';
import { access, readdir, readFile, readlink, realpath } from 'node:fs/promises';
import { basename, delimiter, dirname, join, resolve } from 'node:path';
import { TetherError, messageOf } from '../../domain/errors.js';
import { parseOwnerFromArgv } from './owner-mark.js';
import { readArgv, readPidFile } from './proc-fs.js';

/**
 * The one ownership check of a VM process, shared by QemuVmm and the guardian.
 *
 * Invariant: a process is this host's VM only if ALL of these hold, checked in this order right
 * before it is signalled or sent a QMP command:
 * 1. its pid file is `<stateRoot>/vm/<ns>/<name>/<uid>/qemu.pid` — lexically, and also after
 *    resolving symlinks (`realpath` of its folder), so it lies under THIS agent's state dir;
 * 2. that pid file names the pid;
 * 3. the process is alive (not a zombie) and its `/proc/<pid>/cmdline` carries the owner mark
 *    `-name tether:<hostId>:<uid>` (owner-mark.ts) for this host, with the same `<uid>` as the
 *    pid file's folder;
 * 4. it runs as the expected user: the real, effective, saved and file-system uids of
 *    `/proc/<pid>/status` all equal the expected uid (default: this process's effective uid; the
 *    owner of `/proc/<pid>` is not used, a process can make it root by turning non-dumpable);
 * 5. `/proc/<pid>/exe` is the configured QEMU binary (its realpath; PATH lookup for a bare name),
 *    or that path with ` (deleted)` (the package was upgraded under a running VM);
 * 6. the process start time did not change during the checks (no pid reuse in between).
 * A second agent with the same host id but another state dir, a renamed copy of another program,
 * the real QEMU binary run by another user with a forged mark, or a process that only forges the
 * mark fails at least one of them.
 *
 * After a process was verified, {@link VmOwnership.stillAlive} follows it by (pid, start time):
 * the same process, even once QEMU removed its pid file on exit.
 */

/** Where `binary` runs from: realpath of the path, or of the first executable match in PATH for a bare name. */
export async function resolveQemuExecutable(binary: string, pathEnv: string | undefined = process.env.PATH): Promise<string> {
  const candidates = binary.includes('/') ? [resolve(binary)] : (pathEnv ?? '').split(delimiter).filter((d) => d !== '').map((d) => join(d, binary));
  for (const c of candidates) {
    try {
      await access(c, constants.X_OK);
      return await realpath(c);
    } catch {
      /* next */
    }
  }
  throw new TetherError('VMM_ERROR', `QEMU binary ${binary} not found${binary.includes('/') ? '' : ' in PATH'}: install qemu-system-x86 (scripts/install-system.sh) or pass its path`, {
    details: { binary },
  });
}

/** The fields of `/proc/<pid>/stat` the ownership check uses. */
export interface ProcStat {
  /** One-letter state (`R`, `S`, `D`, `Z`, `T`, ...). */
  readonly state: string;
  /** Start time since boot in clock ticks (field 22): with the pid, identifies one process. */
  readonly startTime: string;
}

/** Parses `/proc/<pid>/stat`; undefined when the process does not exist. */
export async function readProcStat(pid: number, procRoot = '/proc'): Promise<ProcStat | undefined> {
  let text: string;
  try {
    text = await readFile(`${procRoot}/${pid}/stat`, 'utf8');
  } catch {
    return undefined;
  }
  // comm (field 2) may hold spaces and parentheses: fields resume after the LAST ')'.
  const rest = text.slice(text.lastIndexOf(')') + 2).split(' ');
  const state = rest[0];
  const startTime = rest[19];
  if (state === undefined || startTime === undefined) return undefined;
  return { state, startTime };
}

/** The uids of `/proc/<pid>/status` (`Uid:` line): real, effective, saved set, file system. */
export interface ProcUids {
  readonly real: number;
  readonly effective: number;
  readonly saved: number;
  readonly fs: number;
}

/** Parses the `Uid:` line of `/proc/<pid>/status`; undefined when the process does not exist. */
export async function readProcUids(pid: number, procRoot = '/proc'): Promise<ProcUids | undefined> {
  let text: string;
  try {
    text = await readFile(`${procRoot}/${pid}/status`, 'utf8');
  } catch {
    return undefined;
  }
  const m = /^Uid:\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s*$/m.exec(text);
  if (!m) return undefined;
  return { real: Number(m[1]), effective: Number(m[2]), saved: Number(m[3]), fs: Number(m[4]) };
}

/** This process's effective uid (the user VMs are expected to run as by default). */
export function currentEuid(): number {
  return process.geteuid?.() ?? 0;
}

/** A verified VM process of this host. */
export interface OwnedVm {
  readonly pid: number;
  readonly uid: string;
  readonly hostId: string;
  /** `<stateRoot>/vm/<ns>/<name>/<uid>/qemu.pid` (lexical, absolute). */
  readonly pidFile: string;
  /** The VM's state folder (the pid file's folder). */
  readonly stateDir: string;
  /** `/proc/<pid>/stat` start time at verification (see {@link ProcStat}). */
  readonly startTime: string;
}

/** Outcome of {@link VmOwnership.verify}: the VM, or the first check that failed. */
export type OwnershipVerdict = { readonly owned: true; readonly vm: OwnedVm } | { readonly owned: false; readonly reason: string };

/** Options of {@link VmOwnership}. */
export interface VmOwnershipOptions {
  /** The agent's state dir (absolute or resolved against the cwd). */
  readonly stateRoot: string;
  /** This host's id; undefined accepts any host id in the mark (tests only: the agent always sets it). */
  readonly hostId?: string;
  /** The configured QEMU binary (name or path). */
  readonly qemuBinary: string;
  /** `/proc` (tests may not change it for the exe check, which needs the real one). */
  readonly procRoot?: string;
  /**
   * The user VM processes must run as (every uid of `/proc/<pid>/status`); default this
   * process's effective uid (the agent, and the guardian it starts, run as the user that runs QEMU).
   */
  readonly expectedUid?: number;
}

const SEGMENT = /^[^/\0]+$/;

/** Checks VM processes against {@link VmOwnershipOptions} (see the module invariant). */
export class VmOwnership {
  /** Resolved (lexical) state root. */
  readonly stateRoot: string;
  private readonly hostId: string | undefined;
  private readonly qemuBinary: string;
  private readonly procRoot: string;
  /** The uid every VM process must run as (see {@link VmOwnershipOptions.expectedUid}). */
  readonly expectedUid: number;
  private exe: Promise<string> | undefined;

  constructor(options: VmOwnershipOptions) {
    this.stateRoot = resolve(options.stateRoot);
    this.hostId = options.hostId;
    this.qemuBinary = options.qemuBinary;
    this.procRoot = options.procRoot ?? '/proc';
    this.expectedUid = options.expectedUid ?? currentEuid();
  }

  /** The realpath of the configured QEMU binary, resolved once (a failure is retried next call). */
  qemuExe(): Promise<string> {
    if (!this.exe) {
      const p = resolveQemuExecutable(this.qemuBinary);
      this.exe = p;
      p.catch(() => {
        if (this.exe === p) this.exe = undefined;
      });
    }
    return this.exe;
  }

  /** `<stateRoot>/vm/<ns>/<name>/<uid>/qemu.pid` for a VM folder `<stateRoot>/vm/<ns>/<name>/<uid>`. */
  pidFileOf(stateDir: string): string {
    return join(resolve(stateDir), 'qemu.pid');
  }

  /** The (ns, name, uid) of a pid file path when it has the exact layout under the state root. */
  layoutOf(pidFile: string): { ns: string; name: string; uid: string } | undefined {
    const abs = resolve(pidFile);
    const prefix = `${this.stateRoot}/vm/`;
    if (!abs.startsWith(prefix) || basename(abs) !== 'qemu.pid') return undefined;
    const parts = abs.slice(prefix.length).split('/');
    if (parts.length !== 4 || !parts.slice(0, 3).every((p) => SEGMENT.test(p) && p !== '.' && p !== '..')) return undefined;
    return { ns: parts[0]!, name: parts[1]!, uid: parts[2]! };
  }

  /**
   * Runs every check of the module invariant on the process named by `pidFile`. `expect.pid`:
   * the pid file must name that pid; `expect.uid`: the VM must be that uid; `expect.hostId`
   * overrides this instance's host id. Never throws for a process that is not ours; throws
   * VMM_ERROR only when the QEMU binary cannot be resolved (then nothing can be verified).
   */
  async verify(pidFile: string, expect: { pid?: number; uid?: string; hostId?: string } = {}): Promise<OwnershipVerdict> {
    const no = (reason: string): OwnershipVerdict => ({ owned: false, reason });
    const layout = this.layoutOf(pidFile);
    if (!layout) return no(`pid file ${pidFile} is not <state dir>/vm/<ns>/<name>/<uid>/qemu.pid under ${this.stateRoot}`);
    if (expect.uid !== undefined && layout.uid !== expect.uid) return no(`pid file folder is uid ${layout.uid}, not ${expect.uid}`);
    const abs = resolve(pidFile);
    const folder = dirname(abs);
    try {
      const [realFolder, realRoot] = await Promise.all([realpath(folder), realpath(this.stateRoot)]);
      if (realFolder !== join(realRoot, 'vm', layout.ns, layout.name, layout.uid)) return no(`pid file folder resolves to ${realFolder}, outside ${realRoot}/vm`);
    } catch {
      return no(`pid file folder ${folder} does not exist`);
    }
    const pid = await readPidFile(abs);
    if (pid === undefined) return no(`no readable pid in ${abs}`);
    if (expect.pid !== undefined && pid !== expect.pid) return no(`pid file names ${pid}, not ${expect.pid}`);
    const stat = await readProcStat(pid, this.procRoot);
    if (!stat || stat.state === 'Z' || stat.state === 'X') return no(`pid ${pid} is not running`);
    const argv = await readArgv(pid, this.procRoot);
    if (!argv) return no(`pid ${pid} is not running`);
    const owner = parseOwnerFromArgv(argv, this.qemuBinary);
    if (!owner) return no(`pid ${pid} carries no owner mark`);
    const hostId = expect.hostId ?? this.hostId;
    if (hostId !== undefined && owner.hostId !== hostId) return no(`pid ${pid} is marked for host ${owner.hostId}`);
    if (owner.uid !== layout.uid) return no(`pid ${pid} is marked for uid ${owner.uid}, its pid file lies in ${layout.uid}`);
    const uids = await readProcUids(pid, this.procRoot);
    if (!uids) return no(`pid ${pid} is not running`);
    const { real, effective, saved, fs } = uids;
    if ([real, effective, saved, fs].some((u) => u !== this.expectedUid)) {
      return no(`pid ${pid} runs as user ${real}/${effective}/${saved}/${fs} (real/effective/saved/fs), not ${this.expectedUid}`);
    }
    const want = await this.qemuExe();
    let exe: string;
    try {
      exe = await readlink(`${this.procRoot}/${pid}/exe`);
    } catch (err) {
      return no(`pid ${pid}: cannot read its executable (${messageOf(err)})`);
    }
    if (exe !== want && exe !== `${want} (deleted)`) return no(`pid ${pid} runs ${exe}, not ${want}`);
    const again = await readProcStat(pid, this.procRoot);
    if (!again || again.startTime !== stat.startTime) return no(`pid ${pid} changed during the check`);
    return { owned: true, vm: { pid, uid: owner.uid, hostId: owner.hostId, pidFile: abs, stateDir: folder, startTime: stat.startTime } };
  }

  /**
   * True while the process verified as `vm` still runs: same pid, same start time, not a zombie.
   * Used after signalling (QEMU removes its pid file when it exits cleanly).
   */
  async stillAlive(vm: OwnedVm): Promise<boolean> {
    const stat = await readProcStat(vm.pid, this.procRoot);
    return stat !== undefined && stat.startTime === vm.startTime && stat.state !== 'Z' && stat.state !== 'X';
  }

  /**
   * Every `<stateRoot>/vm/<ns>/<name>/<uid>/qemu.pid` that exists (real folders only: a symlinked
   * folder is skipped). Unverified: pass each to {@link verify}.
   */
  async pidFiles(): Promise<string[]> {
    const out: string[] = [];
    const dirs = async (path: string): Promise<string[]> => {
      try {
        return (await readdir(path, { withFileTypes: true })).filter((d) => d.isDirectory()).map((d) => join(path, d.name));
      } catch {
        return [];
      }
    };
    for (const ns of await dirs(join(this.stateRoot, 'vm'))) {
      for (const name of await dirs(ns)) {
        for (const uid of await dirs(name)) {
          const f = join(uid, 'qemu.pid');
          try {
            await access(f);
            out.push(f);
          } catch {
            /* no process recorded */
          }
        }
      }
    }
    return out.sort();
  }

  /** Every verified VM process of `hostId` (default this instance's) under the state root, by pid. */
  async listOwned(hostId?: string): Promise<OwnedVm[]> {
    const files = await this.pidFiles();
    const verdicts = await Promise.all(files.map((f) => this.verify(f, hostId !== undefined ? { hostId } : {})));
    const out: OwnedVm[] = [];
    for (const v of verdicts) if (v.owned) out.push(v.vm);
    return out.sort((a, b) => a.pid - b.pid);
  }
}
