/**
 * The controller's side of issue 11 (docs/peer-check.md "What the controller commits to"), on the
 * pure core: the freeze contract's publication, the rule never looser than what pool hosts
 * acknowledged, and the commitments C1-C4 — each a table of (state, input) -> effects.
 */
import { describe, expect, it } from 'vitest';
import { CONTROLLER_SCHEMA, toControllerConfig } from '../../src/cli/commands/controller.js';
import { resolveConfig } from '../../src/cli/config-schema.js';
import type { HostRecord } from '../../src/domain/host-record.js';
import { countPool, type PoolMember } from '../../src/domain/mass-freeze.js';
import { calls, Driver, entry, ok, ops, T, timersSet, unavailable } from '../support/controller-step.js';
import type { Call } from '../../src/domain/controller/types.js';

const LOSS = 20_000;

function contractWrites(d: Driver): Extract<Call, { op: 'put-contract' }>['contract'][] {
  return calls(d.all, 'put-contract').map((c) => (c.call.op === 'put-contract' ? c.call.contract : undefined)!);
}

/** Commits the last contract write the core asked for. */
function contractOk(d: Driver): void {
  const w = calls(d.all, 'put-contract').at(-1)!;
  d.reply(w.req, { op: 'put-contract' });
}

const hosts = (n: number, over: Partial<HostRecord> = {}) => Array.from({ length: n }, (_, i) => entry(`h${i}`, over));

describe('freeze contract: publication', () => {
  it('written once the host view is synced: version 1, the share, a full fence window, the pool size, the floor', () => {
    const d = new Driver();
    d.leading(hosts(3));
    expect(contractWrites(d)).toEqual([{ version: 1, share: 0.55, resumeDelay: T.fenceWindow, poolSize: 3, floor: { share: 0.55, resumeDelay: T.fenceWindow } }]);
  });

  it('a configured longer resume delay is published; a shorter one changes nothing', () => {
    expect(contractWrites(new Driver({ resumeDelay: 30_000 }).leading(hosts(2)))[0]).toMatchObject({ resumeDelay: 30_000 });
    expect(contractWrites(new Driver({ resumeDelay: 1000 }).leading(hosts(2)))[0]).toMatchObject({ resumeDelay: T.fenceWindow });
  });

  it('a new share bumps the version; the floor keeps the tightest ever published', () => {
    const d = new Driver({ freezeShare: 0.6 });
    d.leading(hosts(3), undefined, [], { version: 3, share: 0.5, resumeDelay: 20_000, poolSize: 3 });
    expect(contractWrites(d)).toEqual([{ version: 4, share: 0.6, resumeDelay: T.fenceWindow, poolSize: 3, floor: { share: 0.5, resumeDelay: 20_000 } }]);
  });

  it('the same contract already published: nothing is written', () => {
    const d = new Driver();
    d.leading(hosts(3), undefined, [], { version: 2, share: 0.55, resumeDelay: T.fenceWindow, poolSize: 3 });
    expect(contractWrites(d)).toEqual([]);
  });

  it('a pool size change alone is coalesced: at most one write per contractPoolInterval, same version', () => {
    const d = new Driver();
    d.leading(hosts(3));
    contractOk(d);
    const t0 = d.mono;
    for (let i = 0; i < 20; i++) {
      d.at(t0 + 10 * i).hostEvent({ kind: 'record', hostId: `n${i}`, record: entry(`n${i}`).record!, revision: String(200 + 2 * i) });
      d.hostEvent({ kind: 'alive', hostId: `n${i}`, alive: { epoch: 1, agentVersion: 't', lease: `l${i}` }, revision: String(201 + 2 * i) });
    }
    d.at(t0 + 300).fire('freeze-check');
    expect(contractWrites(d)).toHaveLength(1); // the first write was < 5 s ago: one timer, no write per event
    expect(timersSet(d.all).filter((t) => t.startsWith('contract@'))).toHaveLength(1);
    d.at(t0 + 5000).fire('contract');
    expect(contractWrites(d)).toHaveLength(2);
    expect(contractWrites(d)[1]).toMatchObject({ version: 1, poolSize: 23 });
  });

  it('a failed write is retried', () => {
    const d = new Driver();
    d.leading(hosts(3));
    d.fail(calls(d.all, 'put-contract')[0]!.req, unavailable);
    d.at(d.mono + 1000).fire('contract');
    expect(contractWrites(d)).toHaveLength(2);
  });
});

