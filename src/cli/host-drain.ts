import { randomBytes } from 'node:crypto';
import type { ClusterVmRecord } from '../domain/cluster-vm.js';
import { NotFoundError, TetherError } from '../domain/errors.js';
import { placeVms } from '../domain/placement.js';
import { placementChange } from '../domain/reschedule-changes.js';
import { schedulableHosts } from './cluster-vms.js';
import type { ControllerStore } from '../ports/controller-store.js';

const DEADLINE = 5000;

/** Sets or clears `draining` on a host record (CAS on its revision). */
export async function setDraining(store: Pick<ControllerStore, 'getHost' | 'commit'>, hostId: string, draining: boolean): Promise<void> {
  for (let attempt = 0; attempt < 5; attempt++) {
    const h = await store.getHost(hostId, DEADLINE);
    if (!h.record || h.recordRevision === undefined) throw new NotFoundError(`host ${hostId}`);
    const { draining: _d, ...rest } = h.record;
    const next = draining ? { ...rest, draining: true } : rest;
    const res = await store.commit({ hosts: [{ hostId, expectRevision: h.recordRevision, next: { ...next, updatedAt: Date.now() } }] }, DEADLINE);
    if (res.ok) return;
  }
  throw new TetherError('UNAVAILABLE', `host ${hostId}: record kept changing; try again`, { retryable: true });
}

/** Result of {@link drainHost}. */
export interface DrainResult {
  readonly moved: { readonly key: string; readonly to?: string; readonly reason?: string }[];
}

/**
 * Drains a host: no new VMs for it; each of its VMs is marked `deleting` + `drain`, so its host stops
 * it gracefully and removes its resources, then marks it `lost` — only then is it placed on another
 * host (new uid). A VM never runs on two hosts: the new placement waits for the old host's
 * confirmation. If this command dies midway, the controller places the `lost` VMs itself.
 */
export async function drainHost(
  store: Pick<ControllerStore, 'getHost' | 'listHosts' | 'listVms' | 'scanVms' | 'commit'>,
  hostId: string,
  timeoutMs: number,
  progress: (line: string) => void,
): Promise<DrainResult> {
  const h = await store.getHost(hostId, DEADLINE);
  if (!h.record) throw new NotFoundError(`host ${hostId}`);
  if (h.record.state !== 'attached' && h.record.state !== 'ready') {
    throw new TetherError('FAILED_PRECONDITION', `host ${hostId} is ${h.record.state}: it cannot stop its VMs for a drain (if it is powered off: tether host fence ${hostId} --confirm)`);
  }
  await setDraining(store, hostId, true);
  const onHost = (await store.listVms(DEADLINE)).filter((v) => v.record.hostId === hostId && v.record.phase !== 'lost');
  for (const v of onHost) {
    if (v.record.phase === 'deleting') continue;
    const next: ClusterVmRecord = { ...v.record, phase: 'deleting', drain: true, generation: v.record.generation + 1, updatedAt: Date.now() };
    const res = await store.commit({ vms: [{ key: v.key, expectRevision: v.revision, prevHostId: v.record.hostId ?? null, next }] }, DEADLINE);
    if (!res.ok) throw new TetherError('UNAVAILABLE', `VM ${v.key} changed while draining; run the drain again`, { retryable: true });
    progress(`${v.key}: stopping on ${hostId}`);
  }
  const keys = new Set(onHost.filter((v) => v.record.phase !== 'deleting' || v.record.drain).map((v) => v.key));
  const t0 = Date.now();
  for (;;) {
    const vms = await store.listVms(DEADLINE);
    const waiting = vms.filter((v) => keys.has(v.key) && v.record.hostId === hostId && v.record.phase !== 'lost');
    if (waiting.length === 0) break;
    if (Date.now() - t0 > timeoutMs) {
      throw new TetherError('TIMEOUT', `host ${hostId} has not confirmed the stop of ${waiting.map((v) => v.key).join(', ')} after ${timeoutMs}ms; the drain goes on (the controller places them once they are lost)`);
    }
    await new Promise((r) => setTimeout(r, 500));
  }
  const [snapshot, { entries: vms, revision: seen }] = await Promise.all([store.listHosts(DEADLINE), store.scanVms(DEADLINE)]);
  const hosts = schedulableHosts(snapshot.hosts);
  const lost = vms.filter((v) => keys.has(v.key) && v.record.phase === 'lost');
  const placements = placeVms(lost.map((v) => ({ key: v.key, spec: v.record.spec })), hosts, vms.map((v) => v.record));
  const moved: DrainResult['moved'] = [];
  // Already placed again by the controller's sweep (it also places lost VMs).
  for (const v of vms) if (keys.has(v.key) && v.record.phase !== 'lost' && v.record.hostId !== hostId) moved.push({ key: v.key, ...(v.record.hostId ? { to: v.record.hostId } : {}) });
  for (const p of placements) {
    const v = lost.find((x) => x.key === p.key)!;
    if (!('hostId' in p)) {
      moved.push({ key: p.key, reason: p.reason });
      progress(`${p.key}: no room elsewhere (${p.reason}); the controller places it when room appears`);
      continue;
    }
    const target = snapshot.hosts.find((x) => x.hostId === p.hostId)!;
    // the controller's placement builder (domain/reschedule-changes.ts), without its event
    const { change } = placementChange({ vm: v, placement: p, targetRevision: target.recordRevision!, uid: randomBytes(16).toString('hex'), nowWall: Date.now(), event: false });
    // capacity guard: nothing placed on the target since the listing the capacity check used
    const res = await store.commit({ ...change, capacityGuards: [{ hostId: p.hostId, seenRevision: seen }] }, DEADLINE);
    moved.push(res.ok ? { key: v.key, to: p.hostId } : { key: v.key, reason: 'placed concurrently (by the controller)' });
    if (res.ok) progress(`${v.key}: placed on ${p.hostId}`);
  }
  return { moved };
}
