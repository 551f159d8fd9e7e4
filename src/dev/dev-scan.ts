/**
 * What a dev cluster left on the real host, found the way an operator would (/proc, `ip link`, the
 * file system), never through an agent's view; and the ownership checks that decide whether a found
 * process may be signalled.
 *
 * A process counts as the dev cluster's when its command line carries one of its marks:
 *  - QEMU: `-name tether:<devHostId>:<uid>` (owner-mark.ts) for one of the dev host ids;
 *  - guardian: a process whose command line contains `guardian` and a dev host's state dir
 *    (`<stateDir>/hosts/<id>`); owned only as `tether.js guardian --state-dir <that dir>` (the
 *    guardian's own check, guardian-lock.ts) named by `<hostDir>/guardian/guardian.pid`;
 *  - agent: a `tether agent` whose `--state-dir` is a dev host's state dir;
 *  - controller: a `tether controller` Node process whose environment holds
 *    `TETHER_DEV_STATE_DIR=<stateDir>` (the controller has no state dir of its own);
 *  - etcd: an `etcd` whose `--data-dir` lies under `<stateDir>/etcd/`.
 * Such a process is *owned* (may be signalled) only when, in addition, its pid is the one recorded
 * under the dev state dir: the QEMU pid file named by its own `-pidfile` (under its host's state
 * dir; right before a signal the agent's own full check, VmOwnership in process-owner.ts, runs
 * too: executable, pid file, mark, start time), the guardian's `<hostDir>/guardian/guardian.pid`, the agent's `<hostDir>/agent.lock` (or the
 * state file), the controller's and etcd's pids/mark in `dev-cluster.json`. Marked but not owned
 * processes are reported, never signalled. A process that merely mentions the state dir (a
 * `tail -f` of a log) is reported as foreign and never counts as a leftover.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { basename, join, resolve } from 'node:path';
import { parseOwnerFromArgv } from '../adapters/qemu/owner-mark.js';
import { Iproute2Network } from '../adapters/iproute2/iproute2-network.js';
import { guardianFiles } from '../domain/guardian.js';
import { isGuardianArgv } from '../guardian/guardian-lock.js';
import { devHostDir } from './dev-state.js';

/** Environment variable the dev cluster sets on every child it starts (value: its state dir). */
export const DEV_ENV_MARK = 'TETHER_DEV_STATE_DIR';

/** What a scan is looking for: one dev cluster's state dir, host ids and recorded pids. */
export interface DevScope {
  /** Absolute dev state dir. */
  readonly stateDir: string;
  readonly hostIds: readonly string[];
  /** Recorded agent pids by host id (state file, or live child handles). */
  readonly agentPids?: ReadonlyMap<string, number>;
  readonly controllerPid?: number;
  /** The etcd cluster mark (`tether:<clusterId>`) from the state file. */
  readonly etcdMark?: string;
  /** Folder of the agents' host-id locks (`host-<id>.lock`). Default {@link defaultLockDir}. */
  readonly lockDir?: string;
}

/** Where the dev agents keep their host-id locks: the agent's default, or `TETHER_LOCK_DIR`. */
export function defaultLockDir(): string {
  return resolve(process.env.TETHER_LOCK_DIR ?? '/run/tether');
}

/**
 * The host-id lock files of the dev hosts that are this dev cluster's: `<lockDir>/host-<id>.lock`
 * whose second line is `state dir <that host's dir>` (what the agent writes). A lock of the same
 * host id held for another state dir is someone else's and never listed.
 */
export function devHostLocks(scope: DevScope): { path: string; hostId: string; pid: number | undefined }[] {
  const out: { path: string; hostId: string; pid: number | undefined }[] = [];
  for (const id of scope.hostIds) {
    const path = join(scope.lockDir ?? defaultLockDir(), `host-${id}.lock`);
    let text: string;
    try {
      text = readFileSync(path, 'utf8');
    } catch {
      continue;
    }
    const [first, info] = text.split('\n');
    if (info !== `state dir ${devHostDir(scope.stateDir, id)}`) continue;
    const pid = Number(first);
    out.push({ path, hostId: id, pid: Number.isSafeInteger(pid) && pid > 0 ? pid : undefined });
  }
  return out;
}

/** Kinds of dev processes. */
export type DevProcessKind = 'qemu' | 'guardian' | 'agent' | 'controller' | 'etcd';

/** A process carrying one of the dev cluster's marks. */
export interface DevProcess {
  readonly pid: number;
  readonly kind: DevProcessKind;
  readonly hostId?: string;
  /** All ownership checks passed: it may be signalled. */
  readonly owned: boolean;
  /** Which check passed or failed, for the report. */
  readonly why: string;
  readonly argv: readonly string[];
}

/** Reads a pid file: the first integer in it, or undefined. */
export type PidReader = (path: string) => number | undefined;

