import type { Clock, TimerHandle } from '../../ports/clock.js';

/**
 * The real clock: wall time from `Date`; monotonic time from CLOCK_MONOTONIC (`process.hrtime`),
 * whose origin is the boot, not the process: a restarted agent on the same boot can keep
 * deadlines measured by its predecessor (compare boot ids before trusting persisted values).
 */
export class SystemClock implements Clock {
  now(): number {
    return Date.now();
  }
  nowMono(): number {
    return Number(process.hrtime.bigint() / 1000n) / 1000;
  }
  setTimer(ms: number, fn: () => void): TimerHandle {
    return setTimeout(fn, Math.max(0, ms));
  }
  clearTimer(handle: TimerHandle): void {
    clearTimeout(handle as ReturnType<typeof setTimeout>);
  }
  sleep(ms: number): Promise<void> {
    return new Promise((resolve) => setTimeout(resolve, Math.max(0, ms)));
  }
}
