/**
 * The nemesis: a seeded schedule of faults drawn up front (so a failing schedule can be shrunk by
 * re-running subsets of it), and how each fault acts on a {@link SimWorld}.
 *
 * Fault kinds (ARCHITECTURE.md, "The fault model"): host<->etcd partitions (both ways, one way each
 * way), controller<->etcd partitions, agent crash (and restart), agent hang (SIGSTOP/SIGCONT),
 * guardian death, controller crash (and restart: the other replica takes over meanwhile), etcd
 * leader change, with etcd 3.4's anomalies (early revoke of a host's lease by the deposed leader,
 * renew after revoke), quorum loss, operator hold/release, drain, power-off plus the operator's
 * confirmed fence, a duplicate agent with the same host id (from another state dir, or a clone of
 * the host's state dir booted on another machine), malformed records written raw, every
 * watch stream broken at once (an etcd member restart). The peer channel (issue 11): a full etcd
 * outage (no member reachable by anyone, longer than the watchdog), more than the freeze share of
 * the hosts cut from etcd while they still reach each other (or any group of 2 to n-1 of them), hosts cut from each other on the peer
 * channel (either way), a host's peer answers delayed past their round (delivered to a later round:
 * stale), a host's answers to some peers lost (partial).
 *
 * To add a fault kind: add it to {@link FAULT_KINDS} with a weight, draw its target and duration in
 * {@link drawFault}, and implement its start (and end, at `at + durationMs`) in {@link applyFault};
 * the heal phase (`healEverything`) must undo whatever it leaves behind.
 */
import { setDraining } from '../../cli/host-drain.js';
import { operatorFence, setHostHold } from '../../controller/operator.js';
import type { ClusterVmRecord } from '../../domain/cluster-vm.js';
import { DEFAULT_FREEZE_SHARE } from '../../domain/mass-freeze.js';
import type { Prng } from './prng.js';
import type { SimWorld } from './world.js';

/** Every fault the nemesis draws from, with its relative weight. */
export const FAULT_KINDS = {
  partition: 6,
  'partition-to-etcd': 3,
  'partition-from-etcd': 3,
  'controller-partition': 3,
  'agent-crash': 4,
  'agent-hang': 3,
  'guardian-kill': 3,
  'controller-crash': 3,
  'leader-change': 3,
  'early-revoke': 3,
  'renew-after-revoke': 2,
  'quorum-loss': 2,
  hold: 3,
  drain: 2,
  'power-off-fence': 2,
  'duplicate-agent': 2,
  'cloned-agent': 2,
  malformed: 2,
  'watch-break': 2,
  'etcd-outage': 2,
  'majority-cut': 3,
  'group-cut': 2,
  'peer-partition': 3,
  'stale-answers': 2,
  'partial-answers': 2,
  'late-keepalives': 2,
} as const;

/** A kind of fault. */
export type FaultKind = keyof typeof FAULT_KINDS;

/** One fault of a schedule. `durationMs` 0: instantaneous. */
export interface FaultOp {
  readonly at: number;
  readonly kind: FaultKind;
  readonly target: string;
  readonly durationMs: number;
}

/** Draws a schedule of faults in [5 s, faultMs) for a world of `hosts` hosts. */
export function drawSchedule(rng: Prng, hosts: number, faultMs: number, kinds: readonly FaultKind[] = Object.keys(FAULT_KINDS) as FaultKind[]): FaultOp[] {
  const n = rng.range(1, 8);
  const ops: FaultOp[] = [];
  for (let i = 0; i < n; i++) ops.push(drawFault(rng, hosts, faultMs, kinds));
  return ops.sort((a, b) => a.at - b.at);
}

