import {
  castGrpcError,
  castGrpcErrorMessage,
  CompareResult,
  CompareTarget,
  EtcdLeaseInvalidError,
  GRPCDeadlineExceededError,
  GRPCInvalidArgumentError,
  GRPCOutOfRangeError,
  GRPCResourceExhastedError,
  type Etcd3,
  type ICompare,
  type IKeyValue,
  type IRequestOp,
  type IResponseHeader,
  type IResponseOp,
  type IWatchResponse,
} from 'etcd3';
import { TetherError, messageOf } from '../../domain/errors.js';
import type { Subscription } from '../../ports/controller-store.js';
import type {
  Kv,
  KvCompare,
  KvEntry,
  KvHeader,
  KvLeaseId,
  KvOp,
  KvOpResult,
  KvRangeRequest,
  KvRangeResponse,
  KvStatus,
  KvTxnRequest,
  KvTxnResponse,
  KvWatchEvent,
  KvWatchHandlers,
  KvWatchRequest,
} from '../../ports/kv.js';
import { asRetryable, deadlineOption, withDeadline } from './deadline.js';
import { createEtcdClient, type EtcdSecurity } from './etcd-client.js';
import { KeepaliveStream, type KeepaliveSlot } from './keepalive-stream.js';

/** Options of {@link EtcdKv}: where etcd is and how to reach it. */
export interface EtcdKvOptions {
  readonly endpoints: readonly string[];
  /** TLS files and etcd user/password (see {@link EtcdSecurity}); files are read at construction. */
  readonly security?: EtcdSecurity;
  /** The client's gRPC receive limit in bytes (default ETCD_CLIENT_MAX_RECV_BYTES, src/domain/kv-read-limits.ts). */
  readonly maxRecvBytes?: number;
}

/** Bytes after every key starting with `prefix` (etcd's `range_end` for a prefix; `\0` for an all-0xff prefix: to the end). */
export function prefixEnd(prefix: Buffer): Buffer {
  const end = Buffer.from(prefix);
  for (let i = end.length - 1; i >= 0; i--) {
    if (end[i]! < 0xff) {
      end[i]! += 1;
      return end.subarray(0, i + 1);
    }
  }
  return Buffer.from([0]);
}

const utf8 = new TextDecoder('utf-8', { fatal: true });

/**
 * A stored value as a string. A value that is not valid UTF-8 is handed over as U+FFFD followed by
 * its lossy decoding: it can never parse as JSON, so the codec refuses it (Tether only writes JSON).
 */
function valueOf(buf: Buffer): string {
  try {
    return utf8.decode(buf);
  } catch {
    return `\uFFFD${buf.toString('utf8')}`;
  }
}

/** A uint64 id as etcd sends it (decimal string) in hex, as etcdctl prints member ids; undefined for 0. */
function hexId(id: string | undefined): string | undefined {
  if (id === undefined || id === '' || id === '0') return undefined;
  try {
    return BigInt(id).toString(16);
  } catch {
    return id;
  }
}

/** etcd3 loads the proto with `enums: String` (`'DELETE'`); a numeric enum (1) is accepted too. */
function isDelete(type: unknown): boolean {
  return type === 1 || String(type).toLowerCase() === 'delete';
}

function headerOf(h: IResponseHeader | undefined | null): KvHeader {
  const memberId = hexId(h?.member_id);
  return { revision: Number(h?.revision ?? 0), raftTerm: Number(h?.raft_term ?? 0), ...(memberId ? { memberId } : {}) };
}

function entryOf(kv: IKeyValue): KvEntry {
  const lease = kv.lease && kv.lease !== '0' ? String(kv.lease) : undefined;
  return {
    key: kv.key.toString('utf8'),
    value: valueOf(kv.value ?? Buffer.alloc(0)),
    createRevision: Number(kv.create_revision),
    modRevision: Number(kv.mod_revision),
    version: Number(kv.version),
    ...(lease ? { lease } : {}),
  };
}

const RESULT = { '=': CompareResult.Equal, '!=': CompareResult.NotEqual, '<': CompareResult.Less, '>': CompareResult.Greater } as const;