/** The first integer in a pid file (`<pid>\n` as written by QEMU and pid-lock.ts), or undefined. */
export function readPidSync(path: string): number | undefined {
  try {
    const m = /^\s*(\d+)/.exec(readFileSync(path, 'utf8'));
    const pid = m ? Number(m[1]) : NaN;
    return Number.isSafeInteger(pid) && pid > 0 ? pid : undefined;
  } catch {
    return undefined;
  }
}

function isUnder(path: string, dir: string): boolean {
  return path === dir || path.startsWith(`${dir}/`);
}

/** True when `arg` contains the path `dir` as a whole path (followed by `/` or the end). */
function mentionsDir(arg: string, dir: string): boolean {
  for (let i = arg.indexOf(dir); i >= 0; i = arg.indexOf(dir, i + 1)) {
    const next = arg[i + dir.length];
    if (next === undefined || next === '/') return true;
  }
  return false;
}

/** The value of option `name` in argv (`name value` or `name=value`). */
export function optionValue(argv: readonly string[], name: string): string | undefined {
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === name) return argv[i + 1];
    if (a.startsWith(`${name}=`)) return a.slice(name.length + 1);
  }
  return undefined;
}

/** The `tether` subcommand of a Node process running the tether CLI, or undefined. */
export function tetherSubcommand(argv: readonly string[]): string | undefined {
  if (!/^node(js)?(\d+)?$/.test(basename(argv[0] ?? ''))) return undefined;
  const entry = argv.findIndex((a) => a.endsWith('bin/tether.js') || a.endsWith('dist/src/cli/main.js') || basename(a) === 'tether');
  return entry >= 1 ? argv[entry + 1] : undefined;
}

/**
 * Decides whether the process `pid` with `argv` (and, for Node processes, `env`, the raw
 * `/proc/<pid>/environ`) is one of the dev cluster's, and whether it may be signalled. Pure apart
 * from `readPid`. Returns undefined for processes that carry no dev mark.
 */
export function classifyDevProcess(pid: number, argv: readonly string[], env: string | undefined, scope: DevScope, readPid: PidReader): DevProcess | undefined {
  const hostDirs = scope.hostIds.map((id) => ({ id, dir: devHostDir(scope.stateDir, id) }));
  const base = { pid, argv };
  const owner = parseOwnerFromArgv(argv);
  if (owner) {
    if (!scope.hostIds.includes(owner.hostId)) return undefined;
    const dir = devHostDir(scope.stateDir, owner.hostId);
    const pidFile = optionValue(argv, '-pidfile');
    const hint = { ...base, kind: 'qemu' as const, hostId: owner.hostId };
    if (!pidFile || !isUnder(resolve(pidFile), dir)) return { ...hint, owned: false, why: `marked tether:${owner.hostId}:${owner.uid}, but its pid file is not under ${dir}: not touched` };
    const recorded = readPid(pidFile);
    if (recorded !== pid) return { ...hint, owned: false, why: `marked tether:${owner.hostId}:${owner.uid}, but ${pidFile} names ${recorded ?? 'no pid'} (a launcher still exiting, or not ours): not touched` };
    return { ...hint, owned: true, why: `marked tether:${owner.hostId}:${owner.uid}, named by ${pidFile}` };
  }
  const sub = tetherSubcommand(argv);
  if (sub === 'agent') {
    const sd = optionValue(argv, '--state-dir');
    const host = sd === undefined ? undefined : hostDirs.find((h) => resolve(sd) === h.dir);
    if (!host) return undefined;
    const lock = join(host.dir, 'agent.lock');
    const recorded = scope.agentPids?.get(host.id);
    const hint = { ...base, kind: 'agent' as const, hostId: host.id };
    if (recorded !== pid && readPid(lock) !== pid) return { ...hint, owned: false, why: `a tether agent of ${host.dir}, but neither ${lock} nor the dev state names it: not touched` };
    return { ...hint, owned: true, why: `the tether agent of ${host.dir}` };
  }
  if (sub === 'controller') {
    if (!(env ?? '').split('\0').includes(`${DEV_ENV_MARK}=${scope.stateDir}`)) return undefined;
    const hint = { ...base, kind: 'controller' as const };
    if (scope.controllerPid !== pid) return { ...hint, owned: false, why: `a tether controller started for ${scope.stateDir}, but the dev state records pid ${scope.controllerPid ?? 'none'}: not touched` };
    return { ...hint, owned: true, why: 'the dev cluster controller' };
  }
  if (argv.some((a) => a.includes('guardian'))) {
    const host = hostDirs.find((h) => argv.some((a) => mentionsDir(a, h.dir)));
    if (!host) return undefined;
    const lock = guardianFiles(host.dir).pid;
    const hint = { ...base, kind: 'guardian' as const, hostId: host.id };
    if (!isGuardianArgv(argv, host.dir)) return { ...hint, owned: false, why: `mentions guardian and ${host.dir}, but is not \`tether.js guardian --state-dir ${host.dir}\`: not touched` };
    const recorded = readPid(lock);
    if (recorded !== pid) return { ...hint, owned: false, why: `the tether guardian of ${host.dir}, but ${lock} names ${recorded ?? 'no pid'}: not touched` };
    return { ...hint, owned: true, why: `the tether guardian of ${host.dir}, named by ${lock}` };
  }
  if (basename(argv[0] ?? '') === 'etcd') {
    const dataDir = optionValue(argv, '--data-dir');
    if (dataDir === undefined || !isUnder(resolve(dataDir), join(scope.stateDir, 'etcd'))) return undefined;
    const token = optionValue(argv, '--initial-cluster-token');
    const hint = { ...base, kind: 'etcd' as const };
    if (scope.etcdMark === undefined || token !== scope.etcdMark) return { ...hint, owned: false, why: `an etcd member with its data under ${scope.stateDir}, but not of the recorded cluster ${scope.etcdMark ?? '(none)'}: not touched` };
    return { ...hint, owned: true, why: `member of ${scope.etcdMark}` };
  }
  return undefined;
}