function drawFault(rng: Prng, hosts: number, faultMs: number, kinds: readonly FaultKind[]): FaultOp {
  const total = kinds.reduce((s, k) => s + FAULT_KINDS[k], 0);
  let x = rng.float() * total;
  let kind = kinds[0]!;
  for (const k of kinds) {
    x -= FAULT_KINDS[k];
    if (x < 0) {
      kind = k;
      break;
    }
  }
  const at = Math.round(5000 + rng.float() * (faultMs - 5000));
  const host = `host-${rng.range(1, hosts)}`;
  // Short blips and long cuts, both around the interesting thresholds (detach 3 s, watchdog 8 s, ttl + window 16 s).
  const dur = () => Math.round(rng.pick([rng.range(200, 2500), rng.range(2500, 9000), rng.range(9000, 40_000)]));
  switch (kind) {
    case 'controller-partition':
    case 'controller-crash':
      return { at, kind, target: `ctl-${rng.range(1, 2)}`, durationMs: dur() };
    case 'leader-change':
    case 'quorum-loss':
    case 'watch-break':
      return { at, kind, target: 'etcd', durationMs: kind === 'quorum-loss' ? rng.range(500, 6000) : 0 };
    case 'guardian-kill':
    case 'renew-after-revoke':
      return { at, kind, target: host, durationMs: 0 };
    case 'malformed':
      return { at, kind, target: rng.pick(['vm-garbage', 'vm-wrong-types', 'host-garbage']), durationMs: 0 };
    case 'etcd-outage':
      // Every member down (or no quorum) for longer than the watchdog (8 s): 10 to 20 s.
      return { at, kind, target: 'etcd', durationMs: rng.range(10_000, 20_000) };
    case 'majority-cut': {
      // More than the freeze share (55 %) of the hosts cut from etcd both ways; the peer links stay.
      const k = rng.range(Math.min(hosts, Math.floor(FREEZE_SHARE * hosts) + 1), hosts);
      return { at, kind, target: someHosts(rng, hosts, k).join('+'), durationMs: dur() };
    }
    case 'group-cut':
      // A group of 2 to n-1 hosts (a rack) cut from etcd at once, both ways; they still reach every peer.
      return { at, kind, target: someHosts(rng, hosts, rng.range(Math.min(2, hosts), Math.max(2, hosts - 1))).join('+'), durationMs: dur() };
    case 'peer-partition':
    case 'partial-answers': {
      // `host-2:host-1+host-3[:both|out|in]`: host-2's peer links (or its answers) to those hosts.
      const others = someHosts(rng, hosts, hosts).filter((h) => h !== host);
      const to = others.slice(0, rng.range(1, Math.max(1, others.length)));
      const dir = kind === 'peer-partition' ? `:${rng.pick(['both', 'out', 'in'])}` : '';
      return { at, kind, target: `${host}:${to.join('+')}${dir}`, durationMs: dur() };
    }
    default:
      return { at, kind, target: host, durationMs: dur() };
  }
}

/** The freeze share the controllers apply (the `majority-cut` fault cuts more than this). */
const FREEZE_SHARE = DEFAULT_FREEZE_SHARE;

/** `k` distinct hosts of `host-1..host-n` in a seeded order, sorted by name. */
function someHosts(rng: Prng, n: number, k: number): string[] {
  const all = Array.from({ length: n }, (_, i) => `host-${i + 1}`);
  for (let i = all.length - 1; i > 0; i--) {
    const j = rng.int(i + 1);
    [all[i], all[j]] = [all[j]!, all[i]!];
  }
  return all.slice(0, Math.max(0, Math.min(n, k))).sort();
}

/** One line per fault: `12.345s partition host-2 for 4.200s`. */
export function describeFault(op: FaultOp): string {
  return `${(op.at / 1000).toFixed(3)}s ${op.kind} ${op.target}${op.durationMs > 0 ? ` for ${(op.durationMs / 1000).toFixed(3)}s` : ''}`;
}

const DEADLINE = 2000;

