/**
 * A throwaway etcd cluster on loopback, for tests, benchmarks and the dev cluster.
 *
 * Each member is a child `etcd` process (Debian `etcd-server` 3.4) listening on 127.0.0.1 only.
 * Members are recognisable from outside by their command line: it carries the cluster mark
 * `tether:<clusterId>` (as `--initial-cluster-token`) and the member data dirs are named
 * `tether-etcd-<clusterId>-m<i>`. Test clusters use tag `test`, so their mark starts with
 * `tether:test-`, which `scripts/check-leaks.sh` looks for.
 *
 * By default the cluster is secured the way production should be: clients connect with TLS and must
 * present a client certificate signed by the cluster's CA (`--client-cert-auth`), and members talk
 * to each other over mutual TLS. Certificates come from `scripts/gen-certs.sh` (see `devCerts`);
 * {@link LocalEtcdCluster.clientTls} and {@link LocalEtcdCluster.agentArgs} give a client what it needs.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { accessSync, closeSync, constants as fsConstants, existsSync, mkdirSync, mkdtempSync, openSync, readdirSync, readSync, rmSync, statSync } from 'node:fs';
import { tmpdir, setPriority } from 'node:os';
import { delimiter, isAbsolute, join } from 'node:path';
import { InvalidArgumentError, TetherError, messageOf } from '../domain/errors.js';
import { forgetOnExit, keepOnExit, killOnExit, removeOnExit, startOrphanReaper, type OrphanReaper } from './child-guard.js';
import { fetchMemberHealthy, fetchMemberStatus, type EtcdMemberStatus } from './etcd-http.js';
import { findFreePorts } from './free-ports.js';
import { HEARTBEAT_PATH_PRIORITY } from '../adapters/process-priority.js';
import type { EtcdSecurity } from '../adapters/etcd/etcd-client.js';
import { devCerts, type DevCerts } from './certs.js';
import type { HttpTls } from './etcd-http.js';

export type { EtcdMemberStatus } from './etcd-http.js';
export { findProcessesByMark } from './child-guard.js';

/** Options of {@link LocalEtcdCluster}. */
export interface LocalEtcdClusterOptions {
  /**
   * Folder the cluster owns entirely: member data dirs (and logs, unless `logDir` is given) live
   * here, and {@link LocalEtcdCluster.stop} deletes it unless `keepData`. Created if missing; unless
   * `keepData`, it must be missing or empty (start() refuses to adopt a folder holding anything).
   * Default: a fresh `mkdtemp` folder `$TMPDIR/tether-etcd-*` (made by the constructor).
   */
  readonly dataDir?: string;
  /** Number of members, 1..7. Default 3. */
  readonly size?: number;
  /** Member i listens for clients on `clientBasePort + i`. Default: free ports picked at start. */
  readonly clientBasePort?: number;
  /** Member i listens for peers on `peerBasePort + i`. Default: free ports picked at start. */
  readonly peerBasePort?: number;
  /** `--heartbeat-interval` in ms. Default 100. */
  readonly heartbeatMs?: number;
  /** `--election-timeout` in ms. Default 1000. */
  readonly electionMs?: number;
  /** Folder for the per-member log files `<memberName>.log`. Default `<dataDir>/logs`. Never deleted. */
  readonly logDir?: string;
  /** etcd `--log-level`. Default `info` (to the log file only). */
  readonly logLevel?: 'debug' | 'info' | 'warn' | 'error';
  /**
   * First part of the cluster id (`<tag>-<8 hex>`). Tests use `test` (leak checks look for
   * `tether:test-`), the dev cluster `dev`. Letters, digits and `-` only. Default `etcd`.
   */
  readonly tag?: string;
  /** Keep the data dir on {@link LocalEtcdCluster.stop}. Default false. */
  readonly keepData?: boolean;
  /** The etcd executable: a path or a name looked up on PATH. Default `etcd`. */
  readonly etcdBinary?: string;
  /** How long {@link LocalEtcdCluster.start} waits for a healthy cluster. Default 30 000 ms. */
  readonly startTimeoutMs?: number;
  /** How long a SIGTERMed member may take to exit before it is SIGKILLed. Default 3 000 ms. */
  readonly stopGraceMs?: number;
  /**
   * Run each member in its own session and process group (`detached`), so a terminal's signal
   * reaches only the process that started the cluster (the dev cluster's supervisor), which stops
   * the members in order. The exit hook and the orphan reaper still apply. Default false.
   */
  readonly ownProcessGroup?: boolean;
  /**
   * `true` (default): https client and peer URLs, `--client-cert-auth` and peer mutual TLS with the
   * certificates of {@link certs}. `false`: plaintext http everywhere (only for tests that need a
   * plaintext etcd on purpose).
   */
  readonly tls?: boolean;
  /** More etcd flags for every member (e.g. `--auto-compaction-mode periodic --auto-compaction-retention 1s`). */
  readonly extraArgs?: readonly string[];
  /**
   * Certificates to use (e.g. a set shared with the agents' own listeners). Default: a set made by
   * `devCerts(<dataDir>/certs)` at start, deleted with the data dir.
   */
  readonly certs?: DevCerts;
}

