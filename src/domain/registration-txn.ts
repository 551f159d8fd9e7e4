/**
 * The txns a host's agent writes, built pure from what it read: registration (record + `alive` on
 * the agent's lease), the hold acknowledgement (`holdSeen`) and the operator hold on a record.
 * The stores (src/adapters/kv) read, call these, send the txn and loop on a lost compare; the etcd
 * adapter and the etcd model therefore run the same rules.
 *
 * Invariants: the registration txn writes the registering machine's id (or none) on both the record
 * and `alive`, never a machine id read before; every txn compares the `mod_revision` (0 = absent) of each key its decision read, so
 * a decision taken on a stale read never lands; registration follows {@link decideRegistration};
 * a hold acknowledgement lands only at the record's epoch, while it is `attached` or `ready`, and
 * while `alive` is on the acknowledging host's lease (a fenced host or one that lost its lease
 * writes nothing); every value goes through the codec's encoders (nothing a reader would refuse).
 */
import { encodeAliveValue, encodeHostRecord } from './codec.js';
import type { HostRecord } from './host-record.js';
import type { Keyspace } from './keyspace.js';
import { modIs, put, type KvLeaseId, type KvTxnRequest } from './kv-txn.js';
import { decideRegistration, type AliveHolder, type RegistrationRefusal } from './registration.js';

/** A host record as read, with its `mod_revision`. */
export interface ReadRecord {
  readonly record: HostRecord;
  readonly modRevision: number;
}

/** `hosts/<id>/alive` as read: who holds it (on which lease), with its `mod_revision`. */
export interface ReadAlive {
  readonly holder: AliveHolder;
  readonly modRevision: number;
}

/** What a host sends when it (re-)registers (the cluster store port's `Registration`). */
export interface RegistrationInput {
  readonly hostId: string;
  /** `reattach`: keep the epoch; refused when the record was fenced or its epoch moved on. `ready`: rejoin with epoch + 1. */
  readonly mode: 'reattach' | 'ready';
  /** The epoch the host believes it has (0 when it never registered). */
  readonly epoch: number;
  /** This agent instance's persistent id (kept in its state dir): who writes `alive`. */
  readonly agentId: string;
  /**
   * The machine this agent runs on (`/etc/machine-id`): only the record's machine may reattach at
   * its epoch, and a live `alive` from another machine is a duplicate whatever its agent id (a
   * cloned state dir carries the agent id along). Absent: an unknown machine (never the record's).
   */
  readonly machineId?: string;
  /** Human description of this agent (pid, machine, state dir), shown to a refused duplicate. */
  readonly holder: string;
  /**
   * The hold this host applies right now, written as `holdSeen` in the same txn (hold protocol:
   * the cluster's `holdSeen` is true whenever the host applies a hold).
   */
  readonly holdApplied: boolean;
  readonly record: Omit<HostRecord, 'state' | 'epoch' | 'hold' | 'updatedAt'>;
  readonly lease: KvLeaseId;
}

/** Outcome of {@link registrationTxn}: a refusal, or the txn to send and what it writes. */
export type RegistrationPlan =
  | { readonly ok: false; readonly reason: RegistrationRefusal; readonly detail: string }
  | { readonly ok: true; readonly record: HostRecord; readonly txn: KvTxnRequest };

/**
 * The registration txn for `reg` given the record `cur` and the `alive` key as read (undefined when
 * absent), at wall time `now`: the record keeps the cluster's hold and draining marks and writes
 * `holdSeen` = what the host applies; `alive` goes on `reg.lease`. Both keys are compared by
 * `mod_revision` (0 when they were absent).
 */