function compareOf(c: KvCompare): ICompare {
  const key = Buffer.from(c.key);
  const result = RESULT[c.op];
  switch (c.target) {
    case 'create':
      return { key, result, target: CompareTarget.Create, create_revision: c.value };
    case 'mod':
      return { key, result, target: CompareTarget.Mod, mod_revision: c.value };
    case 'version':
      return { key, result, target: CompareTarget.Version, version: c.value };
    case 'value':
      return { key, result, target: CompareTarget.Value, value: Buffer.from(c.value) };
    case 'lease':
      return { key, result, target: CompareTarget.Lease, lease: c.value };
  }
}

function opOf(o: KvOp): IRequestOp {
  const key = Buffer.from(o.key);
  switch (o.op) {
    case 'put':
      return { request_put: { key, value: Buffer.from(o.value), ...(o.lease !== undefined && o.lease !== '0' ? { lease: o.lease } : {}) } };
    case 'delete':
      return { request_delete_range: { key, ...(o.prefix ? { range_end: prefixEnd(key) } : {}) } };
    case 'range':
      return { request_range: { key, ...(o.prefix ? { range_end: prefixEnd(key) } : {}), ...(o.limit ? { limit: o.limit } : {}) } };
  }
}

function opResultOf(r: IResponseOp): KvOpResult {
  if (r.response_range) return { op: 'range', kvs: r.response_range.kvs.map(entryOf), more: Boolean(r.response_range.more), count: Number(r.response_range.count) };
  if (r.response_delete_range) return { op: 'delete', deleted: Number(r.response_delete_range.deleted) };
  return { op: 'put' };
}

/**
 * An etcd failure as the {@link Kv} failure contract names it:
 * - a missed deadline (ours or gRPC's) is a retryable TIMEOUT: a write may have been applied;
 * - a reply over the client's gRPC receive limit (grpc-js: RESOURCE_EXHAUSTED "Received message
 *   larger than max (N vs L)") is a NON-retryable RESOURCE_EXHAUSTED with `details.reason =
 *   'reply-too-large'`, `bytes` and `limit`: asking again gets the same reply; read fewer keys;
 * - etcd refusing a request as malformed or too big (too many operations in a txn, request too
 *   large, duplicate key in a txn; gRPC InvalidArgument, or ResourceExhausted other than etcd's
 *   "too many requests" / "database space exceeded") is a NON-retryable FAILED_PRECONDITION;
 * - a revision compacted away is COMPACTED (not retryable as is);
 * - refused credentials or keys are UNAUTHENTICATED / PERMISSION_DENIED (see {@link asRetryable});
 * - anything else is a retryable UNAVAILABLE. A TetherError passes through.
 */
export function asKvError(what: string, err: unknown): TetherError {
  if (err instanceof TetherError) return err;
  if (err instanceof GRPCDeadlineExceededError) return new TetherError('TIMEOUT', `${what}: no answer by the deadline (${messageOf(err)})`, { cause: err, retryable: true });
  const tooLarge = /Received message larger than max \((\d+) vs (\d+)\)/.exec(messageOf(err));
  if (tooLarge) {
    return new TetherError('RESOURCE_EXHAUSTED', `${what}: reply larger than the client's receive limit (${tooLarge[1]} bytes, limit ${tooLarge[2]})`, {
      cause: err,
      retryable: false,
      details: { reason: 'reply-too-large', bytes: Number(tooLarge[1]), limit: Number(tooLarge[2]) },
    });
  }
  if (err instanceof GRPCInvalidArgumentError || (err instanceof GRPCResourceExhastedError && !/too many requests|space exceeded/i.test(err.message))) {
    return new TetherError('FAILED_PRECONDITION', `${what}: refused by etcd: ${messageOf(err)}`, { cause: err, retryable: false });
  }
  if (err instanceof GRPCOutOfRangeError && /compacted/i.test(err.message)) {
    return new TetherError('COMPACTED', `${what}: ${messageOf(err)}`, { cause: err, retryable: false });
  }
  return asRetryable(what, err);
}

/** True for a gRPC failure that proves the request never reached a member (no connection to it). */
function neverSent(err: unknown): boolean {
  if (err instanceof TetherError) return false;
  const m = messageOf(err);
  return /\b14 UNAVAILABLE\b|unavailable/i.test(m) && /No connection established|ECONNREFUSED/.test(m);
}

