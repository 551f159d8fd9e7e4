/**
 * Who may register a host, at which epoch: the registration rules, pure.
 *
 * A host registers by one txn that writes `hosts/<id>/record` and puts `hosts/<id>/alive` on its
 * fresh lease, comparing what it read of both (so the decision below is never taken on a stale read).
 *
 * Safety rules (ARCHITECTURE.md sections 3 and 4):
 * - **One agent per host id.** While `alive` exists and was written by ANOTHER agent instance
 *   (another `agentId`), registration is refused as `duplicate`: the other agent heartbeats for this
 *   host id and runs its VMs. A duplicate refusal never makes the refused agent fence anything: it
 *   is not the one running the host's VMs. The same holds for a live `alive` written from ANOTHER
 *   MACHINE (`machineId`), whatever its agent id: a cloned disk image or a restored backup of the
 *   state dir carries the agent id along, but not the machine.
 * - **One machine per epoch.** The record names the machine that registered it (`machineId`).
 *   `reattach` keeps the epoch, only at the same epoch, from the record's machine (or a legacy
 *   record that names none), and while the record is not fenced or retired (the host came back
 *   before the controller fenced it: its VMs were never lost). Another machine never takes an
 *   epoch over: the VMs of that epoch may still run on the record's machine (inside its watchdog
 *   window, e.g. while it is partitioned), so it is refused as `epoch-mismatch` and may join only
 *   `ready`, at a new epoch, once the cluster fenced the old one (below).
 * - **`ready`** (after a verified cleanup) gets epoch + 1, and with it every VM record of an older
 *   epoch on this host becomes stale and is rescheduled at once, without a fence window. So it is
 *   allowed only to the agent that held the record's epoch ON THE RECORD'S MACHINE (its own VMs are
 *   the ones it cleaned), or once the cluster fenced the record (the window already passed): an
 *   agent from another state dir (epoch 0) or another machine (a clone at the same epoch) cannot
 *   skip the window of VMs that another agent may still be running.
 *
 * A registering agent that names no machine (`machineId` absent) is on an unknown machine: never
 * the record's machine when the record names one.
 */
import type { HostRecord } from './host-record.js';

/** Why a registration is refused. `duplicate` never leads to a fence of the refused agent's VMs. */
export type RegistrationRefusal = 'fenced' | 'epoch-mismatch' | 'duplicate';

/** The `alive` key as registration sees it. */
export interface AliveHolder {
  /** The agent instance that wrote it (absent when written by an agent older than this rule). */
  readonly agentId?: string;
  /** The machine it runs on (absent when written by an agent older than this rule). */
  readonly machineId?: string;
  /** Human description of the holder (pid, machine, state dir), for error messages. */
  readonly holder?: string;
  readonly lease: string;
}

/** Outcome of {@link decideRegistration}. */
export type RegistrationDecision =
  | { readonly ok: true; readonly state: HostRecord['state']; readonly epoch: number }
  | { readonly ok: false; readonly reason: RegistrationRefusal; readonly detail: string };

/** Describes the holder of an `alive` key for an operator. */
export function describeHolder(alive: AliveHolder): string {
  return `${alive.holder ?? `agent ${alive.agentId ?? '(unknown: older agent)'}`}${alive.machineId ? ` (machine ${alive.machineId})` : ''} on lease ${alive.lease}`;
}

/**
 * Whether a registration from machine `regMachine` is on the machine the record (or `alive`) names:
 * true when it names none (written before machine ids: legacy), else only on an exact match (an
 * absent `regMachine` never matches a named machine).
 */
export function onRecordMachine(recordMachine: string | undefined, regMachine: string | undefined): boolean {
  return recordMachine === undefined || recordMachine === regMachine;
}

/**
 * The registration rules (see the module comment). `alive` is the current `hosts/<id>/alive` key,
 * if any; `reg.agentId` is the registering agent's persistent instance id.
 */
export function decideRegistration(
  reg: { readonly mode: 'reattach' | 'ready'; readonly epoch: number; readonly agentId?: string; readonly machineId?: string },
  cur: Pick<HostRecord, 'state' | 'epoch' | 'machineId'> | undefined,
  alive?: AliveHolder,
): RegistrationDecision {
  if (alive !== undefined && (alive.agentId === undefined || alive.agentId !== reg.agentId)) {
    return { ok: false, reason: 'duplicate', detail: `another agent heartbeats for this host id: ${describeHolder(alive)}` };
  }
  if (alive !== undefined && !onRecordMachine(alive.machineId, reg.machineId)) {
    return { ok: false, reason: 'duplicate', detail: `another machine heartbeats for this host id with this agent's id (a cloned or restored state dir?): ${describeHolder(alive)}` };
  }
  const sameMachine = onRecordMachine(cur?.machineId, reg.machineId);
  if (reg.mode === 'ready') {
    if (!cur || cur.state === 'fenced' || (cur.epoch === reg.epoch && sameMachine)) return { ok: true, state: 'ready', epoch: Math.max(cur?.epoch ?? 0, reg.epoch) + 1 };
    return {
      ok: false,
      reason: 'epoch-mismatch',
      detail: `record is ${cur.state} at epoch ${cur.epoch}${sameMachine ? '' : ` of machine ${cur.machineId}`}, this agent cleaned epoch ${reg.epoch}${sameMachine ? '' : ` on machine ${reg.machineId ?? '(unknown)'}`}: it may rejoin only once the cluster fenced that epoch`,
    };
  }
  if (!cur) {
    if (reg.epoch === 0) return { ok: true, state: 'attached', epoch: 1 };
    return { ok: false, reason: 'fenced', detail: `no record for this host although it had epoch ${reg.epoch}: treated as fenced` };
  }
  if (cur.state === 'fenced' || cur.state === 'retired') return { ok: false, reason: 'fenced', detail: `record is ${cur.state} at epoch ${cur.epoch}` };
  if (cur.epoch !== reg.epoch) return { ok: false, reason: 'epoch-mismatch', detail: `record epoch ${cur.epoch}, host epoch ${reg.epoch}` };
  if (!sameMachine) {
    return {
      ok: false,
      reason: 'epoch-mismatch',
      detail: `epoch ${cur.epoch} belongs to machine ${cur.machineId}, this is machine ${reg.machineId ?? '(unknown)'} (a cloned or restored state dir?): it may join only at a new epoch, once the cluster fenced that one`,
    };
  }
  return { ok: true, state: 'attached', epoch: cur.epoch };
}