/** Options of {@link LocalEtcdCluster.restart}. */
export interface RestartOptions {
  /** Wait until the member answers and follows the cluster's leader. Default true. */
  readonly wait?: boolean;
  /** Bound of that wait. Default 20 000 ms. */
  readonly timeoutMs?: number;
}

interface Member {
  readonly index: number;
  readonly name: string;
  readonly dataDir: string;
  readonly logFile: string;
  proc: ChildProcess | undefined;
  exited: Promise<void> | undefined;
  paused: boolean;
  memberId: string | undefined;
}

const POLL_MS = 50;
const PROBE_TIMEOUT_MS = 1_000;
const LOG_TAIL_LINES = 15;
const PORT_CLASH_RETRIES = 3;

/**
 * Finds the etcd executable: `name` itself when it contains a `/`, else the first executable
 * `name` on PATH.
 *
 * @throws TetherError `UNAVAILABLE` naming `scripts/install-system.sh` when it is missing.
 */
export function findEtcdBinary(name = 'etcd'): string {
  const candidates = name.includes('/') ? [name] : (process.env.PATH ?? '').split(delimiter).filter(Boolean).map((d) => join(d, name));
  for (const c of candidates) {
    try {
      accessSync(c, fsConstants.X_OK);
      if (statSync(c).isFile()) return c;
    } catch {
      // not here
    }
  }
  throw new TetherError(
    'UNAVAILABLE',
    `etcd executable ${JSON.stringify(name)} not found on PATH: run scripts/install-system.sh (installs Debian etcd-server and etcd-client)`,
    { details: { binary: name } },
  );
}

/** The last `lines` lines of a text file (at most its last 16 KiB); '' when unreadable. */
function tailFile(path: string, lines: number): string {
  let fd: number | undefined;
  try {
    fd = openSync(path, 'r');
    const size = statSync(path).size;
    const len = Math.min(size, 16 * 1024);
    const buf = Buffer.alloc(len);
    readSync(fd, buf, 0, len, size - len);
    return buf.toString('utf8').split('\n').filter((l) => l.length > 0).slice(-lines).join('\n');
  } catch {
    return '';
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function isRunning(m: Member): boolean {
  return m.proc !== undefined && m.proc.exitCode === null && m.proc.signalCode === null;
}

/** The environment for etcd: ours without `ETCD_*` (etcd reads those as flags and refuses duplicates). */
function etcdEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('ETCD_')) env[k] = v;
  return env;
}

/**
 * N etcd members on 127.0.0.1 as child processes of this process.
 *
 * Invariants:
 *  - Every member process is SIGKILLed when this process exits (`'exit'` hook, which also deletes
 *    `dataDir` unless `keepData`) or dies (an orphan reaper watching a pipe; the folder then stays),
 *    so members never outlive the test process.
 *  - Member processes carry `tether:<clusterId>` in their command line; nothing else does.
 *  - Member `i` keeps its name, ports and data dir for the cluster's whole life: `restart(i)` rejoins
 *    with the same identity.
 *  - After `stop()` resolves no member process exists and (unless `keepData`) `dataDir` is gone.
 *    A stopped cluster cannot be started again.
 *  - If `start()` rejects, it has already called `stop()`.
 *
 * Not thread-safe in the async sense: do not run two membership operations on the same member at once.
 */
