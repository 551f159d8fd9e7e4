import { spawn } from 'node:child_process';
import { resolve } from 'node:path';
import { access, open, readFile, rm } from 'node:fs/promises';
import type { Clock } from '../../ports/clock.js';
import type { Logger } from '../../ports/logger.js';
import type { StopOptions, StopResult, VmLaunchSpec, VmProcessStatus, Vmm } from '../../ports/vmm.js';
import type { StopMethod } from '../../domain/vm.js';
import { InvalidArgumentError, TetherError, messageOf } from '../../domain/errors.js';
import { DEFAULT_QEMU_BINARY, probeAccel, type ProbeGuest } from './accel-probe.js';
import { type Accel, buildQemuArgs, tscKhzFromCpuinfo, validateLaunchSpec, vmStatePaths } from './qemu-args.js';
import { HOST_ID_PATTERN } from './owner-mark.js';
import { VmOwnership, readProcStat, type OwnedVm } from './process-owner.js';
import { readPidFile } from './proc-fs.js';
import { JOIN_CGROUP_SCRIPT, hostCgroupDir, removeEmptyCgroup, resolveVmCgroupRoot, type VmCgroupRoot } from './vm-cgroup.js';
import { QmpClient } from './qmp-client.js';
import { LogScanner, READY_MARKER, fileContains, readTail } from './serial-log.js';
import { CappedLog, ConsolePump, DEFAULT_SERIAL_LOG_BYTES, checkSerialLogMaxBytes } from './serial-console.js';
import { PRIVATE_FILE_MODE, tightenFile } from '../fs/private-files.js';

/** Options of {@link QemuVmm}. */
export interface QemuVmmOptions {
  /** Every wait and deadline runs on this clock. */
  readonly clock: Clock;
  /** Default `qemu-system-x86_64` (looked up in PATH). A process is ours only if it runs this binary. */
  readonly qemuBinary?: string;
  /**
   * This agent's state dir. A process is ours only if its pid file is
   * `<stateRoot>/vm/<ns>/<name>/<uid>/qemu.pid` (see process-owner.ts); `start` refuses a spec
   * whose stateDir is not such a folder. Two agents with the same host id but different state
   * dirs therefore never see (or stop) each other's VMs.
   */
  readonly stateRoot: string;
  /**
   * Folder of the per-host VM cgroups: default `<cgroup2 mount>/tether` when a writable cgroup2
   * hierarchy exists (QEMU then starts in `<root>/<hostId>/`, and every process it forks stays
   * there); false: no cgroup.
   */
  readonly cgroupRoot?: string | false;
  /**
   * 'kvm', 'tcg', or 'auto' (default): probe once with {@link probeAccel} (the firmware check, and
   * the guest boot when `probe.guest` is given: pass it wherever a guest is at hand).
   */
  readonly accel?: Accel | 'auto';
  /**
   * For 'auto': a guest KVM must also boot to its ready marker (a nested KVM may run firmware yet
   * hang a real kernel: measured on this kind of machine), and a file caching the verdict per boot.
   */
  readonly probe?: { readonly guest?: ProbeGuest; readonly cacheFile?: string };
  /**
   * This host's id. When set, status/stop/waitReady only accept processes marked with it
   * (as well as with the uid), and start refuses specs for another host. When unset, the uid
   * alone is checked (uids are unique per incarnation, which still rules out pid reuse).
   */
  readonly hostId?: string;
  readonly logger?: Logger;
  /** Deadline for QEMU to daemonise on start, ms. Default 30 000. */
  readonly startTimeoutMs?: number;
  /** Poll period while waiting for a process to exit or a marker to appear, ms. Default 20. */
  readonly pollMs?: number;
  /** Deadline for the QMP handshake in stop, ms. Default 1000 (capped by graceMs). */
  readonly qmpConnectTimeoutMs?: number;
  /**
   * During the grace period the graceful signal is repeated every this many ms (default 1000;
   * 0: press once), so a guest whose handler was not listening yet still powers off.
   */
  readonly gracefulRepeatMs?: number;
  /**
   * Most bytes one VM's console may take on disk (`serial.log` + `serial.log.1`), default 1 MiB,
   * at least 4096 (serial-console.ts).
   */
  readonly serialLogMaxBytes?: number;
  /** Console drain period once the guest is ready, ms (default 500; 50 ms until then). */
  readonly consolePollMs?: number;
}

