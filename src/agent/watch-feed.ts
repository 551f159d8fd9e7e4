import { watchRecovery } from '../domain/cluster-vm-sync.js';
import { messageOf } from '../domain/errors.js';
import type { Subscription } from '../ports/controller-store.js';
import type { Logger } from '../ports/logger.js';

/** What a {@link WatchFeed} keeps current: a view listed from the store, then changed by watch deliveries. */
export interface FeedView<E> {
  /** The highest store revision the view holds (undefined: never listed). */
  revision(): number | undefined;
  /** Lists the whole range (deadline `deadlineMs`) and replaces the view with it. */
  relist(deadlineMs: number): Promise<void>;
  /** Opens a watch from `fromRevision` (etcd revision, decimal). */
  watch(fromRevision: string, handlers: { onEvent(e: E): void; onError(err: unknown): void }, deadlineMs: number): Promise<Subscription>;
  /** Applies one delivery of the watch in force. */
  apply(e: E): void;
}

/** How a feed was fed (tests, metrics). */
export interface WatchFeedStats {
  /** Lists (the first, and one after each compaction that outran the watch). */
  lists: number;
  /** Watches opened (the first after each list, and each resume). */
  watches: number;
  /** Watch errors seen. */
  watchErrors: number;
}

/**
 * One list-then-watch feed of a {@link FeedView} (the agent's VM index, its peer list): the view is
 * listed once, then watched from its revision + 1. A watch error resumes from the last revision the
 * view holds; only COMPACTED (that revision is gone) lists again ({@link watchRecovery}), and a list
 * that fails after a compaction keeps it so (the next attempt lists, it does not resume). Attached
 * again after a detachment, the owner calls {@link reattached}: a watch may outlive a partition
 * without an error on its stream, so it is re-opened from the view's revision (a watch, not a list).
 *
 * Invariants: at most one watch is in force; a delivery reaches the view only from the watch in force
 * (one that failed, or was dropped, delivers nothing more); {@link ensure} never runs twice at once
 * and does nothing after {@link close}.
 */
export class WatchFeed<E> {
  private state: 'down' | 'starting' | 'up' = 'down';
  private sub: Subscription | undefined;
  /** The watch in force: `dead` once it failed or was dropped. */
  private current: { dead: boolean } | undefined;
  private lastWatchError: string | undefined;
  private closed = false;
  readonly stats: WatchFeedStats = { lists: 0, watches: 0, watchErrors: 0 };

  /** `what` names the feed in log lines (e.g. "index watch", "peer list: host watch"). */
  constructor(
    private readonly view: FeedView<E>,
    private readonly logger: Logger,
    private readonly what: string,
  ) {}

  /** True while a watch is in force: the view is current up to it. */
  get up(): boolean {
    return this.state === 'up';
  }

  /**
   * Brings the feed up when it is down: lists when the view was never listed or the last watch error
   * was COMPACTED, then watches from the view's revision + 1. A failure leaves it down and is thrown
   * (the owner retries later).
   */
  async ensure(deadlineMs: number): Promise<void> {
    if (this.state !== 'down' || this.closed) return;
    this.state = 'starting';
    try {
      if (watchRecovery(this.view.revision(), this.lastWatchError).kind === 'relist') {
        this.stats.lists++;
        await this.view.relist(deadlineMs);
        if (this.closed) return;
        this.lastWatchError = undefined;
      }
      const w = { dead: false };
      this.current = w;
      this.stats.watches++;
      const sub = await this.view.watch(
        String(this.view.revision()! + 1),
        {
          onEvent: (e) => {
            if (!w.dead && !this.closed) this.view.apply(e);
          },
          onError: (err) => {
            if (w.dead) return;
            w.dead = true;
            this.stats.watchErrors++;
            this.lastWatchError = codeOf(err);
            if (this.current === w) {
              this.current = undefined;
              this.sub = undefined;
              if (this.state === 'up') this.state = 'down';
            }
            this.logger.debug({ err: messageOf(err), code: this.lastWatchError, revision: this.view.revision() }, `${this.what} ended; resuming it (or listing again after a compaction)`);
          },
        },
        deadlineMs,
      );
      if (w.dead || this.closed) {
        w.dead = true;
        void sub.close().catch(() => undefined);
        this.state = 'down';
        return;
      }
      this.sub = sub;
      this.state = 'up';
    } catch (err) {
      // A failed list after a compaction must not turn the next attempt into a resume.
      if (this.lastWatchError !== 'COMPACTED') this.lastWatchError = codeOf(err);
      this.state = 'down';
      throw err;
    } finally {
      if (this.closed) this.state = 'down';
    }
  }

  /** Attached again: a watch in force is dropped, to be re-opened from the view's revision by the next {@link ensure}. */
  async reattached(): Promise<void> {
    if (this.state !== 'up') return;
    this.lastWatchError = undefined;
    await this.drop();
  }

  /** Drops the watch for good. Idempotent. */
  async close(): Promise<void> {
    this.closed = true;
    await this.drop();
  }

  private async drop(): Promise<void> {
    const sub = this.sub;
    if (this.current) this.current.dead = true;
    this.current = undefined;
    this.sub = undefined;
    if (this.state === 'up') this.state = 'down';
    await sub?.close().catch(() => undefined);
  }
}

/** The stable code of an error, if it has one. */
function codeOf(err: unknown): string | undefined {
  const code = (err as { code?: unknown } | undefined)?.code;
  return typeof code === 'string' ? code : undefined;
}