export class LocalEtcdCluster {
  /** `<tag>-<8 hex>`; unique per instance. Appears in every member's command line. */
  readonly clusterId: string;
  /** The folder this cluster owns (see {@link LocalEtcdClusterOptions.dataDir}). */
  readonly dataDir: string;
  /** Where member logs go. */
  readonly logDir: string;
  /** Number of members. */
  readonly size: number;

  private readonly opts: Required<Pick<LocalEtcdClusterOptions, 'heartbeatMs' | 'electionMs' | 'logLevel' | 'keepData' | 'startTimeoutMs' | 'stopGraceMs'>>;
  private readonly etcdBinaryName: string;
  private readonly ownProcessGroup: boolean;
  private readonly members: Member[];
  private clientPorts: number[] | undefined;
  private peerPorts: number[] | undefined;
  private reaper: OrphanReaper | undefined;
  private state: 'new' | 'starting' | 'running' | 'stopping' | 'stopped' = 'new';
  private stopPromise: Promise<void> | undefined;
  private binary: string | undefined;
  private readonly tls: boolean;
  private readonly extraArgs: readonly string[];
  private tlsCerts: DevCerts | undefined;

  constructor(options: LocalEtcdClusterOptions = {}) {
    const size = options.size ?? 3;
    if (!Number.isInteger(size) || size < 1 || size > 7) throw new InvalidArgumentError('size', `must be an integer 1..7, got ${size}`);
    const tag = options.tag ?? 'etcd';
    if (!/^[A-Za-z0-9-]{1,32}$/.test(tag)) throw new InvalidArgumentError('tag', 'letters, digits and - only, 1..32 characters');
    for (const f of ['clientBasePort', 'peerBasePort'] as const) {
      const p = options[f];
      if (p !== undefined && (!Number.isInteger(p) || p < 1 || p + size - 1 > 65_535)) {
        throw new InvalidArgumentError(f, `ports ${p}..${p + size - 1} are not valid TCP ports`);
      }
    }
    const heartbeatMs = options.heartbeatMs ?? 100;
    const electionMs = options.electionMs ?? 1000;
    if (!(heartbeatMs > 0) || electionMs < 5 * heartbeatMs) {
      throw new InvalidArgumentError('electionMs', `must be at least 5 x heartbeatMs (${heartbeatMs}), got ${electionMs}`);
    }
    this.size = size;
    this.clusterId = `${tag}-${randomBytes(4).toString('hex')}`;
    this.dataDir = options.dataDir ?? mkdtempSync(join(tmpdir(), 'tether-etcd-'));
    if (!isAbsolute(this.dataDir)) throw new InvalidArgumentError('dataDir', 'must be an absolute path');
    if (options.dataDir === undefined && options.keepData !== true) removeOnExit(this.dataDir);
    this.logDir = options.logDir ?? join(this.dataDir, 'logs');
    this.etcdBinaryName = options.etcdBinary ?? 'etcd';
    this.ownProcessGroup = options.ownProcessGroup ?? false;
    this.tls = options.tls ?? true;
    this.extraArgs = options.extraArgs ?? [];
    this.tlsCerts = this.tls ? options.certs : undefined;
    this.opts = {
      heartbeatMs,
      electionMs,
      logLevel: options.logLevel ?? 'info',
      keepData: options.keepData ?? false,
      startTimeoutMs: options.startTimeoutMs ?? 30_000,
      stopGraceMs: options.stopGraceMs ?? 3_000,
    };
    if (options.clientBasePort !== undefined) this.clientPorts = Array.from({ length: size }, (_, i) => options.clientBasePort! + i);
    if (options.peerBasePort !== undefined) this.peerPorts = Array.from({ length: size }, (_, i) => options.peerBasePort! + i);
    this.members = Array.from({ length: size }, (_, i) => {
      const name = `${this.clusterId}-m${i}`;
      return {
        index: i,
        name,
        dataDir: join(this.dataDir, `tether-etcd-${name}`),
        logFile: join(this.logDir, `${name}.log`),
        proc: undefined,
        exited: undefined,
        paused: false,
        memberId: undefined,
      };
    });
  }