/**
 * {@link Kv} on a real etcd 3.4 (npm etcd3's raw gRPC clients, so every answer carries etcd's own
 * response header: revision, raft term, member id).
 *
 * The client comes from {@link createEtcdClient}: TLS, user/password, etcd3's retry and circuit
 * breaker off (Tether owns every deadline and retry). Every call runs under {@link withDeadline}
 * plus the same gRPC deadline. Each watch is its own gRPC watch stream: etcd3's reconnecting
 * watcher is not used, because a watch that silently resumes can have missed changes; here any
 * error, cancel or end of the stream is reported once through `onError` and ends the watch.
 */
export class EtcdKv implements Kv {
  /** The underlying etcd3 client (tests write hostile values through it directly). */
  readonly client: Etcd3;
  private readonly streams = new Set<{ cancel(): void }>();
  /** The shared keepalive stream (see {@link leaseKeepAlive}); a promise while it opens. */
  private ka: Promise<KeepaliveStream> | undefined;
  private kaOpened = 0;
  /** {@link ka} while it is still opening. */
  private kaOpening: Promise<KeepaliveStream> | undefined;
  private closed = false;

  /** Attempts per call while members refuse connections (see {@link call}). */
  private readonly attempts: number;

  constructor(opts: EtcdKvOptions) {
    this.client = createEtcdClient(opts.endpoints, opts.security, opts.maxRecvBytes);
    this.attempts = Math.max(1, 2 * opts.endpoints.length);
  }

  async range(req: KvRangeRequest, deadlineMs: number): Promise<KvRangeResponse> {
    const key = Buffer.from(req.key);
    const res = await this.call(`get ${req.key}${req.prefix ? '*' : ''}`, deadlineMs, () =>
      this.client.kv.range(
        {
          key: req.prefix && req.from !== undefined ? Buffer.from(req.from) : key,
          ...(req.prefix ? { range_end: prefixEnd(key) } : {}),
          ...(req.limit ? { limit: req.limit } : {}),
          ...(req.serializable ? { serializable: true } : {}),
          ...(req.revision ? { revision: req.revision } : {}),
          ...(req.keysOnly ? { keys_only: true } : {}),
        },
        deadlineOption(deadlineMs),
      ),
    );
    return { header: headerOf(res.header), kvs: res.kvs.map(entryOf), more: Boolean(res.more), count: Number(res.count) };
  }

  async txn(req: KvTxnRequest, deadlineMs: number): Promise<KvTxnResponse> {
    const res = await this.call('txn', deadlineMs, () =>
      this.client.kv.txn({ compare: req.compare.map(compareOf), success: req.success.map(opOf), failure: (req.failure ?? []).map(opOf) }, deadlineOption(deadlineMs)),
    );
    return { header: headerOf(res.header), succeeded: Boolean(res.succeeded), responses: (res.responses ?? []).map(opResultOf) };
  }

  async leaseGrant(ttlMs: number, deadlineMs: number): Promise<{ header: KvHeader; id: KvLeaseId; ttlMs: number }> {
    const ttl = Math.max(1, Math.ceil(ttlMs / 1000));
    const res = await this.call('lease grant', deadlineMs, () => this.client.leaseClient.leaseGrant({ TTL: ttl }, deadlineOption(deadlineMs)));
    if (res.error) throw new TetherError('UNAVAILABLE', `lease grant: ${res.error}`, { retryable: true });
    return { header: headerOf(res.header), id: String(res.ID), ttlMs: Number(res.TTL) * 1000 };
  }

  /**
   * One keepalive, written on this client's single long-lived LeaseKeepAlive stream
   * ({@link KeepaliveStream}: answers matched by lease id, FIFO per id), opened on first use to a
   * member picked at random and re-opened on the next call after it broke. The deadline is this
   * call's own: a stream that leaves a call unanswered by its deadline is retired (no new request
   * goes on it; it closes once its other calls are settled), so a stalled connection costs one
   * miss, not every later keepalive. A broken stream fails its waiting calls as a retryable
   * UNAVAILABLE (sent again within the deadline only when the member refused the connection, as
   * {@link call} does). The response header (revision, raft term) is etcd's for this request.
   */
  async leaseKeepAlive(id: KvLeaseId, deadlineMs: number): Promise<{ header: KvHeader; ttlMs: number }> {
    const what = `keepalive of lease ${id}`;
    const end = performance.now() + deadlineMs;
    for (let attempt = 1; ; attempt++) {
      let slot: KeepaliveSlot | undefined;
      let stream: KeepaliveStream | undefined;
      try {
        stream = await withDeadline(what, Math.max(1, Math.round(end - performance.now())), this.keepaliveStream());
        slot = stream.send(id);
        const res = await withDeadline(what, Math.max(1, Math.round(end - performance.now())), slot.answer);
        return { header: headerOf(res.header), ttlMs: Math.max(0, Number(res.TTL)) * 1000 };
      } catch (err) {
        if (err instanceof TetherError && err.code === 'TIMEOUT') {
          slot?.abandon();
          stream?.retire();
          // Still opening (etcd3 fetches an auth token first, which can hang): the next call starts afresh.
          const opening = this.kaOpening;
          if (!stream && opening && this.ka === opening) {
            this.ka = undefined;
            opening.then(
              (s) => s.retire(),
              () => undefined,
            );
          }
        }
        if (attempt < this.attempts && neverSent(err) && end - performance.now() > 50) continue;
        throw asKvError(what, err);
      }
    }
  }

