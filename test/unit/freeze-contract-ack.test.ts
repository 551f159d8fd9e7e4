/**
 * A host's side of the freeze contract (issue 11): the pure steps (src/domain/freeze-contract-ack.ts)
 * and the agent learning and acknowledging it in its hold poll (HoldSync, through the production
 * `KvClusterStore` over the etcd model).
 */
import { describe, expect, it } from 'vitest';
import type { HoldSync } from '../../src/agent/gc/hold-sync.js';
import { CONTRACT_POLL_EVERY, loadFreezeContract } from '../../src/agent/gc/hold-sync.js';
import { HostGc } from '../../src/agent/gc/host-gc.js';
import type { FreezeContract } from '../../src/domain/freeze-contract.js';
import { blendForHost, contractAckTxn, nextContractStep } from '../../src/domain/freeze-contract-ack.js';
import { DEFAULT_TIMINGS as T } from '../../src/domain/gc-timing.js';
import { Keyspace } from '../../src/domain/keyspace.js';
import { fakeHost } from '../support/host-harness.js';
import { ModelClusterStore } from '../support/model-cluster.js';
import { rec } from '../support/controller-step.js';

const v = (version: number, share: number, resumeDelay: number, poolSize = 3): FreezeContract => ({ version, share, resumeDelay, poolSize });

describe('freeze contract, host side (pure)', () => {
  it('the blend is the looser contract for the host: larger share, shorter delay, larger pool', () => {
    expect(blendForHost(v(1, 0.5, 20_000, 3), v(2, 0.6, 10_000, 5))).toEqual(v(1, 0.6, 10_000, 5));
    expect(blendForHost(v(1, 0.6, 10_000, 5), v(2, 0.5, 20_000, 3))).toEqual(v(1, 0.6, 10_000, 5));
  });

  const rows: [string, FreezeContract | undefined, number | undefined, FreezeContract | undefined, ReturnType<typeof nextContractStep>][] = [
    ['nothing published', v(1, 0.5, 10_000), 1, undefined, { kind: 'none' }],
    ['held and acknowledged', v(1, 0.5, 10_000), 1, v(1, 0.5, 10_000), { kind: 'none' }],
    ['same version, new pool size: adopted (no acknowledgement needed)', v(1, 0.5, 10_000, 3), 1, v(1, 0.5, 10_000, 9), { kind: 'adopt', contract: v(1, 0.5, 10_000, 9) }],
    ['the record already shows the version: adopted', undefined, 2, v(2, 0.5, 10_000), { kind: 'adopt', contract: v(2, 0.5, 10_000) }],
    ['a first contract: acknowledged before relying on anything', undefined, undefined, v(1, 0.5, 10_000), { kind: 'ack', interim: undefined, next: v(1, 0.5, 10_000) }],
    ['a new version: the blend meanwhile', v(1, 0.5, 20_000), 1, v(2, 0.6, 10_000), { kind: 'ack', interim: v(1, 0.6, 10_000), next: v(2, 0.6, 10_000) }],
    ['re-registered (record lost the field): acknowledged again, held meanwhile', v(2, 0.6, 10_000), undefined, v(2, 0.6, 10_000), { kind: 'ack', interim: v(2, 0.6, 10_000), next: v(2, 0.6, 10_000) }],
  ];
  for (const [what, held, seen, published, want] of rows) it(what, () => expect(nextContractStep(held, seen, published)).toEqual(want));

  it('the acknowledgement txn: only at the record epoch, attached or ready, alive on the lease', () => {
    const keys = new Keyspace('/t/');
    const cur = { record: rec('a'), modRevision: 7 };
    const alive = { holder: { lease: 'L' }, modRevision: 8 };
    const plan = contractAckTxn(keys, { hostId: 'a', epoch: 1, lease: 'L', version: 4 }, cur, alive, 5);
    expect('txn' in plan && plan.txn.compare).toHaveLength(2);
    expect(contractAckTxn(keys, { hostId: 'a', epoch: 2, lease: 'L', version: 4 }, cur, alive, 5)).toMatchObject({ done: { ok: false } });
    expect(contractAckTxn(keys, { hostId: 'a', epoch: 1, lease: 'M', version: 4 }, cur, alive, 5)).toMatchObject({ done: { ok: false } });
    expect(contractAckTxn(keys, { hostId: 'a', epoch: 1, lease: 'L', version: 4 }, { record: rec('a', { state: 'detached' }), modRevision: 7 }, alive, 5)).toMatchObject({ done: { ok: false } });
    expect(contractAckTxn(keys, { hostId: 'a', epoch: 1, lease: 'L', version: 4 }, { record: rec('a', { freezeContractSeen: 4 }), modRevision: 7 }, alive, 5)).toEqual({ done: { ok: true } });
  });
});

describe('freeze contract, agent: learned in the hold poll, acknowledged, persisted', () => {
  async function setup() {
    const h = fakeHost();
    const cluster = new ModelClusterStore(h.clock);
    const gc = new HostGc(h.ctx, cluster, { timings: T, bootId: 'boot-1', capacity: { vcpu: 2, memoryMb: 1024 }, agentVersion: 'test', agentId: 'agent-1', holder: 'test agent' });
    gc.start();
    await h.clock.advance(10);
    const holds = (gc as unknown as { holds: HoldSync }).holds;
    return { ...h, cluster, gc, holds };
  }
  const publish = (cluster: ModelClusterStore, c: FreezeContract) => cluster.model.put('/tether/controller/freeze-contract', JSON.stringify({ ...c, floor: { share: c.share, resumeDelay: c.resumeDelay } }));

  it('acknowledges the published version in its record, then relies on it (persisted for a restarted agent); a new version likewise', async () => {
    const s = await setup();
    expect(s.gc.phase).toBe('attached');
    expect(s.holds.contract()).toBeUndefined();
    publish(s.cluster, v(1, 0.55, 10_000, 4));
    // the contract is read on every CONTRACT_POLL_EVERY-th hold poll (one per 5 acks): 25 acks at most
    for (let i = 0; i < 5 * CONTRACT_POLL_EVERY + 2; i++) await s.clock.advance(T.heartbeatInterval);
    expect(s.cluster.record()?.freezeContractSeen).toBe(1);
    expect(s.holds.contract()).toEqual(v(1, 0.55, 10_000, 4));
    expect(loadFreezeContract(s.inventory)).toEqual(v(1, 0.55, 10_000, 4));

    publish(s.cluster, v(2, 0.5, 20_000, 4));
    for (let i = 0; i < 5 * CONTRACT_POLL_EVERY + 2; i++) await s.clock.advance(T.heartbeatInterval);
    expect(s.cluster.record()?.freezeContractSeen).toBe(2);
    expect(s.holds.contract()).toEqual(v(2, 0.5, 20_000, 4));
    s.gc.stop();
  });
});
