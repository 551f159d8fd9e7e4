import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { dirname, isAbsolute, join, resolve } from 'node:path';
import { HOST_ID_PATTERN } from '../adapters/qemu/owner-mark.js';
import { TetherError } from '../domain/errors.js';

/**
 * The dev cluster's state file, `<stateDir>/dev-cluster.json`: everything `tether dev down` needs to
 * clean up after a supervisor that could not (SIGKILLed, machine busy, a bug), and what a new
 * `tether dev up` checks before it starts (one dev cluster per state dir).
 *
 * Invariants:
 *  - Written by the supervisor only (atomically: temp file + rename), before each child it records
 *    is relied on, and removed last, after everything it names is gone.
 *  - Every path in it lies under `stateDir`, which is absolute; {@link readDevState} refuses a file
 *    that says otherwise, so a damaged or hostile file cannot steer a cleanup elsewhere.
 *  - Pids in it are hints: nothing is signalled on their word alone (see dev-scan.ts).
 */
export interface DevState {
  readonly version: 1;
  /** Pid of the `tether dev up` process that owns this cluster. */
  readonly supervisorPid: number;
  /** Absolute dev state dir. */
  readonly stateDir: string;
  /**
   * The topmost folder `dev up` created to make `stateDir` (stateDir itself or an ancestor), if it
   * created any: removed at the end when empty.
   */
  readonly createdRoot?: string;
  /** Host ids, in start order; each host's state dir is `<stateDir>/hosts/<id>`. */
  readonly hosts: readonly DevStateHost[];
  readonly controllerPid?: number;
  readonly etcd?: { readonly mark: string; readonly endpoints: readonly string[]; readonly pids: readonly number[] };
  /** The dev control endpoint (`tether dev partition|heal|status`). */
  readonly control?: string;
  /** Folder of the agents' host-id locks, as the agents saw it. */
  readonly lockDir?: string;
}

/** One host of {@link DevState}. */
export interface DevStateHost {
  readonly id: string;
  readonly grpc: string;
  readonly http: string;
  readonly pid?: number;
}

/** Name of the state file inside the dev state dir. */
export const DEV_STATE_FILE = 'dev-cluster.json';

/** Where the dev cluster keeps host `id`'s agent state. */
export function devHostDir(stateDir: string, id: string): string {
  return join(stateDir, 'hosts', id);
}

/** Writes `state` to `<stateDir>/dev-cluster.json` atomically. */
export function writeDevState(state: DevState): void {
  const path = join(state.stateDir, DEV_STATE_FILE);
  mkdirSync(dirname(path), { recursive: true });
  const tmp = `${path}.tmp-${process.pid}`;
  writeFileSync(tmp, `${JSON.stringify(state, null, 2)}\n`);
  renameSync(tmp, path);
}

function isPid(v: unknown): v is number {
  return typeof v === 'number' && Number.isSafeInteger(v) && v > 1;
}

/**
 * Reads `<stateDir>/dev-cluster.json`; undefined when there is none.
 * @throws TetherError INVALID_ARGUMENT when it exists but is not a state file this version wrote
 *   (names the field), so a cleanup never acts on a file it does not understand.
 */
export function readDevState(stateDir: string): DevState | undefined {
  const dir = resolve(stateDir);
  const path = join(dir, DEV_STATE_FILE);
  if (!existsSync(path)) return undefined;
  const bad = (field: string, why: string): never => {
    throw new TetherError('INVALID_ARGUMENT', `${path}: ${field} ${why}; remove the dev state by hand or fix the file`, { details: { path, field } });
  };
  let raw: unknown;
  try {
    raw = JSON.parse(readFileSync(path, 'utf8'));
  } catch (err) {
    throw new TetherError('INVALID_ARGUMENT', `${path} is not JSON: ${(err as Error).message}`, { cause: err, details: { path } });
  }
  if (typeof raw !== 'object' || raw === null) return bad('(file)', 'is not an object');
  const o = raw as Record<string, unknown>;
  if (o.version !== 1) bad('version', 'is not 1');
  if (!isPid(o.supervisorPid)) bad('supervisorPid', 'is not a pid');
  if (o.stateDir !== dir) bad('stateDir', `is not ${dir}`);
  let createdRoot: string | undefined;
  if (o.createdRoot !== undefined) {
    if (typeof o.createdRoot !== 'string' || !isAbsolute(o.createdRoot) || !(dir === o.createdRoot || dir.startsWith(`${o.createdRoot}/`))) bad('createdRoot', 'is not the state dir or one of its ancestors');
    createdRoot = o.createdRoot as string;
  }
  if (!Array.isArray(o.hosts)) return bad('hosts', 'is not a list');
  const hosts = (o.hosts as unknown[]).map((h, i): DevStateHost => {
    const x = (typeof h === 'object' && h !== null ? h : {}) as Record<string, unknown>;
    if (typeof x.id !== 'string' || !HOST_ID_PATTERN.test(x.id) || x.id.startsWith('.')) bad(`hosts[${i}].id`, 'is not a host id');
    if (typeof x.grpc !== 'string' || typeof x.http !== 'string') bad(`hosts[${i}]`, 'lacks its addresses');
    if (x.pid !== undefined && !isPid(x.pid)) bad(`hosts[${i}].pid`, 'is not a pid');
    return { id: x.id as string, grpc: x.grpc as string, http: x.http as string, ...(isPid(x.pid) ? { pid: x.pid } : {}) };
  });
  if (o.controllerPid !== undefined && !isPid(o.controllerPid)) bad('controllerPid', 'is not a pid');
  let etcd: DevState['etcd'];
  if (o.etcd !== undefined) {
    const e = (typeof o.etcd === 'object' && o.etcd !== null ? o.etcd : {}) as Record<string, unknown>;
    if (typeof e.mark !== 'string' || !/^tether:[A-Za-z0-9-]{8,}$/.test(e.mark)) bad('etcd.mark', 'is not an etcd cluster mark');
    if (!Array.isArray(e.endpoints) || !e.endpoints.every((x) => typeof x === 'string')) bad('etcd.endpoints', 'is not a list of URLs');
    if (!Array.isArray(e.pids) || !e.pids.every(isPid)) bad('etcd.pids', 'is not a list of pids');
    etcd = { mark: e.mark as string, endpoints: e.endpoints as string[], pids: e.pids as number[] };
  }
  if (o.control !== undefined && typeof o.control !== 'string') bad('control', 'is not an address');
  if (o.lockDir !== undefined && (typeof o.lockDir !== 'string' || !isAbsolute(o.lockDir))) bad('lockDir', 'is not an absolute path');
  return {
    version: 1,
    supervisorPid: o.supervisorPid as number,
    stateDir: dir,
    ...(createdRoot ? { createdRoot } : {}),
    hosts,
    ...(isPid(o.controllerPid) ? { controllerPid: o.controllerPid } : {}),
    ...(etcd ? { etcd } : {}),
    ...(typeof o.control === 'string' ? { control: o.control } : {}),
    ...(typeof o.lockDir === 'string' ? { lockDir: o.lockDir } : {}),
  };
}

/**
 * Host ids of a dev state dir without a state file: the names of `<stateDir>/hosts/*` that are host
 * ids (an older `dev up`, or a state file lost). Empty when there is no such folder.
 */
export function hostIdsFromDirs(stateDir: string): string[] {
  try {
    return readdirSync(join(stateDir, 'hosts')).filter((n) => HOST_ID_PATTERN.test(n) && !n.startsWith('.')).sort();
  } catch {
    return [];
  }
}