  /** Long-lived LeaseKeepAlive streams this client opened so far (one, unless streams broke or stalled). */
  get keepaliveStreamsOpened(): number {
    return this.kaOpened;
  }

  /** The open keepalive stream, opening one when there is none (or it broke, or was retired). */
  private keepaliveStream(): Promise<KeepaliveStream> {
    const cur = this.ka;
    if (cur) {
      const open = cur.then(
        (s) => s.open,
        () => false,
      );
      return open.then((ok) => (ok ? cur : this.openKeepaliveStream(cur)));
    }
    return this.openKeepaliveStream(undefined);
  }

  private openKeepaliveStream(replacing: Promise<KeepaliveStream> | undefined): Promise<KeepaliveStream> {
    // Concurrent callers that found the same stream gone share one new stream.
    if (this.ka !== replacing && this.ka) return this.keepaliveStream();
    if (this.closed) return Promise.reject(new TetherError('UNAVAILABLE', 'the etcd client is closed', { retryable: true }));
    const p = this.client.leaseClient.leaseKeepAlive().then((raw) => {
      this.kaOpened++;
      const s = new KeepaliveStream(raw);
      if (this.closed) s.close();
      return s;
    });
    p.then(
      () => undefined,
      () => {
        if (this.ka === p) this.ka = undefined;
      },
    ).finally(() => {
      if (this.kaOpening === p) this.kaOpening = undefined;
    });
    this.ka = p;
    this.kaOpening = p;
    return p;
  }

  async leaseRevoke(id: KvLeaseId, deadlineMs: number): Promise<{ header: KvHeader }> {
    try {
      const res = await this.call(`revoke lease ${id}`, deadlineMs, () => this.client.leaseClient.leaseRevoke({ ID: id }, deadlineOption(deadlineMs)));
      return { header: headerOf(res.header) };
    } catch (err) {
      // Revoking an unknown lease is not an error; etcd's refusal carries no header: revision and term 0.
      if (err instanceof TetherError && err.cause instanceof EtcdLeaseInvalidError) return { header: { revision: 0, raftTerm: 0 } };
      throw err;
    }
  }

  async leaseTimeToLive(id: KvLeaseId, deadlineMs: number): Promise<{ header: KvHeader; remainingMs: number; grantedMs: number } | undefined> {
    const res = await this.call(`lease ttl ${id}`, deadlineMs, () => this.client.leaseClient.leaseTimeToLive({ ID: id }, deadlineOption(deadlineMs)));
    const ttl = Number(res.TTL);
    if (!(ttl >= 0)) return undefined;
    return { header: headerOf(res.header), remainingMs: ttl * 1000, grantedMs: Number(res.grantedTTL) * 1000 };
  }

  async status(deadlineMs: number): Promise<KvStatus> {
    const res = await this.call('etcd status', deadlineMs, () => this.client.maintenance.status(deadlineOption(deadlineMs)));
    const leader = hexId(res.leader);
    return { header: headerOf(res.header), version: String(res.version), raftTerm: Number(res.raftTerm), ...(leader ? { leader } : {}) };
  }