/** A marked network device of a dev host. */
export interface DevLink {
  readonly name: string;
  readonly alias: string;
  readonly hostId: string;
  readonly vmUid: string;
  readonly isTap: boolean;
}

/** The result of {@link scanDev}. */
export interface DevScan {
  readonly processes: readonly DevProcess[];
  /** Processes that only mention the state dir in their command line: reported, never touched. */
  readonly foreign: readonly { pid: number; argv: readonly string[] }[];
  readonly links: readonly DevLink[];
  /** Paths the dev cluster made that still exist. */
  readonly paths: readonly string[];
}

/** This process and its ancestors (a `bash -c '… | tee'` wrapper, the user's shell): never leftovers. */
export function selfAndAncestors(): Set<number> {
  const out = new Set<number>();
  let pid = process.pid;
  for (let i = 0; i < 64 && pid > 1 && !out.has(pid); i++) {
    out.add(pid);
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
      pid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
    } catch {
      break;
    }
  }
  return out;
}

/** argv of `pid` from /proc, or undefined (gone, zombie, kernel thread). */
export function argvOf(pid: number): string[] | undefined {
  try {
    const raw = readFileSync(`/proc/${pid}/cmdline`, 'utf8');
    if (raw.length === 0) return undefined;
    const parts = raw.split('\0');
    if (parts[parts.length - 1] === '') parts.pop();
    return parts;
  } catch {
    return undefined;
  }
}

function environOf(pid: number): string | undefined {
  try {
    return readFileSync(`/proc/${pid}/environ`, 'utf8');
  } catch {
    return undefined;
  }
}

/** Re-reads `pid` and classifies it again (the check right before a signal). */
export function reclassify(pid: number, scope: DevScope): DevProcess | undefined {
  const argv = argvOf(pid);
  if (!argv) return undefined;
  return classifyDevProcess(pid, argv, tetherSubcommand(argv) === 'controller' ? environOf(pid) : undefined, scope, readPidSync);
}

/**
 * The paths a dev cluster makes: under `stateDir` (host dirs, etcd, controller log, state file),
 * and its agents' host-id locks (left behind when an agent is SIGKILLed).
 */
export function devPaths(scope: DevScope): string[] {
  return [
    ...scope.hostIds.map((id) => devHostDir(scope.stateDir, id)),
    join(scope.stateDir, 'etcd'),
    join(scope.stateDir, 'api-certs'),
    join(scope.stateDir, 'controller.log'),
    join(scope.stateDir, 'dev-cluster.json'),
    ...devHostLocks(scope).map((l) => l.path),
  ];
}

/**
 * Scans the real host for what the dev cluster `scope` left: marked processes (see the module
 * comment), devices whose alias starts with `tether:<devHostId>:`, and the dev paths that exist.
 * This process and its ancestors are skipped.
 */
export async function scanDev(scope: DevScope, pathExists: (p: string) => boolean): Promise<DevScan> {
  const skip = selfAndAncestors();
  const processes: DevProcess[] = [];
  const foreign: { pid: number; argv: string[] }[] = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    const pid = Number(name);
    if (skip.has(pid)) continue;
    const argv = argvOf(pid);
    if (!argv) continue;
    const p = classifyDevProcess(pid, argv, tetherSubcommand(argv) === 'controller' ? environOf(pid) : undefined, scope, readPidSync);
    if (p) processes.push(p);
    else if (tetherSubcommand(argv) !== 'dev' && argv.some((a) => a.includes(scope.stateDir))) foreign.push({ pid, argv }); // `tether dev down` is not a leftover
  }
  const links: DevLink[] = [];
  if (scope.hostIds.length > 0) {
    const all = await new Iproute2Network().listLinks();
    for (const l of all) {
      if (l.owner && l.alias && scope.hostIds.includes(l.owner.hostId)) links.push({ name: l.name, alias: l.alias, hostId: l.owner.hostId, vmUid: l.owner.vmUid, isTap: l.isTap });
    }
  }
  return { processes, foreign, links, paths: devPaths(scope).filter(pathExists) };
}
