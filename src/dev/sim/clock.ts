/**
 * Per-machine clocks over sim time, and the {@link Clock} port each simulated process gets.
 *
 * A machine's monotonic clock runs at a constant `rate` (bounded drift, e.g. 1 ± 0.002) from its
 * own origin: `mono = simNow * rate + monoOrigin`; its wall clock is `mono + wallOffset` (so two
 * machines' wall clocks disagree by their offsets and drift apart at their rates). Invariants:
 * `nowMono()` never decreases (sim time never does and rate > 0); a timer of `ms` fires when the
 * machine's monotonic clock has advanced by `ms`, i.e. after `ms / rate` of sim time, as an entry
 * of the one scheduler owned by the process that set it (so it never fires after a crash, and
 * fires late after a hang, like a real SIGSTOP).
 */
import type { Clock, TimerHandle } from '../../ports/clock.js';
import type { Scheduler, SimEntry, SimProcess } from './scheduler.js';

/** One machine's time: offset and rate over sim time. */
export class MachineClock {
  constructor(
    private readonly sched: Scheduler,
    readonly name: string,
    /** Monotonic ms per sim ms (bounded drift, > 0). */
    readonly rate: number,
    /** Monotonic value at sim time 0 (machines booted at different times). */
    readonly monoOrigin: number,
    /** Wall ms = mono + wallOffset. */
    readonly wallOffset: number,
  ) {
    if (!(rate > 0)) throw new Error(`MachineClock ${name}: rate must be > 0`);
  }
  mono(): number {
    return this.sched.now * this.rate + this.monoOrigin;
  }
  wall(): number {
    return this.mono() + this.wallOffset;
  }
  /** Sim time at which this machine's monotonic clock reads `mono`. */
  simAtMono(mono: number): number {
    return (mono - this.monoOrigin) / this.rate;
  }
  /** The Clock port of one process on this machine. */
  forProcess(proc: SimProcess): ProcessClock {
    return new ProcessClock(this.sched, this, proc);
  }
}

/** The {@link Clock} a simulated process sees: its machine's time, timers owned by the process. */
export class ProcessClock implements Clock {
  constructor(
    private readonly sched: Scheduler,
    readonly machine: MachineClock,
    readonly proc: SimProcess,
  ) {}
  now(): number {
    return this.machine.wall();
  }
  nowMono(): number {
    return this.machine.mono();
  }
  setTimer(ms: number, fn: () => void): TimerHandle {
    return this.sched.after(Math.max(0, ms) / this.machine.rate, `timer ${this.proc.name}`, fn, this.proc);
  }
  clearTimer(handle: TimerHandle): void {
    (handle as SimEntry).cancelled = true;
  }
  sleep(ms: number): Promise<void> {
    return new Promise((resolve) => this.setTimer(ms, resolve));
  }
}