let cpuinfoKhz: Promise<number | undefined> | undefined;

/** Runs `fn` (which must spawn synchronously) with the process umask set to `mask`, then restores it. */
function withUmask<T>(mask: number, fn: () => T): T {
  let old: number | undefined;
  try {
    old = process.umask(mask);
  } catch {
    /* not available (worker thread): the mode checks after start still apply */
  }
  try {
    return fn();
  } finally {
    if (old !== undefined) process.umask(old);
  }
}

async function exists(path: string): Promise<boolean> {
  return access(path).then(
    () => true,
    () => false,
  );
}

/** Host TSC frequency (kHz) from the first `cpu MHz` of /proc/cpuinfo; read once per process. */
export function hostTscKhz(): Promise<number | undefined> {
  cpuinfoKhz ??= readFile('/proc/cpuinfo', 'utf8').then(tscKhzFromCpuinfo, () => undefined);
  return cpuinfoKhz;
}

/** The console pump of one VM folder (see QemuVmm.attachConsole). */
interface ConsoleEntry {
  /** `/proc` start time of the QEMU it drains. */
  readonly startTime: string;
  /** Monotonic ms when attaching began. */
  readonly at: number;
  /** Settles once the pump runs (or none is needed). */
  attached: Promise<void>;
  pump?: ConsolePump;
}

/** Serialises async work per key (one VM state folder): one start or stop at a time per VM. */
class KeyedMutex {
  private readonly tails = new Map<string, Promise<void>>();
  async run<T>(key: string, fn: () => Promise<T>): Promise<T> {
    const prev = this.tails.get(key) ?? Promise.resolve();
    const p = prev.then(fn);
    const tail = p.then(
      () => undefined,
      () => undefined,
    );
    this.tails.set(key, tail);
    try {
      return await p;
    } finally {
      if (this.tails.get(key) === tail) this.tails.delete(key);
    }
  }
}

/**
 * The {@link Vmm} port on QEMU `microvm`, daemonised (`-daemonize`): VMs outlive the agent, and a
 * new instance adopts them through `<stateDir>/qemu.pid` and the process command line.
 *
 * Invariants:
 * - NEVER signals or sends QMP to a process that did not pass, at the start of that call, every
 *   ownership check of process-owner.ts: pid file `<stateRoot>/vm/<ns>/<name>/<uid>/qemu.pid`
 *   naming it, owner mark `-name tether:<hostId>:<uid>` with the folder's uid, executable the
 *   configured QEMU binary; afterwards the process is followed by (pid, start time). A stale pid
 *   file, a reused pid, a zombie, or a VM of another agent (other state dir) reads as "not running";
 * - with a writable cgroup2 hierarchy, QEMU starts inside `<cgroupRoot>/<hostId>/` (vm-cgroup.ts),
 *   so nothing it forks escapes the host's cgroup; the empty host cgroup is removed after a stop;
 * - stop escalates: graceful (ACPI button or ctrl-alt-del via QMP, repeated every
 *   `gracefulRepeatMs`) for `graceMs` after the first press (while it waits, a guest power-off
 *   pauses QEMU, the console ring is drained and QEMU told to quit: still 'graceful'),
 *   then QMP `quit`, then SIGKILL, and returns only once the process is verified gone (else
 *   TIMEOUT); a QMP socket that does not answer in the graceful phase skips straight to SIGKILL;
 * - files in the state folder are never deleted by stop (the caller's cleanup plan owns them);
 *   start only removes a stale pid file and the previous run's console files before launching;
 * - least privilege: QEMU is spawned with umask 077 and, once it runs, its sockets, pid file and
 *   qemu.log are checked to be 0600 (tightened otherwise) inside the VM folder (0700, made by
 *   the caller's Files port);
 * - the guest console never reaches the disk through QEMU: a verified running VM gets one console
 *   pump (serial-console.ts) that keeps `serial.log` + `serial.log.1` under `serialLogMaxBytes`;
 *   pumps attach on start and on status (adoption), and end when QEMU exits;
 * - one start/stop at a time per state folder within an instance; every method is idempotent;
 * - every wait runs on the injected Clock.
 */