describe('freeze contract: never looser than what pool hosts acknowledged', () => {
  // Published v3 with share 0.4; this controller wants 0.55. 2 of 4 hosts detached = 50 %.
  const setup = (seen: number | undefined) => {
    const d = new Driver();
    const over = seen === undefined ? {} : { freezeContractSeen: seen };
    d.leading([entry('a', over), entry('b', over), entry('c', over), entry('d', over)], undefined, [], { version: 3, share: 0.4, resumeDelay: T.fenceWindow, poolSize: 4 });
    contractOk(d); // v4, share 0.55
    d.at(LOSS).hostEvent({ kind: 'alive-deleted', hostId: 'a', revision: '101' });
    d.hostEvent({ kind: 'alive-deleted', hostId: 'b', revision: '102' });
    d.at(LOSS + 200).fire('freeze-check');
    return d;
  };

  it('hosts still acknowledge v3 (share 0.4): 50 % freezes', () => {
    const d = setup(3);
    expect(contractWrites(d)[0]).toMatchObject({ version: 4, share: 0.55 });
    expect(d.s.freezeRule).toEqual({ share: 0.4, resumeDelay: T.fenceWindow });
    expect(d.s.freeze.mode).toBe('frozen');
  });

  it('a host with no acknowledgement: the floor (tightest ever) applies', () => {
    const d = setup(undefined);
    expect(d.s.freezeRule?.share).toBe(0.4);
    expect(d.s.freeze.mode).toBe('frozen');
  });

  it('once every pool host acknowledged v4, the looser share applies', () => {
    const d = setup(3);
    let r = 200;
    for (const id of ['a', 'b', 'c', 'd']) d.hostEvent({ kind: 'record', hostId: id, record: { ...d.s.hosts.get(id)!.record!, freezeContractSeen: 4 }, revision: String(r++) });
    d.at(LOSS + 400).fire('freeze-check');
    expect(d.s.freezeRule).toEqual({ share: 0.55, resumeDelay: T.fenceWindow });
    expect(d.s.freeze.mode).toBe('resuming');
  });
});

describe('C1: a pool host whose alive key is gone counts as detached', () => {
  it('3 of 4 leases gone, detach txns still in flight (records say attached): frozen', () => {
    const d = new Driver();
    d.leading(hosts(4));
    d.at(LOSS);
    for (const [i, id] of ['h0', 'h1', 'h2'].entries()) d.hostEvent({ kind: 'alive-deleted', hostId: id, revision: String(101 + i) });
    expect(ops(d.all).filter((o) => o === 'commit:host-detached')).toHaveLength(3); // not replied: records still attached
    d.at(LOSS + 200).fire('freeze-check');
    expect(d.s.detachedCount).toEqual({ detached: 3, total: 4 });
    expect(d.s.freeze.mode).toBe('frozen');
  });

  it('countPool: attached without alive counts; fenced, retired and unknown hosts do not', () => {
    const m: Record<string, PoolMember> = {
      a: { state: 'attached', alive: true },
      b: { state: 'attached', alive: false },
      c: { state: 'ready', alive: false },
      d: { state: 'detached', alive: false },
      e: { state: 'fenced', alive: false },
      f: { state: 'retired', alive: false },
    };
    expect(countPool((id) => m[id], Object.keys(m))).toEqual({ detached: 3, total: 4 });
  });
});

describe('C6: no missed peak', () => {
  it('two witnesses revoked and back within one debounce window: the freeze is entered and left through resuming', () => {
    const d = new Driver();
    d.leading(hosts(4));
    d.at(LOSS);
    let r = 101;
    // h0 lost earlier; h1 and h2 (its witnesses) lose their leases and re-register in one batch
    for (const id of ['h0', 'h1', 'h2']) d.hostEvent({ kind: 'alive-deleted', hostId: id, revision: String(r++) });
    for (const id of ['h1', 'h2']) d.hostEvent({ kind: 'alive', hostId: id, alive: { epoch: 1, agentVersion: 't', lease: `l2-${id}` }, revision: String(r++) });
    d.at(LOSS + 200).fire('freeze-check');
    // without C6 the debounced evaluation sees 1 of 4 detached and never freezes
    expect(d.s.freeze.mode).toBe('resuming');
  });
});

describe('C7: a host that left the pool keeps counting as detached for the leave grace', () => {
  it('fenced outside a freeze: counts as detached until ttl + fenceWindow + 2 drift after, then not', () => {
    const d = new Driver();
    d.leading(hosts(3));
    d.at(LOSS);
    // h0 was fenced (no freeze: 1 of 3); a peer (h1) that counted it as a witness is cut off next
    d.hostEvent({ kind: 'record', hostId: 'h0', record: { ...d.s.hosts.get('h0')!.record!, state: 'fenced' }, revision: '300' });
    d.hostEvent({ kind: 'alive-deleted', hostId: 'h1', revision: '301' });
    d.at(LOSS + 200).fire('freeze-check');
    expect(d.s.detachedCount).toEqual({ detached: 2, total: 3 });
    expect(d.s.freeze.mode).toBe('frozen');
    const grace = T.ttl + T.fenceWindow + 2 * T.clockDriftMargin;
    d.at(LOSS + grace + 1).fire('freeze-check');
    expect(d.s.detachedCount).toEqual({ detached: 1, total: 2 });
    expect(d.s.freeze.mode).toBe('resuming');
  });
});

