import { closeSync, fsyncSync, openSync, readFileSync, renameSync, rmSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { watchRecovery } from '../../domain/cluster-vm-sync.js';
import { messageOf } from '../../domain/errors.js';
import { decodePersistedPool, encodePersistedPool, PeerPool, type PeerEndpoint } from '../../domain/peer-pool.js';
import type { Clock, TimerHandle } from '../../ports/clock.js';
import type { ControllerStore, HostWatchEvent, Subscription } from '../../ports/controller-store.js';
import type { Logger } from '../../ports/logger.js';
import type { PeerDirectory } from '../../ports/peers.js';

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
export interface PeerListStats {
  lists: number;
  watches: number;
  watchErrors: number;
  saves: number;
}

/**
 * The pool peers this agent asks in a peer check (issue 11): hosts whose records are `attached`,
 * `ready` or `detached`, other than itself, with their `peerAddress` (pure part: src/domain/peer-pool.ts).
 *
 * Learned while attached from the controller store: `listHosts` (paged by the store), then
 * `watchHosts` from the listing's revision + 1. A watch error resumes from the last revision seen;
 * only COMPACTED lists again (the rule of the VM index sync, `watchRecovery`). Attached again after a
 * detachment, the watch is re-established from the last revision (a watch may outlive a partition
 * without an error).
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
  private lastWatchError: string | undefined;
  private feed: 'down' | 'starting' | 'up' = 'down';
  private sub: Subscription | undefined;
  private wasAttached = false;
  private lastFailure: string | undefined;
  readonly stats: PeerListStats = { lists: 0, watches: 0, watchErrors: 0, saves: 0 };

  constructor(private readonly o: PeerListOptions) {
    this.file = join(o.stateDir, PEER_LIST_FILE);
    this.pool = new PeerPool(o.hostId, this.load());
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
    const sub = this.sub;
    this.sub = undefined;
    this.feed = 'down';
    await sub?.close().catch(() => undefined);
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
      if (!this.wasAttached && this.feed === 'up') {
        const sub = this.sub;
        this.sub = undefined;
        this.feed = 'down';
        this.lastWatchError = undefined;
        await sub?.close().catch(() => undefined);
      }
      this.wasAttached = true;
      await this.ensureFeed();
      this.lastFailure = undefined;
    } catch (err) {
      const msg = messageOf(err);
      if (msg !== this.lastFailure) this.o.logger.debug({ err: msg }, 'peer list: could not follow the host records; retrying');
      this.lastFailure = msg;
    }
  }

  private async ensureFeed(): Promise<void> {
    if (this.feed !== 'down' || this.stopped) return;
    this.feed = 'starting';
    try {
      const rec = watchRecovery(this.revision, this.lastWatchError);
      if (rec.kind === 'relist') {
        this.stats.lists++;
        const snap = await this.o.store.listHosts(this.o.intervalMs);
        if (this.stopped) return;
        this.revision = Number(snap.revision);
        this.lastWatchError = undefined;
        if (this.pool.reset(snap.hosts)) this.save();
      }
      let failed = false;
      const ref: { sub?: Subscription } = {};
      this.stats.watches++;
      const sub = await this.o.store.watchHosts(
        String(this.revision! + 1),
        {
          onEvent: (e) => {
            if (failed || this.stopped) return;
            this.apply(e);
          },
          onError: (err) => {
            if (failed) return;
            failed = true;
            this.stats.watchErrors++;
            this.lastWatchError = codeOf(err);
            if (ref.sub !== undefined && this.sub === ref.sub) this.sub = undefined;
            if (this.feed === 'up') this.feed = 'down';
            this.o.logger.debug({ err: messageOf(err), code: this.lastWatchError, revision: this.revision }, 'peer list: host watch ended; resuming (or listing again after a compaction)');
          },
        },
        this.o.intervalMs,
      );
      if (failed || this.stopped) {
        void sub.close().catch(() => undefined);
        this.feed = 'down';
        return;
      }
      ref.sub = sub;
      this.sub = sub;
      this.feed = 'up';
    } catch (err) {
      // A failed list after a compaction must not turn the next attempt into a resume.
      if (this.lastWatchError !== 'COMPACTED') this.lastWatchError = codeOf(err);
      this.feed = 'down';
      throw err;
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
      this.stats.saves++;
    } catch (err) {
      this.o.logger.error({ file: this.file, err: messageOf(err) }, 'peer list: could not save the pool (a restart while detached would not know its peers)');
    }
  }
}

/** The stable code of an error, if it has one. */
function codeOf(err: unknown): string | undefined {
  const code = (err as { code?: unknown } | undefined)?.code;
  return typeof code === 'string' ? code : undefined;
}
