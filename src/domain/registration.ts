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
 *   is not the one running the host's VMs.
 * - **`reattach`** keeps the epoch, only at the same epoch and while the record is not fenced or
 *   retired (the host came back before the controller fenced it: its VMs were never lost).
 * - **`ready`** (after a verified cleanup) gets epoch + 1, and with it every VM record of an older
 *   epoch on this host becomes stale and is rescheduled at once, without a fence window. So it is
 *   allowed only to the agent that held the record's epoch (its own VMs are the ones it cleaned), or
 *   once the cluster fenced the record (the window already passed): an agent from another state dir
 *   (epoch 0) cannot skip the window of VMs that another agent may still be running.
 */
import type { HostRecord } from './host-record.js';

/** Why a registration is refused. `duplicate` never leads to a fence of the refused agent's VMs. */
export type RegistrationRefusal = 'fenced' | 'epoch-mismatch' | 'duplicate';

/** The `alive` key as registration sees it. */
export interface AliveHolder {
  /** The agent instance that wrote it (absent when written by an agent older than this rule). */
  readonly agentId?: string;
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
  return `${alive.holder ?? `agent ${alive.agentId ?? '(unknown: older agent)'}`} on lease ${alive.lease}`;
}

/**
 * The registration rules (see the module comment). `alive` is the current `hosts/<id>/alive` key,
 * if any; `reg.agentId` is the registering agent's persistent instance id.
 */
export function decideRegistration(
  reg: { readonly mode: 'reattach' | 'ready'; readonly epoch: number; readonly agentId?: string },
  cur: Pick<HostRecord, 'state' | 'epoch'> | undefined,
  alive?: AliveHolder,
): RegistrationDecision {
  if (alive !== undefined && (alive.agentId === undefined || alive.agentId !== reg.agentId)) {
    return { ok: false, reason: 'duplicate', detail: `another agent heartbeats for this host id: ${describeHolder(alive)}` };
  }
  if (reg.mode === 'ready') {
    if (!cur || cur.state === 'fenced' || cur.epoch === reg.epoch) return { ok: true, state: 'ready', epoch: Math.max(cur?.epoch ?? 0, reg.epoch) + 1 };
    return {
      ok: false,
      reason: 'epoch-mismatch',
      detail: `record is ${cur.state} at epoch ${cur.epoch}, this agent cleaned epoch ${reg.epoch}: it may rejoin only once the cluster fenced that epoch`,
    };
  }
  if (!cur) {
    if (reg.epoch === 0) return { ok: true, state: 'attached', epoch: 1 };
    return { ok: false, reason: 'fenced', detail: `no record for this host although it had epoch ${reg.epoch}: treated as fenced` };
  }
  if (cur.state === 'fenced' || cur.state === 'retired') return { ok: false, reason: 'fenced', detail: `record is ${cur.state} at epoch ${cur.epoch}` };
  if (cur.epoch !== reg.epoch) return { ok: false, reason: 'epoch-mismatch', detail: `record epoch ${cur.epoch}, host epoch ${reg.epoch}` };
  return { ok: true, state: 'attached', epoch: cur.epoch };
}
