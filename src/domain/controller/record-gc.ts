/**
 * Host-record GC and event retention, every `gcInterval`: a host fenced and absent for
 * `hostRecordTtl` is retired, a retired absent one removed `retiredRemoveAfter` later
 * ({@link hostGcAction}, wall time: not a safety decision); events beyond `eventRetention` are pruned;
 * a sweep follows (it retries pending VMs).
 */
import { hostGcAction, removeChange, retireChange } from '../host-record-gc.js';
import { call, log, setTimer } from './effects.js';
import { forget } from './fence.js';
import { requestSweep } from './sweep.js';
import { write } from './writes.js';
import type { CallError, Ctx, Reply } from './types.js';

/** The GC timer fired. */
export function gcTick(c: Ctx): void {
  const s = c.s;
  if (!s.leader) return;
  const nowWall = c.now.wall;
  for (const t of [...s.hosts.values()]) {
    const rec = t.record;
    if (!rec || t.revision === undefined) continue;
    const action = hostGcAction(rec, t.alive !== undefined, nowWall, { ttl: s.cfg.hostRecordTtl, removeAfter: s.cfg.retiredRemoveAfter });
    if (action === 'retire') write(c, t.hostId, retireChange(t.hostId, rec, t.revision, nowWall, s.cfg.hostRecordTtl), { action: 'retire', retry: false }, { k: 'gc', hostId: t.hostId, action });
    else if (action === 'remove') write(c, t.hostId, removeChange(t.hostId, t.revision, nowWall), { action: 'remove', retry: false }, { k: 'gc', hostId: t.hostId, action });
  }
  call(c, { op: 'prune-events', keep: s.cfg.eventRetention }, { for: 'prune' });
  requestSweep(c);
  setTimer(c, 'gc', s.cfg.gcInterval);
}

/** A retire or remove txn's outcome. */
export function gcWritten(c: Ctx, hostId: string, action: 'retire' | 'remove', ok: boolean): void {
  if (!ok) return;
  if (action === 'retire') return log(c, 'info', { hostId }, 'host record retired');
  const t = c.s.hosts.get(hostId);
  if (t) forget(c, t);
  log(c, 'info', { hostId }, 'host record removed');
}

/** The pruning's outcome. */
export function pruned(c: Ctx, r: Extract<Reply, { op: 'prune-events' }> | { readonly error: CallError }): void {
  if ('error' in r) return log(c, 'warn', { err: r.error.message }, 'pruning events failed');
  if (r.deleted > 0) log(c, 'debug', { deleted: r.deleted }, 'old events pruned');
}