export class QemuVmm implements Vmm {
  private readonly clock: Clock;
  private readonly binary: string;
  private readonly accelOption: Accel | 'auto';
  private readonly probe: QemuVmmOptions['probe'];
  private readonly hostId: string | undefined;
  private readonly logger: Logger | undefined;
  private readonly startTimeoutMs: number;
  private readonly pollMs: number;
  private readonly qmpConnectTimeoutMs: number;
  private readonly gracefulRepeatMs: number;
  private readonly locks = new KeyedMutex();
  private readonly owner: VmOwnership;
  private readonly cgroupOption: string | false | undefined;
  private cgroupRoot: Promise<VmCgroupRoot> | undefined;
  private readonly serialLogMaxBytes: number;
  private readonly consolePollMs: number;
  /** Console pump per VM folder (one at a time). */
  private readonly pumps = new Map<string, ConsoleEntry>();

  constructor(options: QemuVmmOptions) {
    this.clock = options.clock;
    this.binary = options.qemuBinary ?? DEFAULT_QEMU_BINARY;
    this.accelOption = options.accel ?? 'auto';
    this.probe = options.probe;
    if (options.hostId !== undefined && !HOST_ID_PATTERN.test(options.hostId)) {
      throw new InvalidArgumentError('hostId', `must match ${HOST_ID_PATTERN}`);
    }
    this.hostId = options.hostId;
    this.logger = options.logger?.child({ component: 'qemu-vmm' });
    this.startTimeoutMs = options.startTimeoutMs ?? 30_000;
    this.pollMs = options.pollMs ?? 20;
    this.qmpConnectTimeoutMs = options.qmpConnectTimeoutMs ?? 1000;
    this.gracefulRepeatMs = options.gracefulRepeatMs ?? 1000;
    this.owner = new VmOwnership({ stateRoot: options.stateRoot, qemuBinary: this.binary, ...(options.hostId !== undefined ? { hostId: options.hostId } : {}) });
    this.cgroupOption = options.cgroupRoot;
    this.serialLogMaxBytes = options.serialLogMaxBytes ?? DEFAULT_SERIAL_LOG_BYTES;
    checkSerialLogMaxBytes(this.serialLogMaxBytes);
    this.consolePollMs = options.consolePollMs ?? 500;
  }

  /**
   * Makes sure the verified running `vm` has a console pump draining its ring into its capped
   * log: one per VM folder, registered before any await (concurrent callers share it). A pump of
   * an earlier QEMU of the same folder (other start time) is replaced; a pump that ended without
   * its QEMU exiting (monitor unreachable) is retried at most every 5 s.
   */
  private attachConsole(vm: OwnedVm): Promise<void> {
    const cur = this.pumps.get(vm.stateDir);
    if (cur && cur.startTime === vm.startTime && (!cur.pump?.ended || this.clock.nowMono() - cur.at < 5000)) return cur.attached;
    const entry: ConsoleEntry = { startTime: vm.startTime, at: this.clock.nowMono(), attached: Promise.resolve() };
    this.pumps.set(vm.stateDir, entry);
    entry.attached = (async () => {
      await cur?.attached;
      await cur?.pump?.stop();
      const paths = vmStatePaths(vm.stateDir);
      // A VM started before consoles were rings (`-serial file:`) has no console monitor: nothing to drain.
      if (!(await exists(paths.consoleSocket)) || this.pumps.get(vm.stateDir) !== entry) return;
      const pump = new ConsolePump({
        clock: this.clock,
        socket: paths.consoleSocket,
        log: new CappedLog(paths.serialLog, paths.serialLogOld, this.serialLogMaxBytes),
        marker: READY_MARKER,
        readyFile: paths.readyFile,
        pollMs: this.consolePollMs,
        ready: await exists(paths.readyFile),
        ...(this.logger ? { logger: this.logger.child({ uid: vm.uid }) } : {}),
      });
      entry.pump = pump;
      void pump.done.then(async () => {
        // QEMU gone: forget the pump (a monitor that failed while QEMU runs is retried later).
        if (this.pumps.get(vm.stateDir) === entry && !(await this.owner.stillAlive(vm))) this.pumps.delete(vm.stateDir);
      });
    })().catch((err: unknown) => this.logger?.warn({ uid: vm.uid, err: messageOf(err) }, 'cannot attach the console pump'));
    return entry.attached;
  }