  /** The string every member's command line contains: `tether:<clusterId>`. */
  get mark(): string {
    return `tether:${this.clusterId}`;
  }

  /**
   * Launches every member and resolves once the cluster is healthy: every member answers
   * `/v3/maintenance/status` and `/health`, and all agree on one leader that is a member.
   *
   * When ports were not given and a member fails to bind (another process took a picked port in the
   * meantime), retries with fresh ports up to 3 times.
   *
   * @throws TetherError `UNAVAILABLE` when etcd is not installed (names `scripts/install-system.sh`),
   *   `TIMEOUT` when not healthy within `startTimeoutMs`, `INTERNAL` when a member exits during start;
   *   the message holds the tail of every member log. On any failure the cluster is stopped first.
   */
  async start(): Promise<void> {
    if (this.state !== 'new') throw new TetherError('FAILED_PRECONDITION', `etcd cluster ${this.clusterId} is ${this.state}; start() runs once`);
    this.state = 'starting';
    try {
      this.binary = findEtcdBinary(this.etcdBinaryName);
      if (!this.opts.keepData && existsSync(this.dataDir) && readdirSync(this.dataDir).length > 0) {
        // stop() deletes dataDir: never adopt a folder that holds something else.
        throw new InvalidArgumentError('dataDir', `${this.dataDir} is not empty; the cluster deletes it on stop (use an empty folder or keepData)`);
      }
      mkdirSync(this.dataDir, { recursive: true, mode: 0o700 });
      if (!this.opts.keepData) removeOnExit(this.dataDir);
      mkdirSync(this.logDir, { recursive: true });
      if (this.tls) this.tlsCerts ??= devCerts(join(this.dataDir, 'certs'));
      this.reaper = startOrphanReaper(this.mark);
      const autoClient = this.clientPorts === undefined;
      const autoPeer = this.peerPorts === undefined;
      const autoPorts = autoClient || autoPeer;
      for (let attempt = 1; ; attempt++) {
        if (autoPorts) {
          const ports = await findFreePorts(2 * this.size);
          this.clientPorts ??= ports.slice(0, this.size);
          this.peerPorts ??= ports.slice(this.size);
        }
        for (const m of this.members) this.spawnMember(m, 'new');
        try {
          await this.waitForHealthy(this.opts.startTimeoutMs);
          break;
        } catch (err) {
          const clash = this.members.some((m) => !isRunning(m) && /address already in use/.test(tailFile(m.logFile, 50)));
          if (!autoPorts || !clash || attempt >= PORT_CLASH_RETRIES) throw err;
          await Promise.all(this.members.map((m) => this.killMember(m)));
          for (const m of this.members) {
            rmSync(m.dataDir, { recursive: true, force: true });
            rmSync(m.logFile, { force: true });
          }
          if (autoClient) this.clientPorts = undefined;
          if (autoPeer) this.peerPorts = undefined;
        }
      }
      this.state = 'running';
    } catch (err) {
      await this.stop();
      throw err;
    }
  }

  /** True when clients and peers use TLS (the default; see {@link LocalEtcdClusterOptions.tls}). */
  get secure(): boolean {
    return this.tls;
  }

  /**
   * The certificates the cluster runs with (CA, server, client, peer and the other CA's client for
   * attack tests), or undefined for a plaintext cluster.
   * @throws TetherError `FAILED_PRECONDITION` before `start()` made them (when none were given).
   */
  get certs(): DevCerts | undefined {
    if (!this.tls) return undefined;
    if (this.tlsCerts === undefined) throw new TetherError('FAILED_PRECONDITION', `etcd cluster ${this.clusterId}: certificates are made by start()`);
    return this.tlsCerts;
  }

