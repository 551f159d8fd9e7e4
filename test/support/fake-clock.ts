import type { Clock, TimerHandle } from '../../src/ports/clock.js';

interface Timer {
  id: number;
  at: number;
  fn: () => void;
}

/** Deterministic clock: time moves only when the test calls `advance`. */
export class FakeClock implements Clock {
  private mono = 0;
  private wall = 1_700_000_000_000;
  private timers: Timer[] = [];
  private nextId = 1;

  now(): number {
    return this.wall + this.mono;
  }
  nowMono(): number {
    return this.mono;
  }
  setTimer(ms: number, fn: () => void): TimerHandle {
    const t = { id: this.nextId++, at: this.mono + Math.max(0, ms), fn };
    this.timers.push(t);
    return t;
  }
  clearTimer(handle: TimerHandle): void {
    this.timers = this.timers.filter((t) => t !== handle);
  }
  sleep(ms: number): Promise<void> {
    return new Promise((resolve) => this.setTimer(ms, resolve));
  }
  /** Moves time forward, firing due timers in order (and awaiting microtasks between them). */
  async advance(ms: number): Promise<void> {
    const end = this.mono + ms;
    for (;;) {
      await flush();
      const due = this.timers.filter((t) => t.at <= end).sort((a, b) => a.at - b.at || a.id - b.id)[0];
      if (!due) break;
      this.timers = this.timers.filter((t) => t !== due);
      this.mono = Math.max(this.mono, due.at);
      due.fn();
    }
    this.mono = end;
    await flush();
  }
  /** Number of pending timers. */
  pending(): number {
    return this.timers.length;
  }
}

/** Lets every pending promise chain run (setImmediate drains the microtask queue), without moving time. */
async function flush(): Promise<void> {
  for (let i = 0; i < 5; i++) await new Promise<void>((r) => setImmediate(r));
}
