/**
 * The simulator's one event queue: every timer of every simulated process and every message
 * delivery is an entry ordered by (sim time, sequence number), run one at a time.
 *
 * Invariants:
 * - entries run in (at, seq) order; `seq` grows with every entry scheduled, so two entries at one
 *   time run in the order they were scheduled (no tie depends on anything but the run itself);
 * - after each entry the microtask queue is drained completely before the next entry runs (see
 *   {@link drainMicrotasks}), so every promise chain the entry started settles, or waits on a later
 *   entry, before anything else happens: the interleaving is a function of the seed alone;
 * - an entry owned by a dead {@link SimProcess} never runs; one owned by a hung process is parked
 *   and re-queued, in its original order, when the process resumes.
 * Nothing here reads the system clock; sim time is a number of milliseconds from 0.
 */
import { createHash, type Hash } from 'node:crypto';

/** One queued entry. */
export interface SimEntry {
  readonly at: number;
  readonly seq: number;
  readonly label: string;
  readonly fn: () => void;
  readonly owner?: SimProcess;
  cancelled: boolean;
}

/** Whether a process runs, is stopped (SIGSTOP / hung) or is gone. */
export type ProcessState = 'running' | 'hung' | 'dead';

/**
 * One simulated process (an agent, a guardian, a controller replica, an operator): the owner of
 * timers and deliveries. A crash makes it `dead` for good (a restart is a new process); a hang
 * parks its entries until {@link SimProcess.resume}.
 */
export class SimProcess {
  state: ProcessState = 'running';
  /** Entries that came due while hung, in due order. */
  readonly parked: SimEntry[] = [];
  constructor(
    /** Unique, deterministic name, e.g. `host-1/agent#2`. */
    readonly name: string,
    private readonly sched: Scheduler,
  ) {}
  /** Crash: nothing of this process ever runs again. */
  kill(): void {
    this.state = 'dead';
    this.parked.length = 0;
  }
  /** SIGSTOP. */
  hang(): void {
    if (this.state === 'running') this.state = 'hung';
  }
  /** SIGCONT: every parked entry runs now, in the order it came due. */
  resume(): void {
    if (this.state !== 'hung') return;
    this.state = 'running';
    const parked = this.parked.splice(0);
    for (const e of parked) if (!e.cancelled) this.sched.at(this.sched.now, e.label, e.fn, this);
  }
  get alive(): boolean {
    return this.state !== 'dead';
  }
}

/**
 * Lets every pending promise chain run to its next wait on a scheduler entry. Node runs the whole
 * microtask queue (including microtasks queued by microtasks) before the check phase where
 * `setImmediate` callbacks run, and the simulation does no real I/O, so one turn suffices.
 */
export function drainMicrotasks(): Promise<void> {
  return new Promise<void>((resolve) => setImmediate(resolve));
}

/** The trace of one run: every entry and fact as one line, folded into a hash (optionally kept). */
export class Trace {
  private readonly h: Hash = createHash('sha256');
  private digest: string | undefined;
  private count = 0;
  readonly lines: string[] | undefined;
  constructor(keep: boolean) {
    this.lines = keep ? [] : undefined;
  }
  add(at: number, text: string): void {
    const line = `${at.toFixed(3)} ${text}`;
    this.h.update(line);
    this.h.update('\n');
    this.count++;
    this.lines?.push(line);
  }
  /** sha256 of every line so far (first 16 hex digits); read it once, at the end of the run. */
  get hash(): string {
    this.digest ??= this.h.digest('hex').slice(0, 16);
    return this.digest;
  }
  get length(): number {
    return this.count;
  }
}

/** The event queue and sim time. */
export class Scheduler {
  private heap: SimEntry[] = [];
  private seq = 0;
  /** Sim time of the entry running now (ms). */
  now = 0;
  /** Entries run so far. */
  steps = 0;

  constructor(readonly trace: Trace) {}

  /** Queues `fn` at sim time `at` (not before now). */
  at(at: number, label: string, fn: () => void, owner?: SimProcess): SimEntry {
    const e: SimEntry = { at: Math.max(at, this.now), seq: this.seq++, label, fn, cancelled: false, ...(owner ? { owner } : {}) };
    this.push(e);
    return e;
  }

  /** Queues `fn` `ms` from now. */
  after(ms: number, label: string, fn: () => void, owner?: SimProcess): SimEntry {
    return this.at(this.now + Math.max(0, ms), label, fn, owner);
  }

  cancel(e: SimEntry): void {
    e.cancelled = true;
  }

  /** Pending (not cancelled) entries. */
  pending(): number {
    return this.heap.filter((e) => !e.cancelled).length;
  }

  /** Time of the next live entry, or undefined. */
  peekTime(): number | undefined {
    while (this.heap.length > 0 && this.heap[0]!.cancelled) this.pop();
    return this.heap[0]?.at;
  }

  /**
   * Runs entries up to and including sim time `until`, draining microtasks after each; `afterEach`
   * runs after every entry that ran (the invariant checks); when it returns true the run stops
   * there (time stays at that entry). Otherwise time ends at `until`.
   */
  async runUntil(until: number, afterEach?: () => boolean | void): Promise<void> {
    await drainMicrotasks();
    for (;;) {
      const t = this.peekTime();
      if (t === undefined || t > until) break;
      const e = this.pop()!;
      this.now = e.at;
      const o = e.owner;
      if (o && o.state === 'dead') continue;
      if (o && o.state === 'hung') {
        o.parked.push(e);
        continue;
      }
      this.steps++;
      this.trace.add(e.at, e.label);
      e.fn();
      await drainMicrotasks();
      if (afterEach?.() === true) return;
    }
    this.now = Math.max(this.now, until);
  }

  private push(e: SimEntry): void {
    const h = this.heap;
    h.push(e);
    let i = h.length - 1;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (!less(h[i]!, h[p]!)) break;
      [h[i], h[p]] = [h[p]!, h[i]!];
      i = p;
    }
  }

  private pop(): SimEntry | undefined {
    const h = this.heap;
    if (h.length === 0) return undefined;
    const top = h[0]!;
    const last = h.pop()!;
    if (h.length > 0) {
      h[0] = last;
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        const r = l + 1;
        let m = i;
        if (l < h.length && less(h[l]!, h[m]!)) m = l;
        if (r < h.length && less(h[r]!, h[m]!)) m = r;
        if (m === i) break;
        [h[i], h[m]] = [h[m]!, h[i]!];
        i = m;
      }
    }
    return top;
  }
}

function less(a: SimEntry, b: SimEntry): boolean {
  return a.at < b.at || (a.at === b.at && a.seq < b.seq);
}