  /**
   * What a client of this cluster needs: the CA and a client certificate it accepts (`{}` for a
   * plaintext cluster). Pass it as `security` to the etcd stores or `createEtcdClient`.
   */
  clientTls(): EtcdSecurity {
    const c = this.certs;
    return c ? { caFile: c.ca, certFile: c.clientCert, keyFile: c.clientKey } : {};
  }

  /**
   * `tether` flags that reach this cluster: `--etcd-endpoints` (these endpoints, or `endpoints`, e.g.
   * a fault proxy group's) and `--etcd-ca/--etcd-cert/--etcd-key` when it runs TLS. For agents,
   * controllers and CLI calls alike.
   */
  agentArgs(endpoints: readonly string[] = this.endpoints()): string[] {
    const t = this.clientTls();
    return [
      '--etcd-endpoints', endpoints.join(','),
      ...(t.caFile ? ['--etcd-ca', t.caFile] : []),
      ...(t.certFile ? ['--etcd-cert', t.certFile] : []),
      ...(t.keyFile ? ['--etcd-key', t.keyFile] : []),
    ];
  }

  /** The same as {@link agentArgs}, as `TETHER_ETCD_*` environment variables (for a shell or a child's env). */
  clientEnv(endpoints: readonly string[] = this.endpoints()): Record<string, string> {
    const t = this.clientTls();
    return {
      TETHER_ETCD_ENDPOINTS: endpoints.join(','),
      ...(t.caFile ? { TETHER_ETCD_CA: t.caFile } : {}),
      ...(t.certFile ? { TETHER_ETCD_CERT: t.certFile } : {}),
      ...(t.keyFile ? { TETHER_ETCD_KEY: t.keyFile } : {}),
    };
  }

  /** TLS material for HTTP requests to the members (status, health, /metrics); undefined for a plaintext cluster. */
  httpTls(): HttpTls | undefined {
    const c = this.certs;
    return c ? { ca: c.ca, cert: c.clientCert, key: c.clientKey } : undefined;
  }

  /** Client URLs `https://127.0.0.1:<port>` (`http://` for a plaintext cluster), member order. Known once `start()` has picked ports. */
  endpoints(): string[] {
    return this.members.map((m) => this.clientUrl(m.index));
  }

  /** Client URL of member `i`. */
  clientUrl(i: number): string {
    this.member(i);
    if (this.clientPorts === undefined) throw new TetherError('FAILED_PRECONDITION', `etcd cluster ${this.clusterId}: ports are picked by start()`);
    return `${this.tls ? 'https' : 'http'}://127.0.0.1:${this.clientPorts[i]}`;
  }

  /** Peer URL of member `i`. */
  peerUrl(i: number): string {
    this.member(i);
    if (this.peerPorts === undefined) throw new TetherError('FAILED_PRECONDITION', `etcd cluster ${this.clusterId}: ports are picked by start()`);
    return `${this.tls ? 'https' : 'http'}://127.0.0.1:${this.peerPorts[i]}`;
  }

  /** Member `i`'s etcd `--name` (`<clusterId>-m<i>`). */
  memberName(i: number): string {
    return this.member(i).name;
  }

  /** Path of member `i`'s log file. */
  logFile(i: number): string {
    return this.member(i).logFile;
  }

  /** Pid of member `i`'s process while it runs (paused included), else undefined. */
  pid(i: number): number | undefined {
    const m = this.member(i);
    return isRunning(m) ? m.proc?.pid : undefined;
  }

  /** True while member `i`'s process exists (paused included). */
  isRunning(i: number): boolean {
    return isRunning(this.member(i));
  }

  /** True while member `i` is SIGSTOPped by {@link pause}. */
  isPaused(i: number): boolean {
    return this.member(i).paused;
  }

  /** The last `lines` lines of member `i`'s log. */
  logTail(i: number, lines = LOG_TAIL_LINES): string {
    return tailFile(this.member(i).logFile, lines);
  }

