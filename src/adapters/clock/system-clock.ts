import { performance } from 'node:perf_hooks';
import type { Clock, TimerHandle } from '../../ports/clock.js';

/** The real clock: wall time from `Date`, monotonic time from `performance.now()`. */
export class SystemClock implements Clock {
  now(): number {
    return Date.now();
  }
  nowMono(): number {
    return performance.now();
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
