/**
 * Paged prefix reads: every read of a whole prefix (hosts, VMs, events, a host's VM index) goes
 * through {@link rangePaged}, so no single etcd reply grows with the cluster.
 */
import { TetherError } from '../../domain/errors.js';
import { DEFAULT_KEYS_PAGE_SIZE, DEFAULT_PAGE_SIZE } from '../../domain/kv-read-limits.js';
import type { Clock } from '../../ports/clock.js';
import type { Kv, KvEntry, KvHeader } from '../../ports/kv.js';

/** What to read: one key, or (with `prefix`) every key starting with `key`. */
export interface PagedRange {
  readonly key: string;
  readonly prefix?: boolean;
}

/** Options of {@link rangePaged}. */
export interface RangePagedOptions {
  /** Keys per page (default {@link DEFAULT_PAGE_SIZE}, 500; keys only: {@link DEFAULT_KEYS_PAGE_SIZE}, 2000); halved while a reply is too large. */
  readonly pageSize?: number;
  /** Keys only (values empty). */
  readonly keysOnly?: boolean;
  /** Serializable pages (served by the member, may be stale); default linearizable. */
  readonly serializable?: boolean;
  /**
   * Read as of this revision instead of pinning to the first page's. A compaction past it is then
   * the caller's COMPACTED, never restarted here.
   */
  readonly revision?: number;
  /**
   * Time base of the overall deadline (`nowMono`): the stores pass theirs, so a simulation stays on
   * its own clock. Default: `performance.now()`.
   */
  readonly clock?: Pick<Clock, 'nowMono'>;
  /** Called once per page answered (tests count round trips; stores note raft terms). */
  readonly onPage?: (header: KvHeader, keys: number) => void;
}

/** Answer of {@link rangePaged}. */
export interface PagedResult {
  /** The revision every page was read at: the first page's header revision (or `opts.revision`). */
  readonly revision: number;
  /** The header of the last page (its raft term is the newest seen). */
  readonly header: KvHeader;
  /** Every key of the range at {@link revision}, in key order. */
  readonly kvs: KvEntry[];
  /** Pages read (including ones refused as too large). */
  readonly pages: number;
}

/** Restarts of a paged read whose pinned revision was compacted away between pages. */
const COMPACTION_RESTARTS = 3;

/** True for the Kv failure "the reply was larger than the client's receive limit" (see src/ports/kv.ts). */
export function isReplyTooLarge(err: unknown): err is TetherError {
  return err instanceof TetherError && err.code === 'RESOURCE_EXHAUSTED' && err.details.reason === 'reply-too-large';
}

/**
 * Reads `range` in pages of at most `opts.pageSize` keys, every page at the revision of the first
 * one, so the result is one consistent snapshot (exactly what a single range at that revision would
 * return) whatever its size.
 *
 * Invariants:
 *  - every page after the first is read with `revision` = the first page's header revision; the
 *    next page starts right after the previous page's last key (`last + "\0"`, its byte successor);
 *  - a page refused as too large for the client's receive limit ({@link isReplyTooLarge}) is asked
 *    again with half as many keys, down to one; after a page that fit, the size grows back
 *    (doubling, up to `pageSize`). One key over the limit is thrown (the record limits keep every
 *    record far below it, see src/domain/kv-read-limits.ts);
 *  - when the pinned revision is compacted between pages, the read starts over (new first page,
 *    new revision) at most {@link COMPACTION_RESTARTS} times, then COMPACTED is thrown;
 *  - the whole read, all pages, is bounded by `deadlineMs` (TIMEOUT, retryable, when it runs out);
 *    each page gets what is left of it;
 *  - a single-key range (no `prefix`) is one plain read.
 *
 * @throws every error of {@link Kv.range} as is, except the ones handled above.
 */
export async function rangePaged(kv: Kv, range: PagedRange, opts: RangePagedOptions, deadlineMs: number): Promise<PagedResult> {
  const now = opts.clock ? () => opts.clock!.nowMono() : () => performance.now();
  const start = now();
  const left = (): number => {
    const ms = Math.round(deadlineMs - (now() - start));
    if (ms <= 0) throw new TetherError('TIMEOUT', `paged read of ${range.key}${range.prefix ? '*' : ''}: no complete answer within ${deadlineMs}ms`, { retryable: true });
    return ms;
  };
  const base = {
    key: range.key,
    ...(opts.keysOnly ? { keysOnly: true } : {}),
    ...(opts.serializable ? { serializable: true } : {}),
  };
  if (!range.prefix) {
    const res = await kv.range({ ...base, ...(opts.revision ? { revision: opts.revision } : {}) }, left());
    opts.onPage?.(res.header, res.kvs.length);
    return { revision: opts.revision || res.header.revision, header: res.header, kvs: [...res.kvs], pages: 1 };
  }
  const pageSize = Math.max(1, Math.floor(opts.pageSize ?? (opts.keysOnly ? DEFAULT_KEYS_PAGE_SIZE : DEFAULT_PAGE_SIZE)));
  let pages = 0;
  for (let restart = 0; ; restart++) {
    let revision = opts.revision && opts.revision > 0 ? opts.revision : 0;
    let from: string | undefined;
    let limit = pageSize;
    let header: KvHeader | undefined;
    const kvs: KvEntry[] = [];
    try {
      for (;;) {
        let res;
        try {
          pages++;
          res = await kv.range({ ...base, prefix: true, limit, ...(from !== undefined ? { from } : {}), ...(revision > 0 ? { revision } : {}) }, left());
        } catch (err) {
          if (isReplyTooLarge(err) && limit > 1) {
            limit = Math.max(1, Math.floor(limit / 2));
            continue;
          }
          throw err;
        }
        opts.onPage?.(res.header, res.kvs.length);
        if (revision === 0) revision = res.header.revision;
        header = res.header;
        for (const e of res.kvs) kvs.push(e);
        const last = res.kvs[res.kvs.length - 1];
        if (!res.more || !last) return { revision, header, kvs, pages };
        from = `${last.key}\0`;
        limit = Math.min(pageSize, limit * 2);
      }
    } catch (err) {
      const pinnedHere = !(opts.revision && opts.revision > 0) && header !== undefined;
      if (err instanceof TetherError && err.code === 'COMPACTED' && pinnedHere && restart < COMPACTION_RESTARTS) continue;
      throw err;
    }
  }
}
