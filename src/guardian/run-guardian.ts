import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { setPriority } from 'node:os';
import { resolve } from 'node:path';
import { SystemClock } from '../adapters/clock/system-clock.js';
import { ensurePrivateDir, octal, tightenFile } from '../adapters/fs/private-files.js';
import { HOST_ID_PATTERN } from '../adapters/qemu/owner-mark.js';
import { VmOwnership } from '../adapters/qemu/process-owner.js';
import { hostCgroupDir, resolveVmCgroupRoot } from '../adapters/qemu/vm-cgroup.js';
import { SdNotifier, watchdogIntervalMs } from '../adapters/systemd/sd-notify.js';
import { InvalidArgumentError, TetherError, messageOf } from '../domain/errors.js';
import { guardianFiles } from '../domain/guardian.js';
import { Guardian, type GuardianExit } from './guardian.js';
import { acquireGuardianLock, type GuardianLock } from './guardian-lock.js';
import { Journal } from './journal.js';
import { VmKiller } from './vm-killer.js';
import { WatchdogDevice } from './watchdog-device.js';

/** `tether guardian` settings (flags; see src/cli/commands/guardian.ts). */
export interface GuardianConfig {
  /** The agent's state dir. */
  readonly stateDir: string;
  readonly hostId: string;
  /** The QEMU binary the agent runs (a VM process must run it). */
  readonly qemuBinary: string;
  readonly killTimeoutMs: number;
  /** Feed re-read period. */
  readonly pollMs: number;
  /** Per-host cgroup folder root; undefined: `<cgroup2 mount>/tether`; false: none. */
  readonly cgroupRoot?: string | false;
  readonly watchdogDevice?: string;
  readonly watchdogPetIntervalMs: number;
  /** Wait (instead of failing) while another guardian of the same state dir runs. */
  readonly waitForLock: boolean;
}

/** Priority of the guardian: ahead of busy guests, like the agent's heartbeat path. */
const GUARDIAN_NICE = -10;

function log(level: 'info' | 'warn' | 'error', msg: string, fields: Record<string, unknown> = {}): void {
  process.stderr.write(`${new Date().toISOString()} ${level} guardian[${process.pid}]: ${msg}${Object.keys(fields).length ? ` ${JSON.stringify(fields)}` : ''}\n`);
}

function readBootId(): string {
  try {
    return readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
  } catch (err) {
    throw new TetherError('FAILED_PRECONDITION', `cannot read /proc/sys/kernel/random/boot_id (needed to trust monotonic deadlines): ${messageOf(err)}`, { cause: err });
  }
}

/** Best effort: ahead of guests on the CPU, last for the OOM killer. Returns what worked. */
function hardenSelf(): { nice: boolean; oomScoreAdj: boolean } {
  let nice = false;
  let oomScoreAdj = false;
  try {
    setPriority(GUARDIAN_NICE);
    nice = true;
  } catch {
    /* not root */
  }
  try {
    writeFileSync('/proc/self/oom_score_adj', '-1000');
    oomScoreAdj = true;
  } catch {
    /* not root */
  }
  return { nice, oomScoreAdj };
}

/**
 * Runs the guardian until it exits (see {@link Guardian}); resolves with the process exit code.
 * Refuses (FAILED_PRECONDITION) a state dir that does not exist or another live guardian of the
 * same dir (unless `waitForLock`).
 */