/** Queues the start and the end of `op` on the world's scheduler. */
export function applyFault(w: SimWorld, op: FaultOp, index: number): void {
  const label = `nemesis ${op.kind} ${op.target}`;
  const p = w.stores.prefix;
  const start = (fn: () => void) => w.sched.at(op.at, label, fn);
  const end = (fn: () => void) => w.sched.at(op.at + op.durationMs, `${label} end`, fn);
  const ctl = () => Number(op.target.slice(4)) - 1;
  const aliveLease = () => w.model.get(`${p}hosts/${op.target}/alive`)?.lease;
  switch (op.kind) {
    case 'partition':
    case 'partition-to-etcd':
    case 'partition-from-etcd':
    case 'controller-partition': {
      const dir = op.kind === 'partition-to-etcd' ? 'to-etcd' : op.kind === 'partition-from-etcd' ? 'from-etcd' : 'both';
      start(() => {
        // Half of the cuts that stop the way to etcd keep the keepalives sent meanwhile in TCP's
        // buffer: etcd applies them when the way heals (docs/peer-check.md, trap 1).
        w.net.cut(op.target, dir, dir !== 'from-etcd' && w.rng.chance(0.5));
        // A cut cable sometimes also breaks the watch streams (the client re-lists).
        if (w.rng.chance(0.5)) for (const c of w.net.clientsOn(op.target)) w.model.endWatches(c);
      });
      end(() => w.net.heal(op.target));
      return;
    }
    case 'agent-crash':
      start(() => w.crashAgent(op.target));
      end(() => w.startAgent(op.target));
      return;
    case 'agent-hang':
      start(() => w.hosts.get(op.target)?.agent?.proc.hang());
      end(() => w.hosts.get(op.target)?.agent?.proc.resume());
      return;
    case 'guardian-kill':
      start(() => w.killGuardian(op.target));
      return;
    case 'controller-crash':
      start(() => w.crashController(ctl()));
      end(() => w.startController(ctl()));
      return;
    case 'leader-change':
      start(() => {
        if (!w.model.isUnavailable) w.model.electLeader();
      });
      return;
    case 'early-revoke':
      // etcd #15247: a deposed leader revokes the lease it saw no keepalives for — typically while
      // the host cannot reach the cluster either, so half of the time the host is cut for the duration.
      start(() => {
        const l = aliveLease();
        if (l !== undefined) w.model.earlyRevokeOnNextElection(l);
        if (!w.model.isUnavailable) w.model.electLeader();
        if (w.rng.chance(0.5)) {
          w.net.cut(op.target, 'both');
          w.sched.at(op.at + op.durationMs, `${label} end`, () => w.net.heal(op.target));
        }
      });
      return;
    case 'watch-break':
      // Every watch stream of every client ends (an etcd member restart, a proxy reset): all re-list.
      start(() => {
        for (const c of w.net.clientsOn()) w.model.endWatches(c);
      });
      return;
    case 'renew-after-revoke':
      start(() => {
        const l = aliveLease();
        if (l !== undefined) w.model.renewAfterRevoke(l);
      });
      return;
    case 'quorum-loss':
      start(() => w.model.unavailable(true));
      end(() => w.model.unavailable(false));
      return;
    case 'hold':
      start(() => w.operator(`hold ${op.target}`, () => setHostHold(w.opStore, w.opClock, op.target, true, DEADLINE)));
      end(() => w.operator(`release ${op.target}`, () => setHostHold(w.opStore, w.opClock, op.target, false, DEADLINE)));
      return;
    case 'drain':
      start(() => w.operator(`drain ${op.target}`, () => drainStart(w, op.target)));
      end(() => w.operator(`undrain ${op.target}`, () => setDraining(w.opStore, op.target, false)));
      return;
    case 'power-off-fence':
      start(() => w.powerOff(op.target));
      // The operator confirms the host is off, some time later (refused while its lease lives).
      w.sched.at(op.at + op.durationMs / 2, `${label} confirm`, () => w.operator(`fence ${op.target}`, () => operatorFence(w.opStore, w.opClock, op.target, DEADLINE)));
      end(() => w.powerOn(op.target));
      return;
    case 'duplicate-agent':
      start(() => w.startDuplicate(op.target));
      end(() => w.stopDuplicate(op.target));
      return;
    case 'cloned-agent':
      // A cloned VM image of the host booted elsewhere: same state dir (inventory, epoch, agent id);
      // odd durations: a restored backup whose agent id was reset (same epoch, new agent id).
      start(() => w.startDuplicate(op.target, op.durationMs % 2 === 0 ? 'clone' : 'clone-new-id'));
      end(() => w.stopDuplicate(op.target));
      return;
    case 'etcd-outage':
      // Every member stopped (connection refused) or no quorum (requests hang): nothing is written,
      // no lease expires; back, a new leader extends every live lease (etcd's Promote). Member
      // restarts end the watch streams, half of the time.
      start(() => {
        if (w.model.isUnavailable) return;
        w.model.unavailable(true, w.rng.chance(0.5) ? 'refuse' : 'hang');
        if (w.rng.chance(0.5)) for (const c of w.net.clientsOn()) w.model.endWatches(c);
      });
      end(() => w.model.unavailable(false));
      return;
    case 'majority-cut':
    case 'group-cut': {
      const targets = op.target.split('+');
      start(() => {
        const buffer = w.rng.chance(0.5);
        for (const h of targets) w.net.cut(h, 'both', buffer);
        if (w.rng.chance(0.5)) for (const h of targets) for (const c of w.net.clientsOn(h)) w.model.endWatches(c);
      });
      end(() => {
        for (const h of targets) w.net.heal(h);
      });
      return;
    }
    case 'peer-partition': {
      const [host, list, dir] = op.target.split(':') as [string, string, string];
      const others = list.split('+');
      start(() => {
        for (const o of others) {
          if (dir === 'in') w.peers.cut(o, host, false);
          else w.peers.cut(host, o, dir === 'both');
        }
      });
      end(() => {
        for (const o of others) w.peers.heal(host, o);
      });
      return;
    }
    case 'stale-answers':
      // The host's answers arrive after the round that asked (a timeout plus up to 3 s late).
      start(() => w.peers.delayAnswers(op.target, w.peerSettings.timeout + w.rng.range(0, 3000)));
      end(() => w.peers.delayAnswers(op.target, 0));
      return;
    case 'late-keepalives':
      // Every keepalive of the host reaches etcd just before its lease would expire (a TTL less 50 ms
      // to 1.5 s): applied, renewing the lease, long after the agent gave up on it (trap 1 without a cut).
      start(() => w.net.slowKeepalivesOf(op.target, w.t.ttl - w.rng.range(50, 1500)));
      end(() => w.net.slowKeepalivesOf(op.target, 0));
      return;
    case 'partial-answers': {
      // The host is asked and answers (a witness's promise is made), but the answers never arrive.
      const [host, list] = op.target.split(':') as [string, string];
      start(() => {
        for (const o of list.split('+')) w.peers.dropAnswers(host, o, true);
      });
      end(() => {
        for (const o of list.split('+')) w.peers.dropAnswers(host, o, false);
      });
      return;
    }
    case 'malformed':
      start(() => {
        // Each also in host-1's index (a hostile writer can put there too): the agent reads only its index.
        const bad = (value: string): void => {
          w.model.put(`${p}vms/sim/bad-${index}`, value);
          w.model.put(`${p}hostvms/host-1/sim/bad-${index}`, value);
        };
        if (op.target === 'vm-garbage') bad('{"uid": not json');
        else if (op.target === 'vm-wrong-types') bad(JSON.stringify({ uid: 7, spec: 'x', phase: 'running', hostId: 'host-1', hostEpoch: 'one', generation: -1 }));
        else w.model.put(`${p}hosts/ghost-${index}/record`, '\u0000garbage');
      });
      return;
  }
}