  /** Stops every console pump (after one last drain each). VMs keep running. */
  async close(): Promise<void> {
    const all = [...this.pumps.values()];
    this.pumps.clear();
    await Promise.all(all.map(async (e) => {
      await e.attached;
      await e.pump?.stop();
    }));
  }

  /** The resolved state root every VM pid file must lie under. */
  get stateRoot(): string {
    return this.owner.stateRoot;
  }

  /**
   * The cgroup `hostId`'s VMs are started in, or undefined when VMs start without one (no
   * writable cgroup2 hierarchy, or disabled); resolved once, said once in the log.
   */
  async vmCgroupDir(hostId: string): Promise<string | undefined> {
    if (!this.cgroupRoot) {
      this.cgroupRoot = resolveVmCgroupRoot(this.cgroupOption, true).then((r) => {
        if (r.root === undefined) this.logger?.warn({ why: r.why }, 'VMs start without a cgroup; the guardian finds them by pid file only');
        else this.logger?.info({ cgroupRoot: r.root }, 'VMs start in per-host cgroups');
        return r;
      });
    }
    const r = await this.cgroupRoot;
    return r.root === undefined ? undefined : hostCgroupDir(r.root, hostId);
  }

  /** The accelerator VMs start with (probing once when 'auto'). */
  async accel(): Promise<Accel> {
    if (this.accelOption !== 'auto') return this.accelOption;
    return probeAccel({ qemuBinary: this.binary, clock: this.clock, ...(this.logger ? { logger: this.logger } : {}), ...(this.probe ?? {}) });
  }

  /**
   * Launches the VM daemonised and resolves with its pid once `<stateDir>/qemu.pid` names a
   * verified process. Already running (verified): resolves with that pid and launches nothing.
   * QEMU failing to start: VMM_ERROR whose message and `details.stderr` hold QEMU's output.
   */
  async start(spec: VmLaunchSpec): Promise<{ pid: number }> {
    validateLaunchSpec(spec);
    if (this.hostId !== undefined && spec.hostId !== this.hostId) {
      throw new InvalidArgumentError('hostId', `spec is for host ${spec.hostId}, this VMM serves ${this.hostId}`);
    }
    const layout = this.owner.layoutOf(vmStatePaths(spec.stateDir).pidFile);
    if (layout === undefined || layout.uid !== spec.uid) {
      throw new InvalidArgumentError('stateDir', `must be ${this.owner.stateRoot}/vm/<ns>/<name>/${spec.uid} (the ownership check finds VMs only there), got ${spec.stateDir}`);
    }
    return this.locks.run(spec.stateDir, () => this.startLocked(spec));
  }

