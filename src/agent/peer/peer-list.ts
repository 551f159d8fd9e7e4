import { closeSync, fsyncSync, openSync, readFileSync, renameSync, rmSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { messageOf } from '../../domain/errors.js';
import { decodePersistedPool, encodePersistedPool, PeerPool, type PeerEndpoint } from '../../domain/peer-pool.js';
import type { Clock, TimerHandle } from '../../ports/clock.js';
import type { ControllerStore, HostWatchEvent } from '../../ports/controller-store.js';
import type { Logger } from '../../ports/logger.js';
import type { PeerDirectory } from '../../ports/peers.js';
import { WatchFeed, type WatchFeedStats } from '../watch-feed.js';

/** What the peer list needs of the controller store. */
export type PeerListStore = Pick<ControllerStore, 'listHosts' | 'watchHosts'>;

/** File (under the agent's state dir) holding the last known pool. */
export const PEER_LIST_FILE = 'peers.json';

/** Options of {@link PeerList}. */
export interface PeerListOptions {
  readonly hostId: string;
  /** The agent's state dir: the pool is kept in `<stateDir>/peers.json` (0600). */
  readonly stateDir: string;
  readonly store: PeerListStore;
  readonly clock: Clock;
  readonly logger: Logger;
  /** True while the host is attached: the only times the list (re)establishes its feed. */
  readonly attached: () => boolean;
  /** Time between attempts to (re)establish the feed, and each call's deadline (ms). */
  readonly intervalMs: number;
}

/** How the list was fed (tests, metrics). */
export interface PeerListStats extends WatchFeedStats {
  saves: number;
}

/**
 * The pool peers this agent asks in a peer check (issue 11): hosts whose records are `attached`,
 * `ready` or `detached`, other than itself, with their `peerAddress` (pure part: src/domain/peer-pool.ts).
 *
 * Learned while attached from the controller store through a {@link WatchFeed}: `listHosts` (paged
 * by the store), then `watchHosts` from the listing's revision + 1, resumed after errors, listed
 * again only after a compaction, re-opened when attached again.
 *
 * Invariants: every change of the pool is written to `<stateDir>/peers.json` atomically (temp file
 * created 0600, fsync, rename, fsync of the folder) as soon as it is applied; the file is loaded at construction, so an agent restarted while detached knows its peers; a file
 * that is unreadable, malformed or another host's is ignored (warned) and replaced on the next
 * listing; nothing here throws to the caller after construction (failures are logged and retried
 * every `intervalMs`).
 */
export class PeerList implements PeerDirectory {
  private readonly pool: PeerPool;
  private readonly file: string;
  private timer: TimerHandle | undefined;
  private stopped = false;
  private started = false;
  /** Highest store revision applied (undefined: never listed in this process). */
  private revision: number | undefined;
  private readonly feed: WatchFeed<HostWatchEvent>;
  private wasAttached = false;
  private lastFailure: string | undefined;
  private saves = 0;

  constructor(private readonly o: PeerListOptions) {
    this.file = join(o.stateDir, PEER_LIST_FILE);
    this.pool = new PeerPool(o.hostId, this.load());
    this.feed = new WatchFeed<HostWatchEvent>(
      {
        revision: () => this.revision,
        relist: async (deadlineMs) => {
          const snap = await o.store.listHosts(deadlineMs);
          if (this.stopped) return;
          this.revision = Number(snap.revision);
          if (this.pool.reset(snap.hosts)) this.save();
        },
        watch: (from, handlers, deadlineMs) => o.store.watchHosts(from, handlers, deadlineMs),
        apply: (e) => this.apply(e),
      },
      o.logger,
      'peer list: host watch',
    );
  }

  /** How the list was fed so far. */
  get stats(): PeerListStats {
    return { ...this.feed.stats, saves: this.saves };
  }

  /** Pool peers that can be asked (an address known), sorted by host id. */
  peers(): PeerEndpoint[] {
    return this.pool.endpoints();
  }

  /** Every pool peer, self excluded, with or without an address: what a peer check counts as its known pool. */
  peerIds(): string[] {
    return this.pool.peerIds();
  }

  /** The known pool, self included. */
  poolSize(): number {
    return this.pool.poolSize();
  }

  /** Starts following the store (now, then every `intervalMs`). */
  start(): void {
    if (this.started || this.stopped) return;
    this.started = true;
    this.schedule(0);
  }

  /** Stops the timer and the watch. Idempotent. */
  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) this.o.clock.clearTimer(this.timer);
    this.timer = undefined;
    await this.feed.close();
  }

  private schedule(ms: number): void {
    if (this.stopped) return;
    this.timer = this.o.clock.setTimer(ms, () => {
      void this.tick().finally(() => this.schedule(this.o.intervalMs));
    });
  }

  /** One attempt: re-establish after a re-attachment, then bring the feed up if it is down. */
  async tick(): Promise<void> {
    if (this.stopped) return;
    const attached = this.o.attached();
    if (!attached) {
      this.wasAttached = false;
      return;
    }
    try {
      if (!this.wasAttached) await this.feed.reattached();
      this.wasAttached = true;
      await this.feed.ensure(this.o.intervalMs);
      this.lastFailure = undefined;
    } catch (err) {
      const msg = messageOf(err);
      if (msg !== this.lastFailure) this.o.logger.debug({ err: msg }, 'peer list: could not follow the host records; retrying');
      this.lastFailure = msg;
    }
  }

  private apply(e: HostWatchEvent): void {
    const rev = Number(e.revision);
    if (this.revision === undefined || rev > this.revision) this.revision = rev;
    if (e.kind === 'alive' || e.kind === 'alive-deleted') return;
    if (this.pool.apply(e.hostId, e.kind === 'record' ? e.record : undefined)) this.save();
  }

  private load(): ReturnType<PeerPool['list']> {
    let text: string;
    try {
      text = readFileSync(this.file, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') this.o.logger.warn({ file: this.file, err: messageOf(err) }, 'peer list: cannot read the saved pool; starting without it');
      return [];
    }
    const d = decodePersistedPool(text, this.o.hostId);
    if (!d.ok) {
      this.o.logger.warn({ file: this.file, err: d.why }, 'peer list: saved pool unusable; starting without it');
      return [];
    }
    return d.members;
  }

  /** Writes the pool atomically (0600): temp file, fsync, rename, fsync of the folder. */
  private save(): void {
    const tmp = `${this.file}.tmp`;
    try {
      rmSync(tmp, { force: true });
      const fd = openSync(tmp, 'wx', 0o600);
      try {
        writeSync(fd, encodePersistedPool(this.pool));
        fsyncSync(fd);
      } finally {
        closeSync(fd);
      }
      renameSync(tmp, this.file);
      const dfd = openSync(this.o.stateDir, 'r');
      try {
        fsyncSync(dfd);
      } finally {
        closeSync(dfd);
      }
      this.saves++;
    } catch (err) {
      this.o.logger.error({ file: this.file, err: messageOf(err) }, 'peer list: could not save the pool (a restart while detached would not know its peers)');
    }
  }
}