describe('C3: while frozen or resuming, the pool is the one at the freeze', () => {
  const frozen = () => {
    const d = new Driver();
    d.leading(hosts(4));
    d.at(LOSS);
    for (const [i, id] of ['h0', 'h1', 'h2'].entries()) d.hostEvent({ kind: 'alive-deleted', hostId: id, revision: String(101 + i) });
    d.at(LOSS + 200).fire('freeze-check');
    expect(d.s.freeze.mode).toBe('frozen');
    return d;
  };

  it('hosts registered after the freeze began count in neither number', () => {
    const d = frozen();
    let r = 300;
    for (let i = 0; i < 10; i++) {
      d.hostEvent({ kind: 'record', hostId: `n${i}`, record: entry(`n${i}`).record!, revision: String(r++) });
      d.hostEvent({ kind: 'alive', hostId: `n${i}`, alive: { epoch: 1, agentVersion: 't', lease: `l${i}` }, revision: String(r++) });
    }
    d.at(LOSS + 400).fire('freeze-check');
    expect(d.s.detachedCount).toEqual({ detached: 3, total: 4 });
    expect(d.s.freeze.mode).toBe('frozen');
  });

  it('pool hosts fenced or retired by an operator still count as detached', () => {
    const d = frozen();
    d.hostEvent({ kind: 'record', hostId: 'h0', record: { ...d.s.hosts.get('h0')!.record!, state: 'fenced' }, revision: '300' });
    d.hostEvent({ kind: 'record', hostId: 'h1', record: { ...d.s.hosts.get('h1')!.record!, state: 'retired' }, revision: '301' });
    d.at(LOSS + 400).fire('freeze-check');
    expect(d.s.detachedCount).toEqual({ detached: 3, total: 4 });
    expect(d.s.freeze.mode).toBe('frozen');
  });

  it('frozen again while resuming: still the pool of the first freeze', () => {
    const d = frozen();
    let r = 300;
    for (const id of ['h0', 'h1', 'h2']) d.hostEvent({ kind: 'alive', hostId: id, alive: { epoch: 1, agentVersion: 't', lease: `l-${id}` }, revision: String(r++) });
    d.at(LOSS + 400).fire('freeze-check');
    expect(d.s.freeze.mode).toBe('resuming');
    for (let i = 0; i < 6; i++) {
      d.hostEvent({ kind: 'record', hostId: `n${i}`, record: entry(`n${i}`).record!, revision: String(r++) });
      d.hostEvent({ kind: 'alive', hostId: `n${i}`, alive: { epoch: 1, agentVersion: 't', lease: `ln${i}` }, revision: String(r++) });
    }
    for (const id of ['h0', 'h1', 'h2']) d.hostEvent({ kind: 'alive-deleted', hostId: id, revision: String(r++) });
    d.at(LOSS + 600).fire('freeze-check');
    expect(d.s.detachedCount).toEqual({ detached: 3, total: 4 });
    expect(d.s.freeze.mode).toBe('frozen');
    expect([...d.s.freezePool!].sort()).toEqual(['h0', 'h1', 'h2', 'h3']);
  });

  it('over once back to normal: the pool is the current one again', () => {
    const d = frozen();
    let r = 300;
    for (const id of ['h0', 'h1', 'h2']) d.hostEvent({ kind: 'alive', hostId: id, alive: { epoch: 1, agentVersion: 't', lease: `l-${id}` }, revision: String(r++) });
    d.at(LOSS + 400).fire('freeze-check');
    expect(d.s.freeze.mode).toBe('resuming');
    d.at(LOSS + 400 + T.fenceWindow).fire('freeze-resume');
    expect(d.s.freeze.mode).toBe('normal');
    expect(d.s.freezePool).toBeUndefined();
  });
});

/** Leader with a, b, c; `a` detached at LOSS (deadline LOSS + window, detach committed at 102). */
function detachedA(d: Driver): void {
  d.leading([entry('a'), entry('b'), entry('c')]);
  d.at(LOSS);
  const fx = d.hostEvent({ kind: 'alive-deleted', hostId: 'a', revision: '101' });
  d.reply(calls(fx, 'commit')[0]!.req, ok('102'));
}