  private async startLocked(spec: VmLaunchSpec): Promise<{ pid: number }> {
    const paths = vmStatePaths(spec.stateDir);
    const log = this.logger?.child({ uid: spec.uid });
    const existing = await this.verified(spec.uid, spec.stateDir, spec.hostId);
    if (existing !== undefined) {
      await this.attachConsole(existing);
      log?.info({ pid: existing.pid }, 'VM already running; start is a no-op');
      return { pid: existing.pid };
    }
    // The executable the ownership check will require: a missing binary fails here, loudly.
    await this.owner.qemuExe();
    const accel = await this.accel();
    const tscKhz = accel === 'tcg' ? await hostTscKhz() : undefined;
    const args = buildQemuArgs(spec, { accel, ...(tscKhz !== undefined ? { tscKhz } : {}) });
    // A stale pid file must not be mistaken for the new process's; the console files are this run's.
    const old = this.pumps.get(resolve(spec.stateDir));
    this.pumps.delete(resolve(spec.stateDir));
    await old?.attached;
    await old?.pump?.stop();
    await Promise.all([paths.pidFile, paths.serialLog, paths.serialLogOld, paths.readyFile].map((f) => rm(f, { force: true })));
    const t0 = this.clock.nowMono();
    const cgroup = await this.vmCgroupDir(spec.hostId);
    // In a cgroup: a shell joins it and execs QEMU (same pid, argv[0] the QEMU binary).
    const exit = cgroup === undefined
      ? await this.runDaemonising(this.binary, args, paths.qemuLog)
      : await this.runDaemonising('/bin/sh', ['-c', JOIN_CGROUP_SCRIPT, cgroup, this.binary, ...args], paths.qemuLog);
    const output = (await readTail(paths.qemuLog, 4096)).trim();
    if (exit.error !== undefined || exit.code !== 0) {
      // The daemon child of a failed launch may still be exiting: give the kernel a moment.
      for (let i = 0; cgroup !== undefined && i < 10 && !(await removeEmptyCgroup(cgroup)); i++) await this.clock.sleep(20);
      const why = exit.error ?? `exited with ${exit.code ?? exit.signal}`;
      throw new TetherError('VMM_ERROR', `starting VM ${spec.uid}: ${this.binary} ${why}${output ? `: ${output}` : ''}`, {
        details: { uid: spec.uid, stderr: output, exitCode: exit.code, binary: this.binary },
      });
    }
    // QEMU writes the pid file before its launcher exits; tolerate a slow file system anyway.
    const deadline = this.clock.nowMono() + 2000;
    for (;;) {
      const vm = await this.verified(spec.uid, spec.stateDir, spec.hostId);
      if (vm !== undefined) {
        for (const f of [paths.qmpSocket, paths.consoleSocket, paths.pidFile, paths.qemuLog]) {
          const was = tightenFile(f);
          if (was !== undefined) log?.debug({ file: f, was: was.toString(8) }, 'tightened to 0600');
        }
        await this.attachConsole(vm);
        log?.info({ pid: vm.pid, accel, cgroup, tookMs: Math.round(this.clock.nowMono() - t0) }, 'VM started');
        return { pid: vm.pid };
      }
      if (this.clock.nowMono() >= deadline) {
        throw new TetherError('VMM_ERROR', `starting VM ${spec.uid}: QEMU exited 0 but ${paths.pidFile} names no marked process${output ? `: ${output}` : ''}`, {
          details: { uid: spec.uid, stderr: output },
        });
      }
      await this.clock.sleep(this.pollMs);
    }
  }

  /** Runs the QEMU launcher (which forks the daemon and exits) with stdout/stderr into `logPath`. */
  private async runDaemonising(
    command: string,
    args: string[],
    logPath: string,
  ): Promise<{ code: number | null; signal: NodeJS.Signals | null; error?: string }> {
    const fh = await open(logPath, 'w', PRIVATE_FILE_MODE);
    tightenFile(logPath);
    try {
      return await new Promise((resolve) => {
        let done = false;
        // Whatever QEMU creates before it sets its own umask (027, when daemonising) is private.
        const child = withUmask(0o077, () => spawn(command, args, { stdio: ['ignore', fh.fd, fh.fd] }));
        const timer = this.clock.setTimer(this.startTimeoutMs, () => {
          if (done) return;
          done = true;
          child.kill('SIGKILL'); // our own direct child, not yet reaped: its pid cannot be reused
          resolve({ code: null, signal: 'SIGKILL', error: `did not daemonise within ${this.startTimeoutMs} ms` });
        });
        child.on('error', (err) => {
          if (done) return;
          done = true;
          this.clock.clearTimer(timer);
          resolve({ code: null, signal: null, error: `could not be run: ${err.message}` });
        });
        child.on('exit', (code, signal) => {
          if (done) return;
          done = true;
          this.clock.clearTimer(timer);
          resolve({ code, signal });
        });
      });
    } finally {
      await fh.close();
    }
  }

