/**
 * How messages travel between simulated processes and the etcd model: per-link seeded latency,
 * partitions (both ways or one way), ambiguous commits, watch notifications delayed in order.
 * Implements the etcd model's `ModelTransport` contract (src/dev/etcd-model): `request` applies a
 * request when it reaches the cluster and carries the result back; `notify` delivers a watch
 * notification.
 *
 * Invariants:
 * - a request whose way to etcd is cut is never applied: it fails with TIMEOUT at its deadline
 *   (a cut cable) or, sometimes, UNAVAILABLE at once (a refused connection) — except a lease
 *   keepalive on a cut that buffers (`cut(node, dir, true)`: TCP keeps the stream's bytes and
 *   retransmits them): it is applied when the way heals, however late (docs/peer-check.md, trap 1),
 *   its caller long since failed with TIMEOUT;
 * - a request applied while the way back is cut (or whose answer arrives after its deadline) fails
 *   with TIMEOUT although it was applied: an ambiguous commit, as with a real etcd;
 * - a caller's promise settles exactly once, in an entry owned by the calling process (a dead
 *   process never sees an answer, a hung one sees it when it resumes);
 * - watch notifications to one (client, watch) arrive in the order they were sent, never dropped:
 *   while the way from etcd to the client is cut they are held and delivered after the heal (the
 *   etcd client resumes its watch streams from the last revision it saw).
 */
import { TetherError } from '../../domain/errors.js';
import type { Prng } from './prng.js';
import type { Scheduler, SimProcess } from './scheduler.js';

/** The etcd model's transport contract (structurally the same as `ModelTransport` in src/dev/etcd-model). */
export interface SimModelTransport {
  request<T>(from: string, what: string, apply: () => T, deadlineMs: number): Promise<T>;
  notify(to: string, watchId: number, deliver: () => void): void;
}

/** The node every client talks to: the etcd cluster (the model is the whole cluster). */
export const ETCD = 'etcd';

/** Which ways of a link are cut. */
export type CutDirection = 'both' | 'to-etcd' | 'from-etcd';

interface ClientInfo {
  readonly proc: SimProcess;
  /** The machine (partition unit) the client runs on. */
  readonly node: string;
}

/**
 * Observers of requests (the invariant checks): `sent` runs when a request leaves its client and
 * returns a context; `applied` runs right after the request was applied, with that context and
 * what `before` returned just before it was applied; `answered` when an answer reaches the client.
 */
export interface NetworkHooks {
  sent?(from: string, what: string): unknown;
  before?(from: string, what: string): unknown;
  applied?(from: string, what: string, sentCtx: unknown, beforeCtx: unknown): void;
  answered?(from: string, what: string, value: unknown): void;
}

/** Network between sim nodes and etcd. */
export class SimNetwork implements SimModelTransport {
  hooks: NetworkHooks = {};
  private readonly clients = new Map<string, ClientInfo>();
  /** Cut ways, as `from>to`. */
  private readonly cuts = new Set<string>();
  private readonly baseLatency = new Map<string, number>();
  private readonly lastWatchDelivery = new Map<string, number>();
  private readonly held = new Map<string, { to: string; watchId: number; deliver: () => void }[]>();
  /** Nodes whose cut way to etcd buffers keepalives (delivered at the heal). */
  private readonly buffering = new Set<string>();
  /** Nodes whose keepalives reach etcd this late (ms), however the link is (`late-keepalives`). */
  private readonly slowKeepalives = new Map<string, number>();
  /** Keepalives held in a buffering cut, per node, in send order. */
  private readonly heldRequests = new Map<string, (() => void)[]>();
  /** Requests sent / applied / never applied / applied but unanswered in time / refused. */
  readonly counts = { sent: 0, applied: 0, lost: 0, ambiguous: 0, refused: 0 };

  constructor(
    private readonly sched: Scheduler,
    private readonly rng: Prng,
  ) {}

  /** Registers a model client name: the process it belongs to and the machine it runs on. */
  register(client: string, proc: SimProcess, node: string): void {
    this.clients.set(client, { proc, node });
  }

  /**
   * Cuts the link between `node` and etcd. `bufferKeepalives`: lease keepalives sent while the way to
   * etcd is cut are held and applied when it heals (a TCP stream's bytes retransmitted after the cut).
   */
  cut(node: string, dir: CutDirection, bufferKeepalives = false): void {
    if (dir !== 'from-etcd') this.cuts.add(`${node}>${ETCD}`);
    if (dir !== 'to-etcd') this.cuts.add(`${ETCD}>${node}`);
    if (bufferKeepalives && dir !== 'from-etcd') this.buffering.add(node);
    this.sched.trace.add(this.sched.now, `net cut ${node} ${dir}${bufferKeepalives ? ' (keepalives buffered)' : ''}`);
  }

  /**
   * `node`'s lease keepalives reach etcd `ms` after they are sent (0: as usual): a congested link or
   * a retransmitted TCP segment; their answers come back after the caller's deadline.
   */
  slowKeepalivesOf(node: string, ms: number): void {
    if (ms > 0) this.slowKeepalives.set(node, ms);
    else this.slowKeepalives.delete(node);
    this.sched.trace.add(this.sched.now, `net keepalives of ${node} ${ms > 0 ? `reach etcd ${Math.round(ms)} ms late` : 'on time'}`);
  }