describe('C4: no fence until ttl + electionTolerance + revokeSlack after the last raft term change', () => {
  const wait = T.ttl + T.electionTolerance + 1000 + 3; // revokeSlack(3 hosts) = 1003 ms

  it('a term change seen after the loss (more than a TTL: no extension): the due fence waits', () => {
    const d = new Driver();
    detachedA(d);
    const seen = LOSS + T.ttl + 1000;
    d.at(seen).input({ kind: 'raft-term', term: 6, at: d.now });
    d.at(LOSS + T.fenceWindow);
    const fx = d.fire('fence:a');
    expect(ops(fx)).toEqual([]);
    expect(timersSet(fx)).toEqual([`fence:a@${seen + wait - (LOSS + T.fenceWindow)}`]);
    d.at(seen + wait);
    expect(ops(d.fire('fence:a'))).toEqual(['get-host']);
  });

  it('the largest ttl of the pool counts', () => {
    const d = new Driver();
    d.leading([entry('a'), entry('b', { timings: { ...T, ttl: 9000 } }), entry('c')]);
    d.at(LOSS);
    d.reply(calls(d.hostEvent({ kind: 'alive-deleted', hostId: 'a', revision: '101' }), 'commit')[0]!.req, ok('102'));
    const seen = LOSS + T.ttl + 1000;
    d.at(seen).input({ kind: 'raft-term', term: 6, at: d.now });
    d.at(LOSS + T.fenceWindow);
    expect(timersSet(d.fire('fence:a'))).toEqual([`fence:a@${seen + 9000 + T.electionTolerance + 1003 - (LOSS + T.fenceWindow)}`]);
  });
});

describe('C2: a fence only on a host view caught up with the pre-fence read', () => {
  const due = () => {
    const d = new Driver();
    detachedA(d);
    d.at(LOSS + T.fenceWindow);
    return { d, read: calls(d.fire('fence:a'), 'get-host')[0]! };
  };

  it('read at a revision the view holds: fenced at once', () => {
    const { d, read } = due();
    expect(ops(d.reply(read.req, { op: 'get-host', host: { hostId: 'a' }, revision: '100' }))).toEqual(['commit:host-fenced']);
  });

  it('read newer than the view: a barrier first; fenced once the watch delivered it', () => {
    const { d, read } = due();
    expect(ops(d.reply(read.req, { op: 'get-host', host: { hostId: 'a' }, revision: '150' }))).toEqual(['sync-hosts']);
    expect(d.s.fencesInFlight).toBe(1); // the slot is kept
    d.reply(calls(d.all, 'sync-hosts')[0]!.req, { op: 'sync-hosts', revision: '151' });
    expect(ops(d.input({ kind: 'hosts-progress', watch: d.watch, revision: '151' }))).toEqual(['commit:host-fenced']);
  });

  it('changes the view was missing freeze the cluster: no fence', () => {
    const { d, read } = due();
    d.reply(read.req, { op: 'get-host', host: { hostId: 'a' }, revision: '150' });
    d.hostEvent({ kind: 'alive-deleted', hostId: 'b', revision: '140' });
    d.hostEvent({ kind: 'alive-deleted', hostId: 'c', revision: '141' });
    const fx = d.input({ kind: 'hosts-progress', watch: d.watch, revision: '151' });
    expect(ops(fx)).not.toContain('commit:host-fenced');
    expect(d.s.freeze.mode).toBe('frozen');
    expect(d.s.fencesInFlight).toBe(0);
  });

  it('stepping down forgets a parked fence, the view revision and the contract state', () => {
    const { d, read } = due();
    d.reply(read.req, { op: 'get-host', host: { hostId: 'a' }, revision: '150' });
    expect(d.s.fenceParked.size).toBe(1);
    const ka = calls(d.at(d.mono + 1000).fire('keepalive'), 'keep-leadership')[0]!;
    d.reply(ka.req, { op: 'keep-leadership', answer: 'lost' });
    expect(d.s.leader).toBe(false);
    expect(d.s.fenceParked.size).toBe(0);
    expect(d.s.hostsRev).toBe(0n);
    expect(d.s.contractKnown).toBe(false);
    expect(d.s.fencesInFlight).toBe(0);
  });

  it('a failed barrier is asked again shortly', () => {
    const { d, read } = due();
    d.reply(read.req, { op: 'get-host', host: { hostId: 'a' }, revision: '150' });
    d.fail(calls(d.all, 'sync-hosts')[0]!.req, unavailable);
    d.at(d.mono + 1000);
    expect(ops(d.fire('hosts-barrier'))).toEqual(['sync-hosts']);
  });
});

describe('tether controller --resume-delay', () => {
  it('0 by default (the pool\'s longest fence window); a duration otherwise', () => {
    expect(toControllerConfig(resolveConfig(CONTROLLER_SCHEMA, { etcdEndpoints: 'http://e:1' }, {})).resumeDelay).toBe(0);
    expect(toControllerConfig(resolveConfig(CONTROLLER_SCHEMA, { etcdEndpoints: 'http://e:1' }, { TETHER_RESUME_DELAY: '60s' })).resumeDelay).toBe(60_000);
  });
});