  /**
   * Status of member `i` via HTTP, bounded by `timeoutMs`.
   * @throws when the member does not answer in time (killed, paused, starting).
   */
  async memberStatus(i: number, timeoutMs = PROBE_TIMEOUT_MS): Promise<EtcdMemberStatus> {
    const status = await fetchMemberStatus(this.clientUrl(i), timeoutMs, this.httpTls());
    this.member(i).memberId = status.memberId;
    return status;
  }

  /**
   * Index of the member that is leader right now, or undefined when no running, unpaused member
   * claims leadership. A member counts as leader only by its own status (`leader == member_id`), so a
   * follower's stale view of a killed leader is never reported. If two claim it (a resumed old
   * leader), the one with the higher raft term wins.
   */
  async leaderIndex(timeoutMs = PROBE_TIMEOUT_MS): Promise<number | undefined> {
    const live = this.members.filter((m) => isRunning(m) && !m.paused);
    const statuses = await Promise.all(live.map((m) => this.memberStatus(m.index, timeoutMs).then((s) => ({ m, s }), () => undefined)));
    let best: { m: Member; s: EtcdMemberStatus } | undefined;
    for (const r of statuses) {
      if (r === undefined || r.s.leaderId !== r.s.memberId) continue;
      if (best === undefined || r.s.raftTerm > best.s.raftTerm) best = r;
    }
    return best?.m.index;
  }

  /**
   * Resolves with the leader's index as soon as one exists (see {@link leaderIndex}).
   * @throws TetherError `TIMEOUT` (with member log tails) after `timeoutMs`.
   */
  async waitForLeader(timeoutMs: number): Promise<number> {
    const deadline = performance.now() + timeoutMs;
    for (;;) {
      const remaining = deadline - performance.now();
      const leader = await this.leaderIndex(Math.max(100, Math.min(PROBE_TIMEOUT_MS, remaining)));
      if (leader !== undefined) return leader;
      if (performance.now() >= deadline) throw this.timeoutError(`no leader within ${timeoutMs} ms`);
      await sleep(POLL_MS);
    }
  }

  /**
   * Resolves once every running, unpaused member answers status and `/health`, and they all follow
   * the same leader, which is a running member. Paused members make this wait time out.
   * @throws TetherError `TIMEOUT` after `timeoutMs`; `INTERNAL` at once when a member process that
   *   was expected to run has exited (both with member log tails).
   */
  async waitForHealthy(timeoutMs: number, members: readonly number[] = this.members.map((m) => m.index)): Promise<void> {
    const deadline = performance.now() + timeoutMs;
    let problem = 'no probe yet';
    for (;;) {
      const wanted = members.map((i) => this.member(i));
      const dead = wanted.filter((m) => m.proc !== undefined && !isRunning(m));
      if (dead.length > 0) {
        throw new TetherError(
          'INTERNAL',
          `etcd cluster ${this.clusterId}: member ${dead.map((m) => `${m.name} (${this.exitText(m)})`).join(', ')} exited${this.logTails()}`,
          { details: this.errorDetails() },
        );
      }
      const remaining = Math.max(100, Math.min(PROBE_TIMEOUT_MS, deadline - performance.now()));
      const live = this.members.filter((m) => isRunning(m) && !m.paused);
      try {
        const statuses = await Promise.all(live.map((m) => this.memberStatus(m.index, remaining)));
        const healthy = await Promise.all(live.map((m) => fetchMemberHealthy(this.clientUrl(m.index), remaining, this.httpTls())));
        const leaders = new Set(statuses.map((s) => s.leaderId));
        const leaderId = statuses[0]?.leaderId;
        if (wanted.some((m) => !live.includes(m))) problem = 'a member is not running or paused';
        else if (leaders.size !== 1 || leaderId === undefined || leaderId === '0') problem = `members disagree on the leader: ${[...leaders].join(', ')}`;
        else if (!statuses.some((s) => s.memberId === leaderId)) problem = `leader ${leaderId} is not a live member`;
        else if (healthy.some((h) => !h)) problem = '/health is not true on every member';
        else return;
      } catch (err) {
        problem = messageOf(err);
      }
      if (performance.now() >= deadline) throw this.timeoutError(`not healthy within ${timeoutMs} ms (last problem: ${problem})`);
      await sleep(POLL_MS);
    }
  }

