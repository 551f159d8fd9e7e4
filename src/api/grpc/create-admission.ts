/**
 * Admission of `CreateMicroVM` calls, so that a burst of creates cannot starve the agent (and with
 * it the heartbeat):
 *  - at most `maxConcurrentCreates` create calls do their work (validation, image checks, the
 *    cluster txn, the inventory row) at once; up to `createQueueLength` more wait their turn in
 *    arrival order; beyond that a call is refused at once with RESOURCE_EXHAUSTED;
 *  - a call whose turn comes is refused with RESOURCE_EXHAUSTED when `maxStartingVms` VMs of this
 *    host are still starting (phase pending or creating): QEMU boots are what load the host.
 * Refusals are retryable and name the limit and its setting. Invariant: a refused call reaches no
 * service method, so it changes nothing. Concurrent calls may overshoot `maxStartingVms` by at most
 * `maxConcurrentCreates - 1` (each counts before its own record exists).
 */
import { TetherError } from '../../domain/errors.js';

/** The limits; each is a setting of the agent with the same name. */
export interface CreateLimits {
  readonly maxConcurrentCreates: number;
  readonly createQueueLength: number;
  readonly maxStartingVms: number;
}

/** Defaults: 4 at once, 32 waiting, 20 starting (measured: 20 TCG guests booting at once on 2 cores keep the heartbeat). */
export const DEFAULT_CREATE_LIMITS: CreateLimits = { maxConcurrentCreates: 4, createQueueLength: 32, maxStartingVms: 20 };

/** Runs create calls under {@link CreateLimits}. */
export class CreateAdmission {
  private running = 0;
  private readonly waiting: (() => void)[] = [];

  constructor(
    private readonly limits: CreateLimits,
    /** VMs of this host still starting (pending or creating). */
    private readonly startingVms: () => Promise<number>,
  ) {}

  /** Calls running and waiting now. */
  get load(): { running: number; waiting: number } {
    return { running: this.running, waiting: this.waiting.length };
  }

  /**
   * Runs `fn` when admitted (see the module comment). `cancelled` is asked when the call's turn
   * comes: a caller who gave up while waiting is dropped without running `fn`.
   */
  async run<T>(fn: () => Promise<T>, cancelled: () => boolean = () => false): Promise<T> {
    const { maxConcurrentCreates: max, createQueueLength: queue, maxStartingVms } = this.limits;
    if (this.running >= max) {
      if (this.waiting.length >= queue) {
        throw new TetherError(
          'RESOURCE_EXHAUSTED',
          `too many CreateMicroVM calls at once: ${this.running} running and ${this.waiting.length} waiting (maxConcurrentCreates ${max}, createQueueLength ${queue}); retry later`,
          { retryable: true },
        );
      }
      await new Promise<void>((resolve) => this.waiting.push(resolve));
    } else {
      this.running++;
    }
    // The slot is ours now (a finished call hands its slot straight to the next waiter).
    try {
      if (cancelled()) throw new TetherError('UNAVAILABLE', 'the caller cancelled while waiting for its turn', { retryable: true });
      const starting = await this.startingVms();
      if (starting >= maxStartingVms) {
        throw new TetherError(
          'RESOURCE_EXHAUSTED',
          `${starting} microvms are still starting on this host (maxStartingVms ${maxStartingVms}); retry when some are running`,
          { retryable: true },
        );
      }
      return await fn();
    } finally {
      const next = this.waiting.shift();
      if (next) next();
      else this.running--;
    }
  }
}
