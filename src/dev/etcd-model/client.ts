/**
 * A `Kv` client of the etcd model: each call travels through a {@link ModelTransport}, is applied by
 * the model when it arrives, and its answer travels back. Errors follow the port's failure contract
 * (src/ports/kv.ts): the model's own refusals (FAILED_PRECONDITION, COMPACTED) pass through; the
 * transport adds UNAVAILABLE (not applied) and TIMEOUT (maybe applied); no quorum in `hang` mode
 * is a TIMEOUT at the call's deadline on the model's clock; a range or txn reply over the client's
 * receive limit fails RESOURCE_EXHAUSTED like grpc-js (see `received`).
 */
import { TetherError } from '../../domain/errors.js';
import { ETCD_CLIENT_MAX_RECV_BYTES, estimateRangeReplyBytes } from '../../domain/kv-read-limits.js';
import type { Subscription } from '../../ports/controller-store.js';
import type {
  Kv,
  KvEntry,
  KvHeader,
  KvLeaseId,
  KvRangeRequest,
  KvRangeResponse,
  KvStatus,
  KvTxnRequest,
  KvTxnResponse,
  KvWatchHandlers,
  KvWatchRequest,
} from '../../ports/kv.js';
import type { EtcdModel } from './model.js';
import type { ModelTransport } from './transport.js';

/** Thrown inside a request's `apply` while there is no quorum in `hang` mode; the client turns it into a TIMEOUT at the deadline. */
export class NoQuorumSignal extends Error {
  constructor(readonly what: string) {
    super(`${what}: etcd model has no quorum`);
    this.name = 'NoQuorumSignal';
  }
}

/** See the module doc. Invariant: after {@link close} resolves, no call is sent and no watch callback runs. */
export class ModelKv implements Kv {
  private closed = false;
  private readonly watchIds = new Set<number>();

  constructor(
    private readonly model: EtcdModel,
    /** The client's name, as the transport sees it. */
    readonly name: string,
    /** The member this client is connected to (serves its serializable reads, names its headers). */
    readonly member: string,
    private readonly transport: ModelTransport,
    /** The client's gRPC receive limit in bytes (see {@link received}). */
    readonly maxRecvBytes: number = ETCD_CLIENT_MAX_RECV_BYTES,
  ) {}

  async range(req: KvRangeRequest, deadlineMs: number): Promise<KvRangeResponse> {
    const res = await this.call('range', deadlineMs, () => this.model.range(req, this.member));
    this.received(`range ${req.key}${req.prefix ? '*' : ''}`, res.kvs);
    return res;
  }

  async txn(req: KvTxnRequest, deadlineMs: number): Promise<KvTxnResponse> {
    const res = await this.call('txn', deadlineMs, () => this.model.txn(req, this.member));
    this.received('txn', res.responses.flatMap((r) => (r.op === 'range' ? r.kvs : [])));
    return res;
  }

  leaseGrant(ttlMs: number, deadlineMs: number): Promise<{ readonly header: KvHeader; readonly id: KvLeaseId; readonly ttlMs: number }> {
    return this.call('leaseGrant', deadlineMs, () => this.model.leaseGrant(ttlMs, this.member));
  }

  leaseKeepAlive(id: KvLeaseId, deadlineMs: number): Promise<{ readonly header: KvHeader; readonly ttlMs: number }> {
    return this.call('leaseKeepAlive', deadlineMs, () => this.model.leaseKeepAlive(id, this.member));
  }

  leaseRevoke(id: KvLeaseId, deadlineMs: number): Promise<{ readonly header: KvHeader }> {
    return this.call('leaseRevoke', deadlineMs, () => this.model.leaseRevoke(id, this.member));
  }

  leaseTimeToLive(id: KvLeaseId, deadlineMs: number): Promise<{ readonly header: KvHeader; readonly remainingMs: number; readonly grantedMs: number } | undefined> {
    return this.call('leaseTimeToLive', deadlineMs, () => this.model.leaseTimeToLive(id, this.member));
  }

  status(deadlineMs: number): Promise<KvStatus> {
    return this.call('status', deadlineMs, () => this.model.status(this.member));
  }

  /**
   * Starts a watch. Its first batch is handed to the transport only once the returned promise has
   * settled, so a caller that awaits `watch()` holds its subscription before any callback runs (as
   * with etcd, whose `created` answer precedes the events).
   */
  watch(req: KvWatchRequest, handlers: KvWatchHandlers, deadlineMs: number): Promise<Subscription> {
    let id = 0;
    const out = this.createWatch(req, handlers, deadlineMs).then((w) => {
      id = w.id;
      return w.sub;
    });
    // Registered before the caller's own reaction to `out`: the first delivery is queued after it.
    out.then(
      () => this.model.startWatch(id),
      () => undefined,
    );
    return out;
  }

  private async createWatch(req: KvWatchRequest, handlers: KvWatchHandlers, deadlineMs: number): Promise<{ id: number; sub: Subscription }> {
    let opened: number | undefined;
    try {
      await this.call('watch', deadlineMs, () => {
        opened = this.model.openWatch(this.name, this.member, this.transport, req, handlers);
      });
    } catch (err) {
      // Created but the answer was lost (or the client closed meanwhile): the client never saw it.
      if (opened !== undefined) this.model.closeWatch(opened);
      throw err;
    }
    const id = opened!;
    if (this.closed) {
      this.model.closeWatch(id);
      throw this.closedError('watch');
    }
    this.watchIds.add(id);
    return {
      id,
      sub: {
        close: async () => {
          this.watchIds.delete(id);
          this.model.closeWatch(id);
        },
      },
    };
  }

  async close(): Promise<void> {
    this.closed = true;
    for (const id of this.watchIds) this.model.closeWatch(id);
    this.watchIds.clear();
  }

  /**
   * What grpc-js does with a reply over the client's receive limit: the call fails with
   * RESOURCE_EXHAUSTED after etcd served it (a txn's writes are applied), as EtcdKv reports it
   * (`details.reason = 'reply-too-large'`). The size is {@link estimateRangeReplyBytes}, never below
   * the real protobuf size, so the model refuses at least what the real client refuses.
   */
  private received(what: string, kvs: readonly KvEntry[]): void {
    if (kvs.length === 0) return;
    const bytes = estimateRangeReplyBytes(kvs);
    if (bytes <= this.maxRecvBytes) return;
    throw new TetherError('RESOURCE_EXHAUSTED', `${what}: reply larger than the client's receive limit (${bytes} bytes, limit ${this.maxRecvBytes}) (etcd model)`, {
      retryable: false,
      details: { reason: 'reply-too-large', bytes, limit: this.maxRecvBytes },
    });
  }

  private closedError(what: string): TetherError {
    return new TetherError('UNAVAILABLE', `${what}: etcd model client ${this.name} is closed`, { retryable: true });
  }

  private async call<T>(what: string, deadlineMs: number, apply: () => T): Promise<T> {
    if (this.closed) throw this.closedError(what);
    const sentAt = this.model.clock.nowMono();
    try {
      return await this.transport.request(
        this.name,
        what,
        () => {
          this.model.admit(what);
          return apply();
        },
        deadlineMs,
      );
    } catch (err) {
      if (!(err instanceof NoQuorumSignal)) throw err;
      await this.model.clock.sleep(Math.max(0, sentAt + deadlineMs - this.model.clock.nowMono()));
      throw new TetherError('TIMEOUT', `${what}: no answer within ${deadlineMs}ms (etcd model: no quorum)`, { retryable: true, cause: err });
    }
  }
}