  /**
   * Resolves once the serial log holds {@link READY_MARKER}. Rejects with TIMEOUT (not
   * retryable) after `timeoutMs`, or with VMM_ERROR as soon as the pid file names a process that
   * is no longer a marked QEMU (the VM died); both carry the serial log's tail. Rejects with
   * FAILED_PRECONDITION (not retryable) as soon as `abandon()` is true (the VM is no longer wanted).
   */
  async waitReady(stateDir: string, timeoutMs: number, abandon?: () => boolean): Promise<void> {
    const paths = vmStatePaths(stateDir);
    const scanner = new LogScanner(paths.serialLog, READY_MARKER);
    const t0 = this.clock.nowMono();
    const deadline = t0 + timeoutMs;
    for (let i = 0; ; i++) {
      if (i % 10 === 0 && !this.pumps.has(resolve(stateDir))) {
        const v = await this.owner.verify(paths.pidFile);
        if (v.owned) await this.attachConsole(v.vm);
      }
      if ((await exists(paths.readyFile)) || (await scanner.poll())) {
        this.logger?.debug({ stateDir, tookMs: Math.round(this.clock.nowMono() - t0) }, 'VM ready');
        return;
      }
      if (abandon?.() === true) {
        throw new TetherError('FAILED_PRECONDITION', `VM in ${stateDir} is no longer wanted: stopped waiting for its ready marker after ${Math.round(this.clock.nowMono() - t0)} ms`, {
          retryable: false,
          details: { stateDir },
        });
      }
      if (i % 10 === 9 && (await this.launchedAndGone(paths.pidFile))) {
        await this.pumps.get(resolve(stateDir))?.pump?.stop();
        if ((await exists(paths.readyFile)) || (await scanner.poll())) return;
        const tail = await readTail(paths.serialLog);
        throw new TetherError('VMM_ERROR', `VM in ${stateDir} exited before ready; serial log tail:\n${tail}`, {
          details: { stateDir, serialTail: tail },
        });
      }
      const left = deadline - this.clock.nowMono();
      if (left <= 0) {
        const tail = await readTail(paths.serialLog);
        throw new TetherError('TIMEOUT', `VM in ${stateDir} not ready within ${timeoutMs} ms; serial log tail:\n${tail}`, {
          retryable: false,
          details: { stateDir, timeoutMs, serialTail: tail },
        });
      }
      await this.clock.sleep(Math.min(this.pollMs, left));
    }
  }

  /** True when a pid file exists but names no live VM of ours any more. */
  private async launchedAndGone(pidFile: string): Promise<boolean> {
    const pid = await readPidFile(pidFile);
    if (pid === undefined) return false;
    const stat = await readProcStat(pid);
    if (stat === undefined || stat.state === 'Z') return true;
    return !(await this.owner.verify(pidFile, { pid })).owned;
  }

  /**
   * running: the pid file names a live QEMU marked with `uid` (and this host, when known);
   * ready: running and the serial log holds the ready marker. A missing, stale or foreign pid
   * file reads as not running; never throws for those.
   */
  async status(uid: string, stateDir: string): Promise<VmProcessStatus> {
    const vm = await this.verified(uid, stateDir, this.hostId);
    if (vm === undefined) return { running: false, ready: false };
    await this.attachConsole(vm);
    const paths = vmStatePaths(stateDir);
    const ready = (await exists(paths.readyFile)) || (await fileContains(paths.serialLog, READY_MARKER));
    return { running: true, pid: vm.pid, ready };
  }

  /**
   * The process named by `<stateDir>/qemu.pid` when it passes every ownership check of
   * process-owner.ts for `uid` (and `hostId`); undefined otherwise.
   */
  private async verified(uid: string, stateDir: string, hostId: string | undefined): Promise<OwnedVm | undefined> {
    const v = await this.owner.verify(vmStatePaths(stateDir).pidFile, { uid, ...(hostId !== undefined ? { hostId } : {}) });
    return v.owned ? v.vm : undefined;
  }

  /** Polls until the verified process `vm` is gone, or `deadline` (mono ms) passes. */
  private async waitGone(vm: OwnedVm, deadline: number): Promise<boolean> {
    for (;;) {
      if (!(await this.owner.stillAlive(vm))) return true;
      const left = deadline - this.clock.nowMono();
      if (left <= 0) return false;
      await this.clock.sleep(Math.min(this.pollMs, left));
    }
  }

  /**
   * {@link waitGone} for the graceful phase, pressing the button again every
   * `gracefulRepeatMs`: a guest that was not yet listening at the first press (e.g. its ACPI
   * daemon still starting) still gets the request; a second press to a guest that is powering
   * off is harmless.
   */
  private async waitGoneGraceful(
    vm: OwnedVm,
    deadline: number,
    qmp: QmpClient,
    press: (timeoutMs: number) => Promise<boolean>,
    guestOff: () => boolean,
  ): Promise<'gone' | 'guest-off' | 'timeout'> {
    let nextPress = this.clock.nowMono() + this.gracefulRepeatMs;
    for (;;) {
      if (!(await this.owner.stillAlive(vm))) return 'gone';
      if (guestOff()) return 'guest-off';
      const now = this.clock.nowMono();
      const left = deadline - now;
      if (left <= 0) return 'timeout';
      if (this.gracefulRepeatMs > 0 && now >= nextPress && !qmp.isClosed) {
        await press(Math.max(1, Math.min(500, left)));
        nextPress = this.clock.nowMono() + this.gracefulRepeatMs;
        continue;
      }
      await this.clock.sleep(Math.min(this.pollMs, left));
    }
  }

