import { spawn } from 'node:child_process';
import { access, mkdir, mkdtemp, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { constants as fsConstants } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import type { Clock } from '../../ports/clock.js';
import type { Logger } from '../../ports/logger.js';
import { SystemClock } from '../clock/system-clock.js';
import type { Accel } from './qemu-args.js';
import { READY_MARKER } from './serial-log.js';

/** Default QEMU binary. */
export const DEFAULT_QEMU_BINARY = 'qemu-system-x86_64';

/** Value the probe firmware writes to the isa-debug-exit port; QEMU then exits with (v << 1) | 1. */
const PROBE_EXIT_VALUE = 0x2a;
/** Exit status of QEMU when the probe firmware ran to its end. */
export const PROBE_EXIT_STATUS = (PROBE_EXIT_VALUE << 1) | 1;

/**
 * A 64 KiB firmware image whose reset vector (last 16 bytes, executed in real mode at
 * 0xFFFFFFF0) does `mov al, 0x2a; out 0xf4, al; hlt; jmp $-1`: with `-device isa-debug-exit`
 * QEMU exits with status 85. Running it proves the accelerator executes guest instructions,
 * which the mere presence of /dev/kvm does not.
 */
export function probeFirmware(): Buffer {
  const img = Buffer.alloc(64 * 1024);
  Buffer.from([0xb0, PROBE_EXIT_VALUE, 0xe6, 0xf4, 0xf4, 0xeb, 0xfd]).copy(img, 0xfff0);
  return img;
}

/** Outcome of one probe run. */
export interface ProbeRun {
  readonly ok: boolean;
  /** What happened, for logs: exit status, timeout, stderr excerpt. */
  readonly detail: string;
  readonly tookMs: number;
}

interface RunUntilOptions {
  readonly binary: string;
  readonly args: readonly string[];
  readonly clock: Clock;
  readonly timeoutMs: number;
  /** Resolve ok as soon as stdout contains this text (then kill the child). */
  readonly stdoutMarker?: string;
  /** Resolve ok when the child exits with this status. */
  readonly okStatus?: number;
}

/** Runs a short-lived QEMU as our own child; kills it (by its handle, never by a pid) when done. */
function runUntil(o: RunUntilOptions): Promise<ProbeRun> {
  const t0 = o.clock.nowMono();
  return new Promise((resolve) => {
    let settled = false;
    let stdout = '';
    let stderr = '';
    const child = spawn(o.binary, [...o.args], { stdio: ['ignore', 'pipe', 'pipe'] });
    const finish = (ok: boolean, detail: string): void => {
      if (settled) return;
      settled = true;
      o.clock.clearTimer(timer);
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      resolve({ ok, detail, tookMs: Math.round(o.clock.nowMono() - t0) });
    };
    const timer = o.clock.setTimer(o.timeoutMs, () => finish(false, `no result within ${o.timeoutMs} ms`));
    child.stdout.on('data', (c: Buffer) => {
      stdout += c.toString('latin1');
      if (o.stdoutMarker !== undefined && stdout.includes(o.stdoutMarker)) finish(true, 'marker seen');
      if (stdout.length > 1 << 20) stdout = stdout.slice(-4096);
    });
    child.stderr.on('data', (c: Buffer) => {
      if (stderr.length < 8192) stderr += c.toString('utf8');
    });
    child.on('error', (err) => finish(false, `cannot run ${o.binary}: ${err.message}`));
    child.on('exit', (code, signal) => {
      const why = `exited with ${code ?? signal}${stderr.trim() ? `: ${stderr.trim().slice(0, 500)}` : ''}`;
      finish(o.okStatus !== undefined && code === o.okStatus, why);
    });
  });
}

/**
 * Runs the probe firmware ({@link probeFirmware}) on a `microvm` with `accel`. ok when QEMU
 * exits with {@link PROBE_EXIT_STATUS} within `timeoutMs`.
 */
export async function firmwareProbe(binary: string, accel: Accel, clock: Clock, timeoutMs: number): Promise<ProbeRun> {
  const dir = await mkdtemp(join(tmpdir(), 'tether-accel-probe-'));
  try {
    const fw = join(dir, 'probe.bin');
    await writeFile(fw, probeFirmware());
    return await runUntil({
      binary,
      args: [
        '-M', 'microvm,x-option-roms=off', '-accel', accel, '-m', '16',
        '-nodefaults', '-no-user-config', '-display', 'none',
        '-bios', fw, '-device', 'isa-debug-exit,iobase=0xf4,iosize=4',
      ],
      clock,
      timeoutMs,
      okStatus: PROBE_EXIT_STATUS,
    });
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/** A guest to boot in {@link guestBootProbe}. */
export interface ProbeGuest {
  readonly kernelPath: string;
  readonly initrdPath?: string;
  /** Kernel command line; `console=ttyS0` is required for the marker to reach stdout. */
  readonly kernelCmdline: string;
  /** Default {@link READY_MARKER}. */
  readonly readyMarker?: string;
  /** Default 96. */
  readonly memoryMb?: number;
}

/** Boots `guest` with `accel` (serial on stdout); ok when the ready marker appears within `timeoutMs`. */
export function guestBootProbe(binary: string, accel: Accel, guest: ProbeGuest, clock: Clock, timeoutMs: number): Promise<ProbeRun> {
  const args = [
    '-M', 'microvm,x-option-roms=off,isa-serial=on,rtc=on',
    ...(accel === 'kvm' ? ['-accel', 'kvm', '-cpu', 'host'] : ['-accel', 'tcg,tb-size=64']),
    '-m', String(guest.memoryMb ?? 96), '-smp', '1',
    '-nodefaults', '-no-user-config', '-nographic', '-no-reboot',
    '-serial', 'stdio', '-kernel', guest.kernelPath,
    ...(guest.initrdPath ? ['-initrd', guest.initrdPath] : []),
    '-append', guest.kernelCmdline, '-device', 'i8042',
  ];
  return runUntil({ binary, args, clock, timeoutMs, stdoutMarker: guest.readyMarker ?? READY_MARKER });
}

/** Options of {@link probeAccel}. */
export interface AccelProbeOptions {
  /** Default {@link DEFAULT_QEMU_BINARY}. */
  readonly qemuBinary?: string;
  /** Default: the system clock. */
  readonly clock?: Clock;
  /** Default `/dev/kvm`. */
  readonly kvmDevice?: string;
  /** Deadline of each probe run, ms. Default 5000 (firmware), 15000 (guest boot). */
  readonly timeoutMs?: number;
  /**
   * When given, KVM must also boot this guest to its ready marker: the strongest check (a
   * nested or software KVM may run real-mode firmware yet fail a real kernel).
   */
  readonly guest?: ProbeGuest;
  /**
   * A file that keeps the verdict for this boot (keyed by boot id, binary, device and guest kernel),
   * so that only the first process after a boot pays for the probe. Unreadable: probed again.
   */
  readonly cacheFile?: string;
  readonly logger?: Logger;
}

/** Result of {@link probeAccelDetailed}. */
export interface AccelProbeResult {
  readonly accel: Accel;
  /** Why: which check failed, or that all passed. */
  readonly reason: string;
  readonly tookMs: number;
}

/**
 * Decides the accelerator by trying it. Invariant: 'kvm' only when the KVM device is
 * read/writeable AND QEMU ran guest code with `-accel kvm` (firmware probe, and the guest boot
 * when `guest` is given); anything else gives 'tcg'. Never throws.
 */
export async function probeAccelDetailed(options: AccelProbeOptions = {}): Promise<AccelProbeResult> {
  const clock = options.clock ?? new SystemClock();
  const binary = options.qemuBinary ?? DEFAULT_QEMU_BINARY;
  const device = options.kvmDevice ?? '/dev/kvm';
  const t0 = clock.nowMono();
  const took = (): number => Math.round(clock.nowMono() - t0);
  try {
    await access(device, fsConstants.R_OK | fsConstants.W_OK);
  } catch (err) {
    return { accel: 'tcg', reason: `${device} not usable: ${(err as Error).message}`, tookMs: took() };
  }
  const fw = await firmwareProbe(binary, 'kvm', clock, options.timeoutMs ?? 5000);
  if (!fw.ok) return { accel: 'tcg', reason: `KVM firmware probe failed: ${fw.detail}`, tookMs: took() };
  if (options.guest) {
    const boot = await guestBootProbe(binary, 'kvm', options.guest, clock, options.timeoutMs ?? 15000);
    if (!boot.ok) return { accel: 'tcg', reason: `KVM guest boot probe failed: ${boot.detail}`, tookMs: took() };
    return { accel: 'kvm', reason: `KVM ran the firmware probe (${fw.tookMs} ms) and booted the guest (${boot.tookMs} ms)`, tookMs: took() };
  }
  return { accel: 'kvm', reason: `KVM ran the firmware probe (${fw.tookMs} ms)`, tookMs: took() };
}

const cache = new Map<string, Promise<AccelProbeResult>>();

/**
 * {@link probeAccelDetailed}, cached per (binary, device, guest kernel) for the life of the
 * process: the answer does not change while the agent runs.
 */
export async function probeAccel(options: AccelProbeOptions = {}): Promise<Accel> {
  const key = JSON.stringify([options.qemuBinary ?? DEFAULT_QEMU_BINARY, options.kvmDevice ?? '/dev/kvm', options.guest?.kernelPath ?? '']);
  let p = cache.get(key);
  if (!p) {
    p = (async () => {
      const boot = await readFile('/proc/sys/kernel/random/boot_id', 'utf8').then((b) => b.trim(), () => '');
      const saved = options.cacheFile && boot ? await readSavedProbe(options.cacheFile, key, boot) : undefined;
      if (saved) return saved;
      const r = await probeAccelDetailed(options);
      options.logger?.info({ accel: r.accel, reason: r.reason, tookMs: r.tookMs }, 'accelerator probed');
      if (options.cacheFile && boot) {
        await mkdir(dirname(options.cacheFile), { recursive: true }).catch(() => undefined);
        const tmp = `${options.cacheFile}.${process.pid}.tmp`;
        await writeFile(tmp, JSON.stringify({ key, boot, result: r }))
          .then(() => rename(tmp, options.cacheFile!))
          .catch((err: unknown) => options.logger?.warn({ err: String(err) }, 'could not keep the accelerator verdict'));
      }
      return r;
    })();
    cache.set(key, p);
  }
  return (await p).accel;
}

async function readSavedProbe(file: string, key: string, boot: string): Promise<AccelProbeResult | undefined> {
  try {
    const v = JSON.parse(await readFile(file, 'utf8')) as { key?: unknown; boot?: unknown; result?: { accel?: unknown; reason?: unknown; tookMs?: unknown } };
    const a = v.result?.accel;
    if (v.key !== key || v.boot !== boot || (a !== 'kvm' && a !== 'tcg')) return undefined;
    return { accel: a, reason: `as probed earlier on this boot: ${String(v.result?.reason)}`, tookMs: 0 };
  } catch {
    return undefined;
  }
}

/** Forgets cached probe results (tests). */
export function clearAccelProbeCache(): void {
  cache.clear();
}