export function registrationTxn(keys: Keyspace, reg: RegistrationInput, cur: ReadRecord | undefined, alive: ReadAlive | undefined, now: number): RegistrationPlan {
  const decision = decideRegistration(reg, cur?.record, alive?.holder);
  if (!decision.ok) return decision;
  // The record's machine is the registering one (reg.machineId), never one carried in reg.record.
  const { machineId: _carried, ...recordFields } = reg.record;
  const record: HostRecord = {
    ...recordFields,
    ...(reg.machineId !== undefined ? { machineId: reg.machineId } : {}),
    state: decision.state,
    epoch: decision.epoch,
    hold: cur?.record.hold ?? false,
    holdSeen: reg.holdApplied,
    ...(cur?.record.draining ? { draining: true } : {}),
    updatedAt: now,
  };
  const key = keys.hostRecord(reg.hostId);
  const aliveKey = keys.hostAlive(reg.hostId);
  const aliveValue = { epoch: record.epoch, agentVersion: reg.record.agentVersion, agentId: reg.agentId, ...(reg.machineId !== undefined ? { machineId: reg.machineId } : {}), holder: reg.holder };
  return {
    ok: true,
    record,
    txn: {
      compare: [modIs(key, cur?.modRevision ?? 0), modIs(aliveKey, alive?.modRevision ?? 0)],
      success: [put(key, encodeHostRecord(keys.rel(key), record)), put(aliveKey, encodeAliveValue(keys.rel(aliveKey), aliveValue), reg.lease)],
    },
  };
}

/** Outcome of {@link holdAckTxn}: already decided (refused, or nothing to write), or the txn to send. */
export type HoldAckPlan = { readonly done: { readonly ok: true } | { readonly ok: false; readonly detail: string } } | { readonly txn: KvTxnRequest };

/**
 * The hold acknowledgement of `hostId` at `epoch` on `lease`: writes `holdSeen` when it differs,
 * comparing the record's and the `alive` key's `mod_revision`.
 */
export function holdAckTxn(
  keys: Keyspace,
  ack: { readonly hostId: string; readonly epoch: number; readonly lease: KvLeaseId; readonly holdSeen: boolean },
  cur: ReadRecord | undefined,
  alive: ReadAlive | undefined,
  now: number,
): HoldAckPlan {
  const { holdSeen } = ack;
  return hostAckTxn(keys, ack, cur, alive, (r) => (r.holdSeen ?? false) === holdSeen, (r) => ({ ...r, holdSeen, updatedAt: now }));
}

/**
 * An acknowledgement this host writes in its own record (`holdSeen`, `freezeContractSeen`): nothing
 * when `written(record)` already holds, else `write(record)`, comparing the record's and the `alive`
 * key's `mod_revision`. Refused (nothing written) unless the record is at `epoch`, `attached` or
 * `ready`, and `alive` is on `lease`.
 */
export function hostAckTxn(
  keys: Keyspace,
  ack: { readonly hostId: string; readonly epoch: number; readonly lease: KvLeaseId },
  cur: ReadRecord | undefined,
  alive: ReadAlive | undefined,
  written: (r: HostRecord) => boolean,
  write: (r: HostRecord) => HostRecord,
): HoldAckPlan {
  const { hostId, epoch, lease } = ack;
  if (!cur) return { done: { ok: false, detail: `host ${hostId} has no record` } };
  if (cur.record.epoch !== epoch || (cur.record.state !== 'attached' && cur.record.state !== 'ready')) {
    return { done: { ok: false, detail: `record is ${cur.record.state} at epoch ${cur.record.epoch}, this host is at epoch ${epoch}` } };
  }
  if (!alive || alive.holder.lease !== lease) return { done: { ok: false, detail: `hosts/${hostId}/alive is not on this host's lease ${lease}` } };
  if (written(cur.record)) return { done: { ok: true } };
  const key = keys.hostRecord(hostId);
  return { txn: { compare: [modIs(key, cur.modRevision), modIs(keys.hostAlive(hostId), alive.modRevision)], success: [put(key, encodeHostRecord(keys.rel(key), write(cur.record)))] } };
}

/** The operator hold `hold` on the record `cur` of `hostId` (compared by `mod_revision`), and the record it writes. */
export function setHoldTxn(keys: Keyspace, hostId: string, hold: boolean, cur: ReadRecord, now: number): { readonly record: HostRecord; readonly txn: KvTxnRequest } {
  const key = keys.hostRecord(hostId);
  const record: HostRecord = { ...cur.record, hold, updatedAt: now };
  return { record, txn: { compare: [modIs(key, cur.modRevision)], success: [put(key, encodeHostRecord(keys.rel(key), record))] } };
}