  /** True when QEMU reports the guest powered off (runstate `shutdown`: paused by the shutdown action). */
  private async guestIsOff(qmp: QmpClient, uid: string): Promise<boolean> {
    try {
      const st = await qmp.execute<{ status?: string }>('query-status', undefined, { timeoutMs: 500 });
      return st.status === 'shutdown';
    } catch (err) {
      this.logger?.warn({ uid, err: messageOf(err) }, 'QMP query-status failed');
      return false;
    }
  }

  private async tryQmp(socketPath: string, timeoutMs: number, uid: string): Promise<QmpClient | undefined> {
    try {
      return await QmpClient.connect(socketPath, { clock: this.clock, timeoutMs: Math.max(1, timeoutMs) });
    } catch (err) {
      this.logger?.warn({ uid, err: messageOf(err) }, 'QMP unreachable');
      return undefined;
    }
  }

  private async tryExecute(qmp: QmpClient, command: string, args: Record<string, unknown> | undefined, timeoutMs: number, uid: string): Promise<boolean> {
    try {
      await qmp.execute(command, args, { timeoutMs: Math.max(1, timeoutMs) });
      return true;
    } catch (err) {
      this.logger?.warn({ uid, command, err: messageOf(err) }, 'QMP command failed');
      return false;
    }
  }

  /**
   * Stops the VM: graceful, then QMP `quit`, then SIGKILL (see the class invariants). Methods:
   * 'already-stopped' (nothing verified running), 'graceful' (exited within graceMs of the
   * signal), 'forced-quit' (exited after `quit` within min(1000, killTimeoutMs/2) ms),
   * 'forced-kill'. Not gone within killTimeoutMs of the forced phase: TIMEOUT (retryable).
   */
  async stop(uid: string, stateDir: string, opts: StopOptions): Promise<StopResult> {
    return this.locks.run(stateDir, () => this.stopLocked(uid, stateDir, opts));
  }