  /**
   * A watch on its own gRPC stream. Resolves once etcd answered `created`. Each watch response's
   * events are delivered split by revision (one batch per revision = per txn; etcd may pack
   * several revisions into one response while catching up). A cancel (compaction: COMPACTED with
   * `details.compactRevision`; etcd may confirm `created` first and cancel right after), a stream
   * error or end comes out once through `onError` (or as the rejection, before `created`) and ends
   * the watch.
   */
  async watch(req: KvWatchRequest, handlers: KvWatchHandlers, deadlineMs: number): Promise<Subscription> {
    const what = `watch ${req.key}${req.prefix ? '*' : ''}`;
    const stream = await this.call(what, deadlineMs, () => this.client.watchClient.watch());
    this.streams.add(stream);
    let state: 'creating' | 'open' | 'closed' = 'creating';
    const stop = (): void => {
      state = 'closed';
      this.streams.delete(stream);
      try {
        // end() first: etcd3 marks the host failed (closing every channel of this client, so calls
        // starting then fail "Channel closed before call started") on a CANCELLED error from a
        // stream that is still writable.
        stream.end();
        stream.cancel();
      } catch {
        // already gone
      }
    };
    const sub: Subscription = {
      close: async () => {
        if (state !== 'closed') stop();
      },
    };
    return new Promise<Subscription>((resolve, reject) => {
      const timer = setTimeout(() => end(new TetherError('TIMEOUT', `${what}: not created within ${deadlineMs}ms`, { retryable: true })), deadlineMs);
      const end = (err: TetherError): void => {
        clearTimeout(timer);
        if (state === 'closed') return;
        const was = state;
        stop();
        if (was === 'creating') reject(err);
        else handlers.onError(err);
      };
      stream.on('data', (res: IWatchResponse) => {
        if (state === 'closed') return;
        if (res.created && state === 'creating' && !res.canceled) {
          clearTimeout(timer);
          state = 'open';
          resolve(sub);
        }
        const compact = Number(res.compact_revision ?? 0);
        if (compact > 0) {
          end(new TetherError('COMPACTED', `${what}: revision ${req.fromRevision} was compacted (etcd keeps from ${compact})`, { retryable: false, details: { compactRevision: compact } }));
          return;
        }
        if (res.canceled) {
          // A reason (e.g. "etcdserver: permission denied") maps like any etcd error; none: a retryable UNAVAILABLE.
          end(res.cancel_reason ? asKvError(what, castGrpcErrorMessage(res.cancel_reason)) : new TetherError('UNAVAILABLE', `${what}: canceled by etcd`, { retryable: true }));
          return;
        }
        if (state !== 'open' || !res.events || res.events.length === 0) return;
        const header = headerOf(res.header);
        let batch: KvWatchEvent[] = [];
        let rev = -1;
        for (const e of res.events) {
          const ev: KvWatchEvent = { type: isDelete(e.type) ? 'delete' : 'put', kv: entryOf(e.kv) };
          if (ev.kv.modRevision !== rev && batch.length > 0) {
            handlers.onEvents(batch, header);
            if (state !== 'open') return;
            batch = [];
          }
          rev = ev.kv.modRevision;
          batch.push(ev);
        }
        if (batch.length > 0) handlers.onEvents(batch, header);
      });
      stream.on('error', (err: Error) => end(asKvError(what, castGrpcError(err))));
      stream.on('end', () => end(new TetherError('UNAVAILABLE', `${what}: the watch stream ended`, { retryable: true })));
      stream.write({
        create_request: { key: Buffer.from(req.key), ...(req.prefix ? { range_end: prefixEnd(Buffer.from(req.key)) } : {}), start_revision: req.fromRevision },
      });
    });
  }

  async close(): Promise<void> {
    this.closed = true;
    void this.ka?.then((s) => s.close(), () => undefined);
    this.ka = undefined;
    for (const s of this.streams) {
      try {
        s.cancel();
      } catch {
        // already gone
      }
    }
    this.streams.clear();
    this.client.close();
  }

  /**
   * Runs one call under the deadline. A request that provably never left this client (the member's
   * connection refused or never established: a dead member) is sent again within the same deadline:
   * the pool picks a member at random, so a dead one costs a retry, not the call. Nothing else is
   * retried here: a request that may have reached etcd is the caller's to judge (ambiguous commit).
   */
  private async call<T>(what: string, deadlineMs: number, fn: () => Promise<T>): Promise<T> {
    const end = performance.now() + deadlineMs;
    for (let attempt = 1; ; attempt++) {
      try {
        return await withDeadline(what, Math.max(1, Math.round(end - performance.now())), fn());
      } catch (err) {
        if (attempt < this.attempts && neverSent(err) && end - performance.now() > 50) continue;
        throw asKvError(what, err);
      }
    }
  }
}