  /** Heals every cut way of `node`; held watch notifications flow again, in order. */
  heal(node: string): void {
    this.cuts.delete(`${node}>${ETCD}`);
    this.cuts.delete(`${ETCD}>${node}`);
    this.sched.trace.add(this.sched.now, `net heal ${node}`);
    this.buffering.delete(node);
    const requests = this.heldRequests.get(node) ?? [];
    this.heldRequests.delete(node);
    for (const r of requests) r();
    const held = this.held.get(node) ?? [];
    this.held.delete(node);
    for (const h of held) this.schedule(h.to, h.watchId, h.deliver);
  }

  /** Heals everything. */
  healAll(): void {
    this.slowKeepalives.clear();
    const nodes = new Set([...this.cuts].map((c) => c.split('>').find((x) => x !== ETCD)!));
    for (const n of [...nodes].sort()) this.heal(n);
  }

  /** Names of the live processes' clients on `node` (all nodes when absent), in registration order. */
  clientsOn(node?: string): string[] {
    return [...this.clients].filter(([, c]) => (node === undefined || c.node === node) && c.proc.alive).map(([n]) => n);
  }

  isCut(from: string, to: string): boolean {
    return this.cuts.has(`${from}>${to}`);
  }

  /** One way's latency now: the link's base plus seeded jitter, with rare spikes. */
  latency(node: string): number {
    let base = this.baseLatency.get(node);
    if (base === undefined) {
      base = 0.3 + this.rng.float() * 4;
      this.baseLatency.set(node, base);
    }
    const spike = this.rng.chance(0.01) ? this.rng.float() * 400 : 0;
    return base * (0.5 + this.rng.float()) + spike;
  }

  request<T>(from: string, what: string, apply: () => T, deadlineMs: number): Promise<T> {
    const c = this.client(from);
    const node = c.node;
    this.counts.sent++;
    const sentCtx = this.hooks.sent?.(from, what);
    return new Promise<T>((resolve, reject) => {
      let settled = false;
      const deadline = this.sched.after(
        Math.max(0, deadlineMs),
        `deadline ${from} ${what}`,
        () => {
          if (settled) return;
          settled = true;
          reject(new TetherError('TIMEOUT', `${what}: no answer from etcd within ${deadlineMs} ms`, { retryable: true }));
        },
        c.proc,
      );
      const slow = what === 'leaseKeepAlive' ? this.slowKeepalives.get(node) : undefined;
      const deliver = (): void => {
        this.sched.after(slow ?? this.latency(node), `apply ${from} ${what}`, () => {
          this.counts.applied++;
          let ok = true;
          let value: T | undefined;
          let error: unknown;
          const beforeCtx = this.hooks.before?.(from, what);
          try {
            value = apply();
          } catch (err) {
            ok = false;
            error = err;
          }
          this.hooks.applied?.(from, what, sentCtx, beforeCtx);
          if (this.isCut(ETCD, node)) {
            this.counts.ambiguous++;
            return;
          }
          this.sched.after(
            this.latency(node),
            `answer ${from} ${what}`,
            () => {
              if (settled) {
                this.counts.ambiguous++;
                return;
              }
              settled = true;
              this.sched.cancel(deadline);
              if (ok) {
                this.hooks.answered?.(from, what, value);
                resolve(value as T);
              } else reject(error);
            },
            c.proc,
          );
        });
      };
      if (this.isCut(node, ETCD)) {
        if (what === 'leaseKeepAlive' && this.buffering.has(node)) {
          // Held in the stream's TCP buffer: applied when the way heals (the caller times out meanwhile).
          const list = this.heldRequests.get(node) ?? [];
          list.push(deliver);
          this.heldRequests.set(node, list);
          return;
        }
        this.counts.lost++;
        if (this.rng.chance(0.2)) {
          this.counts.refused++;
          this.sched.after(
            this.latency(node),
            `refused ${from} ${what}`,
            () => {
              if (settled) return;
              settled = true;
              this.sched.cancel(deadline);
              reject(new TetherError('UNAVAILABLE', `${what}: etcd unreachable (connection refused)`, { retryable: true }));
            },
            c.proc,
          );
        }
        return;
      }
      deliver();
    });
  }

  notify(to: string, watchId: number, deliver: () => void): void {
    const c = this.client(to);
    if (this.isCut(ETCD, c.node)) {
      const list = this.held.get(c.node) ?? [];
      list.push({ to, watchId, deliver });
      this.held.set(c.node, list);
      return;
    }
    this.schedule(to, watchId, deliver);
  }

  private schedule(to: string, watchId: number, deliver: () => void): void {
    const c = this.client(to);
    const key = `${to}#${watchId}`;
    const at = Math.max(this.sched.now + this.latency(c.node), this.lastWatchDelivery.get(key) ?? 0);
    this.lastWatchDelivery.set(key, at);
    this.sched.at(at, `watch ${to} #${watchId}`, deliver, c.proc);
  }

  private client(name: string): ClientInfo {
    const c = this.clients.get(name);
    if (!c) throw new Error(`SimNetwork: unknown client ${name} (register it first)`);
    return c;
  }
}