  /** SIGKILLs member `i` and waits for the process to be gone. A no-op when it is not running. */
  async kill(i: number): Promise<void> {
    await this.killMember(this.member(i));
  }

  /** SIGTERMs member `i` (SIGKILL after `stopGraceMs`) and waits for it to exit. No-op when not running. */
  async stopMember(i: number): Promise<void> {
    await this.terminate(this.member(i));
  }

  /**
   * SIGSTOPs member `i`: the process keeps its sockets (connections are accepted by the kernel and
   * hang) but does nothing, like a frozen VM. Undo with {@link resume}.
   * @throws TetherError `FAILED_PRECONDITION` when the member is not running.
   */
  pause(i: number): void {
    const m = this.runningMember(i, 'pause');
    m.proc!.kill('SIGSTOP');
    m.paused = true;
  }

  /** SIGCONTs member `i`. A no-op when it is not paused. */
  resume(i: number): void {
    const m = this.member(i);
    if (!m.paused) return;
    if (isRunning(m)) m.proc!.kill('SIGCONT');
    m.paused = false;
  }

  /**
   * Starts member `i` again with its old name, ports and data dir (`--initial-cluster-state
   * existing`), after {@link kill} or {@link stopMember}. By default waits until it follows the leader.
   * @throws TetherError `FAILED_PRECONDITION` when it is still running; `TIMEOUT` as {@link waitForHealthy}.
   */
  async restart(i: number, options: RestartOptions = {}): Promise<void> {
    const m = this.member(i);
    if (this.state !== 'running') throw new TetherError('FAILED_PRECONDITION', `etcd cluster ${this.clusterId} is ${this.state}`);
    if (isRunning(m)) throw new TetherError('FAILED_PRECONDITION', `etcd member ${m.name} is still running; kill or stop it first`);
    this.spawnMember(m, 'existing');
    if (options.wait ?? true) await this.waitForHealthy(options.timeoutMs ?? 20_000, [i]);
  }

  /**
   * Stops every member (SIGTERM, SIGCONT for paused ones, SIGKILL after `stopGraceMs`; followers
   * before the leader, which then has nobody to hand leadership to and exits at once), waits for all
   * of them to exit, releases the orphan reaper and deletes `dataDir` unless `keepData`.
   * Idempotent; concurrent calls share one stop.
   */
  stop(): Promise<void> {
    this.stopPromise ??= (async () => {
      this.state = 'stopping';
      // Followers first: a SIGTERMed leader tries to hand leadership to a connected peer and, if that
      // peer is stopping too, waits out etcd's request timeout (7 s here). Alone, it stops at once.
      const leader = this.members.some((m) => isRunning(m) && !m.paused) ? await this.leaderIndex(500) : undefined;
      await Promise.all(this.members.filter((m) => m.index !== leader).map((m) => this.terminate(m)));
      if (leader !== undefined) await this.terminate(this.member(leader));
      this.reaper?.release();
      if (!this.opts.keepData) rmSync(this.dataDir, { recursive: true, force: true });
      keepOnExit(this.dataDir);
      this.state = 'stopped';
    })();
    return this.stopPromise;
  }

  private member(i: number): Member {
    const m = Number.isInteger(i) ? this.members[i] : undefined;
    if (m === undefined) throw new InvalidArgumentError('index', `no member ${i} in a ${this.size}-member cluster`);
    return m;
  }

  private runningMember(i: number, what: string): Member {
    const m = this.member(i);
    if (!isRunning(m)) throw new TetherError('FAILED_PRECONDITION', `cannot ${what} etcd member ${m.name}: not running`);
    return m;
  }

