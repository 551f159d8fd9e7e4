import { spawn } from 'node:child_process';
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, renameSync, rmSync, statSync, writeFileSync, readSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { InvalidArgumentError, TetherError, messageOf } from '../../domain/errors.js';
import {
  GUARDIAN_REASON_MAX,
  guardianFiles,
  parseGuardianFeed,
  validateFiredRecord,
  type GuardianFeedRecord,
  type GuardianFiles,
  type GuardianFiredRecord,
} from '../../domain/guardian.js';
import { GUARDIAN_CMDLINE_MARK, runningGuardian } from '../../guardian/guardian-lock.js';
import type { Clock } from '../../ports/clock.js';
import type { Guardian } from '../../ports/guardian.js';
import type { Logger } from '../../ports/logger.js';

export { GUARDIAN_CMDLINE_MARK };
export type { GuardianFiredRecord };

/** How the guardian process is launched by {@link GuardianFeed.ensureRunning}. */
export interface GuardianLaunchOptions {
  /** The QEMU binary the agent runs (passed as `--qemu-binary`; default: the guardian's own default). */
  readonly qemuBinary?: string;
  /** The agent's killTimeout, ms (passed as `--kill-timeout`). */
  readonly killTimeoutMs?: number;
  /** Per-host VM cgroup root, as given to QemuVmm (`false`: `--cgroup-root none`). */
  readonly cgroupRoot?: string | false;
  /** Linux watchdog device for the guardian to pet (`--watchdog-device`). */
  readonly watchdogDevice?: string;
  readonly watchdogPetIntervalMs?: number;
  /** `bin/tether.js` to run (default: the one of this repository). */
  readonly tetherBin?: string;
  /** Node binary (default `process.execPath`). */
  readonly nodePath?: string;
  /** How long a started guardian has to take its lock, ms (default 5000). */
  readonly startTimeoutMs?: number;
}

/** `bin/tether.js` of the repository this module belongs to (dist/ or src/ alike). */
export function defaultTetherBin(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    if (existsSync(join(dir, 'package.json')) && existsSync(join(dir, 'bin', 'tether.js'))) return join(dir, 'bin', 'tether.js');
    const up = dirname(dir);
    if (up === dir) throw new TetherError('INTERNAL', 'cannot find bin/tether.js above the guardian feed module');
    dir = up;
  }
}

/** Environment variables that belong to the agent's own systemd unit, never to the guardian it starts. */
const AGENT_ONLY_ENV = ['NOTIFY_SOCKET', 'WATCHDOG_USEC', 'WATCHDOG_PID', 'LISTEN_FDS', 'LISTEN_PID', 'LISTEN_FDNAMES'];

/**
 * The agent's side of the guardian (the {@link Guardian} port): feeds deadlines through
 * `<stateDir>/guardian/feed.json`, reads the guardian's `fired.json`, and keeps the guardian
 * process running.
 *
 * Invariants:
 * - every feed is written whole and atomically (temp file + rename) before `feed` returns, with a
 *   `seq` higher than any feed of this boot before it, also across agent restarts (seq is at
 *   least the monotonic clock in µs);
 * - a feed identical to the last one written (deadline, epoch, reason) is not written again;
 * - `shutdown` keeps the last deadline in the feed: a guardian that still sees a VM of this host
 *   goes on enforcing it;
 * - `fired` never hides a fire: an unreadable fired.json reads as an `incomplete` fire;
 * - its files are private: the guardian folder is created 0700, the feed and guardian.log 0600;
 * - `ensureRunning` starts at most one guardian per state dir (pid lock verified by command
 *   line), detached in its own session and process group, with output to guardian.log, without
 *   the agent's systemd variables: the agent's death, its unit's stop or a terminal's SIGINT
 *   never reaches it.
 */
export class GuardianFeed implements Guardian {
  /** The guardian's files under the state dir. */
  readonly files: GuardianFiles;
  private readonly stateDir: string;
  private readonly log: Logger;
  private seq = 0;
  private last: Pick<GuardianFeedRecord, 'deadlineMono' | 'epoch' | 'reason'> | undefined;
  private starting: Promise<{ started: boolean; pid: number }> | undefined;
  private firedProblem = '';

  constructor(
    stateDir: string,
    private readonly hostId: string,
    private readonly bootId: string,
    private readonly clock: Clock,
    logger: Logger,
    private readonly launch: GuardianLaunchOptions = {},
  ) {
    this.stateDir = resolve(stateDir);
    this.files = guardianFiles(this.stateDir);
    this.log = logger.child({ c: 'guardian-feed' });
    try {
      const prev = parseGuardianFeed(readFileSync(this.files.feed, 'utf8'));
      if (prev.bootId === bootId) this.seq = prev.seq;
    } catch {
      /* no feed yet, or unreadable: seq starts from the clock */
    }
  }

  /** Arms (deadline) or suspends (null) the guardian; writes only when something changed. */
  feed(deadlineMono: number | null, info: { epoch: number; reason: string }): void {
    if (deadlineMono !== null && (!Number.isFinite(deadlineMono) || deadlineMono < 0)) {
      throw new InvalidArgumentError('deadlineMono', `must be null or a non-negative finite number, got ${deadlineMono}`);
    }
    const reason = info.reason.slice(0, GUARDIAN_REASON_MAX);
    const l = this.last;
    if (l && l.deadlineMono === deadlineMono && l.epoch === info.epoch && l.reason === reason) return;
    this.write({ deadlineMono, epoch: info.epoch, reason });
  }

  /** Tells the guardian the agent stopped gracefully (call only with no VM process left). */
  shutdown(): void {
    this.write({ deadlineMono: this.last?.deadlineMono ?? null, epoch: this.last?.epoch ?? 0, reason: 'agent-shutdown' }, true);
  }