/** The first half of `tether host drain`: draining on, each VM `deleting` + `drain` (the host confirms with `lost`). */
async function drainStart(w: SimWorld, hostId: string): Promise<void> {
  const store = w.opStore;
  const h = await store.getHost(hostId, DEADLINE);
  if (!h.record || (h.record.state !== 'attached' && h.record.state !== 'ready')) return;
  await setDraining(store, hostId, true);
  for (const v of await store.listVms(DEADLINE)) {
    if (v.record.hostId !== hostId || v.record.phase === 'lost' || v.record.phase === 'deleting') continue;
    const next: ClusterVmRecord = { ...v.record, phase: 'deleting', drain: true, generation: v.record.generation + 1, updatedAt: w.opClock.now() };
    await store.commit({ vms: [{ key: v.key, expectRevision: v.revision, prevHostId: v.record.hostId ?? null, next }] }, DEADLINE);
  }
}

/** Ends every fault: links healed, processes resumed or restarted, machines on, holds released, drains ended, duplicates gone, quorum back. */
export function healEverything(w: SimWorld): void {
  w.sched.at(w.sched.now, 'nemesis heal everything', () => {
    w.net.healAll();
    w.peers.healAll();
    if (w.model.isUnavailable) w.model.unavailable(false);
    for (const id of [...w.duplicates.keys()]) w.stopDuplicate(id);
    for (const s of w.hosts.values()) {
      if (!s.poweredOn) w.powerOn(s.hostId);
      else if (s.agent?.proc.state === 'hung') s.agent.proc.resume();
      else if (!s.agent?.proc.alive) w.startAgent(s.hostId);
      const rec = w.model.get(`${w.stores.prefix}hosts/${s.hostId}/record`);
      if (rec?.value.includes('"hold":true')) w.operator(`release ${s.hostId}`, () => setHostHold(w.opStore, w.opClock, s.hostId, false, DEADLINE));
      if (rec?.value.includes('"draining":true')) w.operator(`undrain ${s.hostId}`, () => setDraining(w.opStore, s.hostId, false));
    }
    w.controllers.forEach((c, i) => {
      if (!c.proc?.alive) w.startController(i);
      else if (c.proc.state === 'hung') c.proc.resume();
    });
  });
}