  private spawnMember(m: Member, clusterState: 'new' | 'existing'): void {
    // stop() may have run while start() awaited: never start a member it would not see.
    if (this.state === 'stopping' || this.state === 'stopped') {
      throw new TetherError('FAILED_PRECONDITION', `etcd cluster ${this.clusterId} is ${this.state}`);
    }
    const binary = this.binary ?? findEtcdBinary(this.etcdBinaryName);
    const initialCluster = this.members.map((o) => `${o.name}=${this.peerUrl(o.index)}`).join(',');
    const args = [
      '--name', m.name,
      '--data-dir', m.dataDir,
      '--listen-client-urls', this.clientUrl(m.index),
      '--advertise-client-urls', this.clientUrl(m.index),
      '--listen-peer-urls', this.peerUrl(m.index),
      '--initial-advertise-peer-urls', this.peerUrl(m.index),
      '--initial-cluster', initialCluster,
      '--initial-cluster-state', clusterState,
      '--initial-cluster-token', this.mark,
      '--heartbeat-interval', String(this.opts.heartbeatMs),
      '--election-timeout', String(this.opts.electionMs),
      '--pre-vote',
      '--logger', 'zap',
      '--log-outputs', 'stderr',
      '--log-level', this.opts.logLevel,
      ...this.extraArgs,
    ];
    const c = this.tls ? this.certs : undefined;
    if (c) {
      // The client listener's certificate is the peer one (server and client use): etcd's JSON
      // gateway dials the member itself with it, and --client-cert-auth checks it as a client.
      args.push(
        '--cert-file', c.peerCert, '--key-file', c.peerKey, '--client-cert-auth', '--trusted-ca-file', c.ca,
        '--peer-cert-file', c.peerCert, '--peer-key-file', c.peerKey, '--peer-client-cert-auth', '--peer-trusted-ca-file', c.ca,
      );
    }
    const fd = openSync(m.logFile, 'a');
    let proc: ChildProcess;
    try {
      proc = spawn(binary, args, { stdio: ['ignore', fd, fd], env: etcdEnv(), ...(this.ownProcessGroup ? { detached: true } : {}) });
    } finally {
      closeSync(fd);
    }
    m.proc = proc;
    m.paused = false;
    if (proc.pid !== undefined) killOnExit(proc.pid);
    const pid = proc.pid;
    // Like the agents, the local etcd must keep answering while TCG guests saturate the cores.
    if (pid !== undefined) {
      try {
        setPriority(pid, HEARTBEAT_PATH_PRIORITY);
      } catch {
        /* not root: normal priority */
      }
    }
    m.exited = new Promise<void>((resolve) => {
      const done = (): void => {
        if (pid !== undefined) forgetOnExit(pid);
        if (m.proc === proc) m.paused = false;
        resolve();
      };
      proc.once('exit', done);
      proc.once('error', done);
    });
  }

  private async killMember(m: Member): Promise<void> {
    if (!isRunning(m)) return;
    m.proc!.kill('SIGKILL');
    await m.exited;
  }

  private async terminate(m: Member): Promise<void> {
    if (!isRunning(m)) return;
    const proc = m.proc!;
    proc.kill('SIGTERM');
    if (m.paused) proc.kill('SIGCONT');
    let timer: NodeJS.Timeout | undefined;
    const graceOver = new Promise<'late'>((resolve) => {
      timer = setTimeout(() => resolve('late'), this.opts.stopGraceMs);
    });
    const outcome = await Promise.race([m.exited!.then(() => 'exited' as const), graceOver]);
    clearTimeout(timer);
    if (outcome === 'late') await this.killMember(m);
  }

  private exitText(m: Member): string {
    const p = m.proc;
    if (p === undefined) return 'never started';
    return p.signalCode !== null ? `signal ${p.signalCode}` : `exit status ${p.exitCode}`;
  }

  private logTails(): string {
    return this.members.map((m) => `\n--- ${m.name} (${m.logFile}) ---\n${tailFile(m.logFile, LOG_TAIL_LINES) || '(empty log)'}`).join('');
  }

  private errorDetails(): Record<string, unknown> {
    return { clusterId: this.clusterId, dataDir: this.dataDir, logDir: this.logDir, clientPorts: this.clientPorts, peerPorts: this.peerPorts };
  }

  private timeoutError(what: string): TetherError {
    return new TetherError('TIMEOUT', `etcd cluster ${this.clusterId}: ${what}${this.logTails()}`, {
      retryable: true,
      details: this.errorDetails(),
    });
  }
}