  private write(f: Pick<GuardianFeedRecord, 'deadlineMono' | 'epoch' | 'reason'>, shutdown = false): void {
    this.seq = Math.max(this.seq + 1, Math.floor(this.clock.nowMono() * 1000));
    const record: GuardianFeedRecord = { v: 1, hostId: this.hostId, bootId: this.bootId, seq: this.seq, ...f, ...(shutdown ? { shutdown: true as const } : {}) };
    const tmp = `${this.files.feed}.tmp-${process.pid}`;
    try {
      mkdirSync(this.files.dir, { recursive: true, mode: 0o700 });
      writeFileSync(tmp, `${JSON.stringify(record)}\n`, { mode: 0o600 });
      renameSync(tmp, this.files.feed);
    } catch (err) {
      throw new TetherError('INTERNAL', `writing the guardian feed ${this.files.feed}: ${messageOf(err)}`, { cause: err, retryable: true });
    }
    this.last = shutdown ? undefined : f;
  }

  /** The guardian's fire record when it fired and the agent has not acknowledged it yet. */
  fired(): GuardianFiredRecord | undefined {
    let text: string;
    try {
      text = readFileSync(this.files.fired, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      return this.unreadableFire(messageOf(err));
    }
    try {
      return validateFiredRecord(JSON.parse(text));
    } catch (err) {
      return this.unreadableFire(messageOf(err));
    }
  }

  private unreadableFire(why: string): GuardianFiredRecord {
    if (why !== this.firedProblem) this.log.error({ file: this.files.fired, err: why }, 'the guardian fire record is unreadable: treated as an incomplete fire');
    this.firedProblem = why;
    return {
      v: 1, hostId: this.hostId, bootId: this.bootId, seq: 0, epoch: 0, reason: `unreadable fired.json: ${why}`,
      deadlineMono: 0, firedAtMono: 0, firedAt: 0, state: 'incomplete', killed: [], survivors: [], leaks: [],
    };
  }

  /** The agent finished the cleanup that followed a fire: removes fired.json. */
  acknowledgeFired(): void {
    rmSync(this.files.fired, { force: true });
    this.firedProblem = '';
  }

  /** Starts the guardian unless one runs for this state dir; `started` says whether it had to. */
  ensureRunning(): Promise<{ started: boolean; pid: number }> {
    this.starting ??= this.startIfNeeded().finally(() => {
      this.starting = undefined;
    });
    return this.starting;
  }

  /** The command line `ensureRunning` launches (node, then the arguments). */
  commandLine(): string[] {
    const l = this.launch;
    return [
      l.nodePath ?? process.execPath,
      l.tetherBin ?? defaultTetherBin(),
      'guardian',
      '--state-dir', this.stateDir,
      '--host-id', this.hostId,
      ...(l.qemuBinary !== undefined ? ['--qemu-binary', l.qemuBinary] : []),
      ...(l.killTimeoutMs !== undefined ? ['--kill-timeout', `${Math.round(l.killTimeoutMs)}ms`] : []),
      ...(l.cgroupRoot !== undefined ? ['--cgroup-root', l.cgroupRoot === false ? 'none' : l.cgroupRoot] : []),
      ...(l.watchdogDevice !== undefined ? ['--watchdog-device', l.watchdogDevice] : []),
      ...(l.watchdogPetIntervalMs !== undefined ? ['--watchdog-pet-interval', `${Math.round(l.watchdogPetIntervalMs)}ms`] : []),
    ];
  }

  private async startIfNeeded(): Promise<{ started: boolean; pid: number }> {
    const running = runningGuardian(this.stateDir);
    if (running !== undefined) return { started: false, pid: running };
    const [node, ...args] = this.commandLine();
    mkdirSync(this.files.dir, { recursive: true, mode: 0o700 });
    const env = { ...process.env };
    for (const k of AGENT_ONLY_ENV) delete env[k];
    const out = openSync(this.files.log, 'a', 0o600);
    let exited: string | undefined;
    let child;
    try {
      child = spawn(node!, args, { detached: true, stdio: ['ignore', out, out], env, cwd: '/' });
    } finally {
      closeSync(out);
    }
    child.on('error', (err) => {
      exited = `could not be run: ${err.message}`;
    });
    child.on('exit', (code, signal) => {
      exited = `exited with ${code ?? signal}`;
    });
    child.unref();
    const deadline = this.clock.nowMono() + (this.launch.startTimeoutMs ?? 5000);
    for (;;) {
      const pid = runningGuardian(this.stateDir);
      if (pid !== undefined) {
        const started = pid === child.pid;
        if (started) this.log.info({ pid }, 'guardian started');
        return { started, pid };
      }
      if (exited !== undefined) {
        throw new TetherError('UNAVAILABLE', `the guardian ${exited}: ${this.logTail()}`, { retryable: true, details: { log: this.files.log } });
      }
      if (this.clock.nowMono() >= deadline) {
        child.kill('SIGKILL'); // our own child, not reaped yet: the pid is still its own
        throw new TetherError('UNAVAILABLE', `the guardian did not take its lock within ${this.launch.startTimeoutMs ?? 5000} ms: ${this.logTail()}`, { retryable: true });
      }
      await this.clock.sleep(20);
    }
  }

  private logTail(): string {
    try {
      const size = statSync(this.files.log).size;
      const fd = openSync(this.files.log, 'r');
      try {
        const n = Math.min(size, 2000);
        const buf = Buffer.alloc(n);
        readSync(fd, buf, 0, n, size - n);
        return buf.toString('utf8').trim();
      } finally {
        closeSync(fd);
      }
    } catch {
      return '(no guardian.log)';
    }
  }
}
