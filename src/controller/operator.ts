/**
 * Operator actions on hosts that go straight to the store (no controller needed): the confirmed manual
 * fence, and hold/release with the messages the rules of ARCHITECTURE.md ("Overrides and their
 * safety") call for.
 */
import { lostWithHost, markLost } from '../domain/cluster-vm.js';
import { NotFoundError, TetherError } from '../domain/errors.js';
import { fencedRecord } from '../domain/fence-window.js';
import type { HostRecord } from '../domain/host-record.js';
import type { Clock } from '../ports/clock.js';
import type { ControllerStore } from '../ports/controller-store.js';

const ATTEMPTS = 5;

/** Outcome of {@link operatorFence}. */
export interface OperatorFenceResult {
  readonly record: HostRecord;
  /** `ns/name` of the VMs marked lost. */
  readonly lostVms: readonly string[];
  /** True when the record was already fenced (nothing changed). */
  readonly alreadyFenced: boolean;
}

/**
 * `tether host fence <id> --confirm`: for an operator who knows the host is powered off. One txn (record
 * unchanged, `alive` key absent) sets `fenced`, marks the host's VMs `lost` and appends a `host-fenced`
 * event `by: operator`; the active controller then reschedules them.
 *
 * Refused (FAILED_PRECONDITION, nothing changed) while the host holds a live lease (its `alive` key
 * exists: it is running and heartbeating) and for a retired record; NOT_FOUND for an unknown host.
 * Works on held hosts and hosts held when they detached: that is what it is for.
 */
export async function operatorFence(store: ControllerStore, clock: Clock, hostId: string, deadlineMs: number): Promise<OperatorFenceResult> {
  for (let attempt = 0; attempt < ATTEMPTS; attempt++) {
    const h = await store.getHost(hostId, deadlineMs);
    const rec = h.record;
    if (!rec || h.recordRevision === undefined) throw new NotFoundError(`host ${hostId}`);
    if (rec.state === 'fenced') return { record: rec, lostVms: [], alreadyFenced: true };
    if (h.alive) {
      throw new TetherError(
        'FAILED_PRECONDITION',
        `host ${hostId} holds a live lease (epoch ${h.alive.epoch}): it is running and heartbeating, so it is not powered off; nothing was changed`,
      );
    }
    if (rec.state === 'retired') throw new TetherError('FAILED_PRECONDITION', `host ${hostId} is retired; nothing to fence`);
    const vms = await store.listVms(deadlineMs);
    const now = clock.now();
    const lost = vms.filter((v) => lostWithHost(v.record, hostId, rec.epoch));
    const next = fencedRecord(rec, now);
    const res = await store.commit(
      {
        hosts: [{ hostId, expectRevision: h.recordRevision, requireAliveAbsent: true, next }],
        vms: lost.map((v) => ({ key: v.key, expectRevision: v.revision, next: markLost(v.record, `host ${hostId} fenced by the operator at epoch ${rec.epoch}`, now) })),
        events: [
          {
            kind: 'host-fenced',
            hostId,
            epoch: rec.epoch,
            by: 'operator',
            lostVms: lost.map((v) => v.key),
            at: now,
            detail: `operator fenced ${hostId} (confirmed powered off) at epoch ${rec.epoch}: ${lost.length} VM(s) lost`,
          },
        ],
      },
      deadlineMs,
    );
    if (res.ok) return { record: next, lostVms: lost.map((v) => v.key), alreadyFenced: false };
  }
  throw new TetherError('UNAVAILABLE', `fence of ${hostId}: the record or its VMs kept changing under ${ATTEMPTS} attempts; nothing was changed`, { retryable: true });
}

/** Outcome of {@link setHostHold}: the record and what the operator must know. */
export interface HoldResult {
  readonly record: HostRecord;
  /** Warnings to print (empty when there is nothing to add). */
  readonly notes: readonly string[];
}

/**
 * `tether host hold|release <id>`: sets the cluster hold on the record (with a `host-hold-changed`
 * event). Notes what the override rules imply:
 * - hold on a detached host: the controller will not fence it, but the host cannot learn of the hold and
 *   self-fences on schedule; its VMs are not rescheduled while held;
 * - release of a host held when it detached: it stays held for this detachment (it does not self-fence),
 *   so only `tether host fence <id> --confirm` can fence it.
 */
export async function setHostHold(store: ControllerStore, clock: Clock, hostId: string, hold: boolean, deadlineMs: number): Promise<HoldResult> {
  const record = await store.setHold(hostId, hold, clock.now(), deadlineMs);
  const notes: string[] = [];
  if (hold && (record.state === 'detached' || record.state === 'fenced')) {
    notes.push(
      `host ${hostId} is ${record.state}: it cannot learn of this hold, so its own watchdog still stops its VMs on schedule; the controller will neither fence it nor reschedule its VMs while held`,
    );
  }
  if (!hold && record.state === 'detached' && record.heldAtDetach) {
    notes.push(
      `host ${hostId} was held when it detached and stays held for this detachment (it does not self-fence); only 'tether host fence ${hostId} --confirm' can fence it, once you know it is powered off`,
    );
  }
  if (!hold) notes.push('a release takes effect for future detachments once the host has read it (within a few heartbeats)');
  return { record, notes };
}