  private async stopLocked(uid: string, stateDir: string, opts: StopOptions): Promise<StopResult> {
    const t0 = this.clock.nowMono();
    const paths = vmStatePaths(stateDir);
    const log = this.logger?.child({ uid });
    const result = (method: StopMethod): StopResult => {
      const r = { method, tookMs: Math.round(this.clock.nowMono() - t0) };
      log?.info({ ...r }, 'VM stop');
      return r;
    };
    const vm = await this.verified(uid, stateDir, this.hostId);
    if (vm === undefined) return result('already-stopped');
    const pid = vm.pid;

    let qmp: QmpClient | undefined;
    let qmpUnreachable = false;
    let holdShutdown = false;
    let lastAction: 'none' | 'graceful' | 'quit' = 'none';
    try {
      if (!opts.forceOnly && opts.graceMs > 0) {
        qmp = await this.tryQmp(paths.qmpSocket, Math.min(this.qmpConnectTimeoutMs, opts.graceMs), uid);
        qmpUnreachable = qmp === undefined;
        if (qmp) {
          const client = qmp;
          // The guest's last words: while this stop waits, a guest power-off PAUSES QEMU (instead of
          // exiting at once, which would lose what is still in the console ring); the ring is drained,
          // then QEMU is told to quit. A VM found already paused that way (a stop interrupted by an
          // agent crash) is finished the same way.
          holdShutdown = await this.tryExecute(client, 'set-action', { shutdown: 'pause' }, Math.min(500, opts.graceMs), uid);
          let off = holdShutdown && (await this.guestIsOff(client, uid));
          client.on('SHUTDOWN', (d) => {
            if (d.guest) off = true;
          });
          const press = (timeoutMs: number): Promise<boolean> =>
            opts.gracefulSignal === 'ctrl-alt-del'
              ? this.tryExecute(client, 'send-key', { keys: ['ctrl', 'alt', 'delete'].map((k) => ({ type: 'qcode', data: k })) }, timeoutMs, uid)
              : this.tryExecute(client, 'system_powerdown', undefined, timeoutMs, uid);
          if (off || (await press(Math.min(1000, opts.graceMs)))) {
            lastAction = 'graceful';
            const graceDeadline = this.clock.nowMono() + opts.graceMs;
            const outcome = off ? 'guest-off' : await this.waitGoneGraceful(vm, graceDeadline, client, press, () => off);
            if (outcome === 'gone') return result('graceful');
            if (outcome === 'guest-off') {
              // Still within the grace period: drain, quit, and wait no later than its end (the forced
              // phase keeps its whole killTimeout, so the stop's bound is unchanged).
              const left = (): number => Math.max(1, graceDeadline - this.clock.nowMono());
              await Promise.race([this.pumps.get(vm.stateDir)?.pump?.drainNow(), this.clock.sleep(left())]);
              await this.tryExecute(client, 'quit', undefined, left(), uid);
              if (await this.waitGone(vm, graceDeadline)) return result('graceful');
              log?.warn({ graceMs: opts.graceMs }, 'guest powered off but QEMU did not quit within the grace period; forcing');
            } else {
              log?.warn({ graceMs: opts.graceMs }, 'guest did not power off in time; forcing');
            }
          }
        }
      }

      const forcedStart = this.clock.nowMono();
      const killDeadline = forcedStart + opts.killTimeoutMs;
      const quitWaitMs = Math.min(1000, Math.floor(opts.killTimeoutMs / 2));
      // A QMP that did not answer in the graceful phase (QEMU hung) is not tried again: SIGKILL.
      if (!qmpUnreachable && (!qmp || qmp.isClosed)) {
        await qmp?.close();
        qmp = await this.tryQmp(paths.qmpSocket, Math.min(this.qmpConnectTimeoutMs, quitWaitMs), uid);
      }
      if (qmp && (await this.owner.stillAlive(vm))) {
        const left = forcedStart + quitWaitMs - this.clock.nowMono();
        // QEMU may close the socket before the return arrives: the /proc poll is the authority.
        await this.tryExecute(qmp, 'quit', undefined, Math.max(1, left), uid);
        lastAction = 'quit';
        if (await this.waitGone(vm, forcedStart + quitWaitMs)) return result('forced-quit');
      }

      // The process was fully verified at the start of this stop and is followed by (pid, start
      // time) since: the same process, even if QEMU already removed its pid file on its way out.
      if (!(await this.owner.stillAlive(vm))) {
        return result(lastAction === 'quit' ? 'forced-quit' : lastAction === 'graceful' ? 'graceful' : 'already-stopped');
      }
      try {
        process.kill(pid, 'SIGKILL');
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ESRCH') {
          throw new TetherError('VMM_ERROR', `stopping VM ${uid}: SIGKILL to ${pid} failed: ${messageOf(err)}`, { cause: err, details: { uid, pid } });
        }
      }
      if (await this.waitGone(vm, killDeadline)) return result('forced-kill');
      throw new TetherError('TIMEOUT', `stopping VM ${uid}: pid ${pid} still alive ${opts.killTimeoutMs} ms after the forced stop began`, {
        retryable: true,
        details: { uid, pid, killTimeoutMs: opts.killTimeoutMs },
      });
    } finally {
      // Only a stop that failed leaves the VM running: its power-off exits QEMU again.
      if (holdShutdown && qmp && !qmp.isClosed && (await this.owner.stillAlive(vm))) await this.tryExecute(qmp, 'set-action', { shutdown: 'poweroff' }, 500, uid);
      await qmp?.close();
      await this.tidyCgroup();
    }
  }

  /** Removes this host's cgroup when no process is left in it (the kernel refuses otherwise). */
  private async tidyCgroup(): Promise<void> {
    if (this.hostId === undefined || !this.cgroupRoot) return;
    const dir = await this.vmCgroupDir(this.hostId);
    if (dir !== undefined) await removeEmptyCgroup(dir);
  }

  /**
   * Every VM process of `hostId` whose pid file lies under this agent's state root and passes the
   * ownership check (process-owner.ts): a QEMU of another agent with the same host id (another
   * state dir) is never listed. Processes that vanish during the scan are skipped.
   */
  async listOwned(hostId: string): Promise<{ uid: string; pid: number; stateDir?: string }[]> {
    return (await this.owner.listOwned(hostId)).map((vm) => ({ uid: vm.uid, pid: vm.pid, stateDir: vm.stateDir }));
  }
}
