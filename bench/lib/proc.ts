/**
 * CPU and memory of other processes from /proc, and percentiles of samples: what the
 * controller-scale scenario reports for the controller child and the etcd members.
 */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { rssOf } from './host.js';

/** Clock ticks per second of utime/stime in /proc/<pid>/stat (`getconf CLK_TCK`, 100 on Linux). */
export const CLK_TCK: number = (() => {
  try {
    const n = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim());
    return Number.isFinite(n) && n > 0 ? n : 100;
  } catch {
    return 100;
  }
})();

/** utime + stime of `pid` in ms (granularity 1000 / CLK_TCK), or undefined when it is gone. */
export function cpuMsOf(pid: number): number | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // Fields after the command name (which may hold spaces): state is field 3, utime 14, stime 15.
    const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return ((Number(rest[11]) + Number(rest[12])) * 1000) / CLK_TCK;
  } catch {
    return undefined;
  }
}

/**
 * Time the process's main thread spent runnable but waiting for a CPU (ms, from /proc/<pid>/schedstat,
 * second field, ns), or undefined. For Node that is the JS thread: its wait is latency added by CPU
 * contention on this machine, not by the process itself.
 */
export function runqWaitMsOf(pid: number): number | undefined {
  try {
    const f = readFileSync(`/proc/${pid}/schedstat`, 'utf8').trim().split(/\s+/);
    const ns = Number(f[1]);
    return Number.isFinite(ns) ? ns / 1e6 : undefined;
  } catch {
    return undefined;
  }
}

/** CPU and memory of one process over a window. */
export interface ProcUsage {
  readonly pid: number;
  /** CPU time used in the window (utime + stime), ms. */
  readonly cpuMs: number;
  /** cpuMs / window length; 100 % = one core. */
  readonly cpuPct: number;
  /** Main thread runnable but not running (waiting for a CPU) in the window, ms. */
  readonly runqWaitMs?: number;
  /** VmRSS at the end of the window, MiB. */
  readonly rssMiB: number;
  /** Largest VmRSS seen by the sampler during the window, MiB. */
  readonly rssMaxMiB: number;
  /** VmHWM (peak RSS since the process started), MiB. */
  readonly hwmMiB: number;
}

const MiB = (kib: number) => Math.round((kib / 1024) * 10) / 10;

/**
 * Measures named processes between {@link start} and {@link stop}: CPU time from /proc/<pid>/stat and
 * RSS from /proc/<pid>/status, the RSS also sampled every `everyMs` for its maximum.
 */
export class ProcWindow {
  private readonly cpu0 = new Map<string, number>();
  private readonly wait0 = new Map<string, number>();
  private readonly rssMax = new Map<string, number>();
  private t0 = 0;
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly pids: ReadonlyMap<string, number>,
    private readonly everyMs = 250,
  ) {}

  start(): this {
    this.t0 = performance.now();
    for (const [name, pid] of this.pids) {
      const c = cpuMsOf(pid);
      if (c !== undefined) this.cpu0.set(name, c);
      const w = runqWaitMsOf(pid);
      if (w !== undefined) this.wait0.set(name, w);
    }
    this.sample();
    this.timer = setInterval(() => this.sample(), this.everyMs).unref();
    return this;
  }

  private sample(): void {
    for (const [name, pid] of this.pids) {
      try {
        const { rssKiB } = rssOf(pid);
        if (Number.isFinite(rssKiB)) this.rssMax.set(name, Math.max(this.rssMax.get(name) ?? 0, rssKiB));
      } catch {
        /* gone */
      }
    }
  }

  /** Ends the window; usage per name (processes that vanished are left out), and the window length. */
  stop(): { windowMs: number; usage: Record<string, ProcUsage> } {
    if (this.timer) clearInterval(this.timer);
    this.sample();
    const windowMs = performance.now() - this.t0;
    const usage: Record<string, ProcUsage> = {};
    for (const [name, pid] of this.pids) {
      const c0 = this.cpu0.get(name);
      const c1 = cpuMsOf(pid);
      if (c0 === undefined || c1 === undefined) continue;
      let rss = { rssKiB: NaN, hwmKiB: NaN };
      try {
        rss = rssOf(pid);
      } catch {
        /* gone */
      }
      const cpuMs = c1 - c0;
      const w0 = this.wait0.get(name);
      const w1 = runqWaitMsOf(pid);
      usage[name] = {
        pid,
        cpuMs: Math.round(cpuMs),
        cpuPct: Math.round((cpuMs / windowMs) * 1000) / 10,
        ...(w0 !== undefined && w1 !== undefined ? { runqWaitMs: Math.round(w1 - w0) } : {}),
        rssMiB: MiB(rss.rssKiB),
        rssMaxMiB: MiB(this.rssMax.get(name) ?? rss.rssKiB),
        hwmMiB: MiB(rss.hwmKiB),
      };
    }
    return { windowMs: Math.round(windowMs), usage };
  }
}

/** Nearest-rank percentile (`p` in 0..100) of a non-empty sample. */
export function percentile(values: readonly number[], p: number): number {
  if (values.length === 0) return NaN;
  const s = [...values].sort((a, b) => a - b);
  const rank = Math.max(1, Math.ceil((p / 100) * s.length));
  return s[Math.min(s.length, rank) - 1]!;
}

/** p50 / p99 / max (and n) of a sample, rounded to `digits` decimals; undefined for an empty one. */
export function pcts(values: readonly number[], digits = 0): { n: number; p50: number; p99: number; max: number } | undefined {
  if (values.length === 0) return undefined;
  const r = (x: number) => Math.round(x * 10 ** digits) / 10 ** digits;
  return { n: values.length, p50: r(percentile(values, 50)), p99: r(percentile(values, 99)), max: r(Math.max(...values)) };
}