export async function runGuardian(cfg: GuardianConfig): Promise<number> {
  if (!HOST_ID_PATTERN.test(cfg.hostId)) throw new InvalidArgumentError('hostId', `must match ${HOST_ID_PATTERN}`);
  const stateDir = resolve(cfg.stateDir);
  if (!existsSync(stateDir)) throw new TetherError('FAILED_PRECONDITION', `state dir ${stateDir} does not exist`);
  const clock = new SystemClock();
  const bootId = readBootId();
  const files = guardianFiles(stateDir);
  // Private like the rest of the state dir: created 0700/0600, or tightened when found looser.
  const dirWas = ensurePrivateDir(files.dir);
  if (dirWas !== undefined) log('warn', `${files.dir} was open to other users (${octal(dirWas)}): tightened`);
  for (const f of [files.feed, files.fired, files.journal, `${files.journal}.1`, files.pid, files.log]) {
    const was = tightenFile(f);
    if (was !== undefined) log('warn', `${f} was open to other users (${octal(was)}): tightened`);
  }
  const journal = new Journal(files.journal, clock);
  const notifier = SdNotifier.fromEnv(process.env, { onError: (m) => log('warn', m) });
  const notifyIntervalMs = notifier ? watchdogIntervalMs() : undefined;

  let lock: GuardianLock | undefined;
  for (;;) {
    const r = acquireGuardianLock(stateDir);
    if (!('heldBy' in r)) {
      lock = r;
      break;
    }
    if (!cfg.waitForLock) {
      journal.write('lock-held', { by: r.heldBy });
      throw new TetherError('FAILED_PRECONDITION', `another guardian (pid ${r.heldBy}) serves ${stateDir}`, { details: { pid: r.heldBy } });
    }
    // The host is protected by that guardian meanwhile: report healthy to systemd.
    notifier?.ready(`waiting: guardian pid ${r.heldBy} serves ${stateDir}`);
    notifier?.watchdog();
    await clock.sleep(cfg.pollMs);
    if (!existsSync(stateDir)) return 0;
  }

  const hardened = hardenSelf();
  const cg = await resolveVmCgroupRoot(cfg.cgroupRoot, false);
  const cgroupDir = cg.root === undefined ? undefined : hostCgroupDir(cg.root, cfg.hostId);
  if (cg.root === undefined) log('warn', `no VM cgroup (${cg.why}): VMs are found by their pid files only`);
  const owner = new VmOwnership({ stateRoot: stateDir, hostId: cfg.hostId, qemuBinary: cfg.qemuBinary });
  let qemuExe: string | undefined;
  try {
    qemuExe = await owner.qemuExe();
  } catch (err) {
    log('error', `cannot resolve the QEMU binary: no VM can be verified (nor killed) until it can: ${messageOf(err)}`);
    journal.write('error', { what: 'resolving the QEMU binary', err: messageOf(err) });
  }

  let watchdog: WatchdogDevice | undefined;
  if (cfg.watchdogDevice !== undefined) {
    try {
      watchdog = await WatchdogDevice.open(cfg.watchdogDevice, clock);
    } catch (err) {
      lock.release();
      throw err;
    }
  }
  journal.write('started', {
    pid: process.pid,
    hostId: cfg.hostId,
    bootId,
    killTimeoutMs: cfg.killTimeoutMs,
    pollMs: cfg.pollMs,
    qemuExe: qemuExe ?? null,
    cgroup: cgroupDir ?? null,
    ...(cg.root === undefined ? { noCgroup: cg.why } : {}),
    watchdogDevice: cfg.watchdogDevice ?? null,
    notifySocket: notifier?.socket ?? null,
    notifyIntervalMs: notifyIntervalMs ?? null,
    ...hardened,
  });
  log('info', 'guardian started', { stateDir, hostId: cfg.hostId, cgroup: cgroupDir ?? null });

  const guardian = new Guardian({
    stateDir,
    hostId: cfg.hostId,
    bootId,
    killTimeoutMs: cfg.killTimeoutMs,
    pollMs: cfg.pollMs,
    clock,
    killer: new VmKiller(owner, cgroupDir, clock, journal),
    journal,
    lock,
    ...(watchdog ? { watchdog, petIntervalMs: cfg.watchdogPetIntervalMs } : {}),
    ...(notifier ? { notifier, ...(notifyIntervalMs !== undefined ? { notifyIntervalMs } : {}) } : {}),
    log,
  });
  const onSignal = (signal: string) => {
    log('info', `${signal}: stopping`);
    guardian.stop();
  };
  process.on('SIGTERM', () => onSignal('SIGTERM'));
  process.on('SIGINT', () => onSignal('SIGINT'));
  process.on('SIGHUP', () => undefined); // no terminal to lose

  let exit: GuardianExit;
  try {
    exit = await guardian.run();
  } catch (err) {
    // A bug: leave the watchdog armed (the host resets unless a new guardian takes over).
    log('error', `guardian loop failed: ${messageOf(err)}`);
    journal.write('error', { what: 'loop', err: messageOf(err) });
    watchdog?.closeArmed();
    throw err;
  }
  const held = guardian.heldFeed;
  const armed = held !== undefined && held.deadlineMono !== null && !held.shutdown;
  // Disarm only when nothing is left to enforce, or another guardian enforces it.
  if (watchdog) {
    if (exit === 'shutdown' || exit === 'lock-lost' || !armed) watchdog.closeDisarmed();
    else watchdog.closeArmed();
  }
  if (exit !== 'state-dir-gone') journal.write('exit', { why: exit, watchdog: watchdog ? (exit === 'shutdown' || exit === 'lock-lost' || !armed ? 'disarmed' : 'left armed') : null });
  log('info', `guardian exits: ${exit}`);
  if (exit !== 'lock-lost') lock.release();
  notifier?.stopping();
  await notifier?.close();
  return 0;
}
