/**
 * One simulated Tether cluster: the etcd model, host machines each with a real agent (HostGc,
 * Agent, ClusterVmSync over the real stores) and a guardian process, two real controller replicas,
 * an operator, all on one {@link Scheduler} and one {@link SimNetwork}. The nemesis
 * (nemesis.ts) acts on it; the invariant checks run after every step.
 *
 * Invariants of the harness itself: nothing here reads the system clock or Math.random (every
 * choice comes from the run's {@link Prng}); every process of the cluster is a {@link SimProcess}
 * whose timers and deliveries go through the scheduler, so a crash or a hang is exact.
 */
import { Agent } from '../../agent/agent.js';
import { ClusterVmSync } from '../../agent/cluster-sync.js';
import { HostGc } from '../../agent/gc/host-gc.js';
import type { HostContext } from '../../agent/host-context.js';
import { Controller } from '../../controller/controller.js';
import { DEFAULT_TXN_LIMITS, type TxnLimits } from '../../domain/cluster-change.js';
import type { ClusterVmRecord } from '../../domain/cluster-vm.js';
import { messageOf } from '../../domain/errors.js';
import { DEFAULT_TIMINGS, type GcTimings } from '../../domain/gc-timing.js';
import type { HostRecord } from '../../domain/host-record.js';
import type { HostTimelineEvent } from '../../domain/timeline.js';
import type { VmSpec } from '../../domain/vm.js';
import type { ClusterStore } from '../../ports/cluster-store.js';
import type { Clock } from '../../ports/clock.js';
import type { ControllerStore } from '../../ports/controller-store.js';
import type { HostVmIndexStore } from '../../ports/host-vm-index.js';
import { decodeClusterVm } from '../../domain/codec.js';
import type { Kv, KvWatchEvent } from '../../ports/kv.js';
import type { Logger } from '../../ports/logger.js';
import { ETCD_34_LIMITS, EtcdModel, immediateTransport } from '../etcd-model/index.js';
import { MachineClock, type ProcessClock } from './clock.js';
import { SimGuardianFeed, launchGuardian, type SimGuardianProcess } from './guardian.js';
import { Prng } from './prng.js';
import { Scheduler, SimProcess, Trace } from './scheduler.js';
import { Incarnations, SimMachine, seededGuests } from './substrate.js';
import { MemoryInventory } from './inventory.js';
import { SimNetwork } from './transport.js';
import { SimPeerNet, simDirectory } from './peers.js';
import type { PeerCheckSettings } from '../../domain/peer-check.js';

/** How the simulator builds the real stores over a `Kv` (src/adapters/kv). */
export interface SimStores {
  cluster(kv: Kv, clock: Clock): ClusterStore;
  /** `txnLimits`: the model's txn limit when the run lowers it (`SimConfig.maxTxnOps`); etcd's defaults otherwise. */
  controller(kv: Kv, clock: Clock, ids: () => string, txnLimits?: TxnLimits): ControllerStore & HostVmIndexStore;
  /** The key prefix the stores use (e.g. `/tether/`). */
  readonly prefix: string;
}

/** Settings of one run. */
export interface SimConfig {
  readonly seed: number;
  readonly hosts: number;
  readonly vms: number;
  readonly timings?: GcTimings;
  /** Keep every trace line (for a timeline or a diff), not only the hash. */
  readonly keepTrace?: boolean;
  /**
   * Sim-only hole (the re-introduced-holes harness): agents run WITHOUT a guardian process, so the
   * watchdog lives only inside the agent (as before issue 7). A choice of the simulated
   * deployment, like running `tether agent` without its guardian; production code has no switch.
   */
  readonly noGuardian?: boolean;
  /**
   * Sim-only hole: agents register WITHOUT a machine id (as agents did before machine ids), so a
   * clone of a host's state dir on another machine is told apart only by its agent id (the
   * `cloned-agent` finding of docs/sim.md). Production agents always send one.
   */
  readonly noMachineId?: boolean;
  /**
   * etcd's `--max-txn-ops` for this run (default 128), told to the model and to every controller
   * store alike, as an operator sets both. A low value lets a small world reach the paths that
   * split work across txns (a fenced host with more VMs than one txn holds).
   */
  readonly maxTxnOps?: number;
  /**
   * Run the agents WITHOUT the peer check (issue 11): a detached host fences on time whatever its
   * peers say, as before. For comparisons (e.g. what a full etcd outage costs without it).
   */
  readonly noPeerCheck?: boolean;
}

/** An invariant found broken. */
export interface Violation {
  readonly at: number;
  readonly invariant: 'double-run' | 'fenced-epoch-write' | 'false-fence' | 'fence-progress' | 'liveness' | 'host-index';
  readonly detail: string;
}

/** Undisturbed controller time within which a fenced host's VMs must be marked lost (fence-progress). */
export const FENCE_PROGRESS_MS = 15_000;

/** Sim time 0 as wall ms (timelines). */
export const SIM_ORIGIN_WALL = 1_767_225_600_000;

const silent: Logger = { debug: () => undefined, info: () => undefined, warn: () => undefined, error: () => undefined, child: () => silent };

/** One agent process and what it runs. */
export interface AgentInstance {
  readonly proc: SimProcess;
  readonly clock: ProcessClock;
  readonly gc: HostGc;
  readonly sync: ClusterVmSync;
  readonly agent: Agent;
}

/** A host: its machine (what survives the agent) and the processes on it. */
export interface HostSlot {
  readonly hostId: string;
  machine: SimMachine;
  /** The node name partitions act on. */
  readonly node: string;
  readonly agentId: string;
  agent: AgentInstance | undefined;
  guardian: SimGuardianProcess | undefined;
  agentN: number;
  guardianN: number;
  boots: number;
  poweredOn: boolean;
  /** Sim times at which an agent of this host got a keepalive answer with a live TTL. */
  readonly acks: number[];
  readonly events: HostTimelineEvent[];
}

/** A controller replica slot. */
export interface ControllerSlot {
  readonly name: string;
  readonly clock: MachineClock;
  proc: SimProcess | undefined;
  controller: Controller | undefined;
  n: number;
}

interface WriterCtx {
  readonly hostId?: string;
  readonly epoch?: number;
  readonly duplicate?: boolean;
}

/** The simulated cluster. */
export class SimWorld {
  readonly trace: Trace;
  readonly sched: Scheduler;
  readonly rng: Prng;
  readonly net: SimNetwork;
  /** The peer channel between hosts (agent-to-agent questions) and its faults. */
  readonly peers: SimPeerNet;
  /** The peer check's settings every agent runs with (interval and timeout: one heartbeat interval). */
  readonly peerSettings: PeerCheckSettings;
  private readonly nonces: Prng;
  readonly model: EtcdModel;
  readonly ledger: Incarnations;
  readonly t: GcTimings;
  readonly hosts = new Map<string, HostSlot>();
  readonly controllers: ControllerSlot[] = [];
  readonly violations: Violation[] = [];
  /** Facts worth reporting that are not violations (e.g. VMs left failed). */
  readonly notes: string[] = [];
  /** Duplicate agents (same host id, other machine), by host id. */
  readonly duplicates = new Map<string, { machine: SimMachine; agent: AgentInstance }>();
  private readonly etcdProc: SimProcess;
  private readonly opProc: SimProcess;
  readonly opClock: ProcessClock;
  readonly opStore: ControllerStore;
  private readonly guests: Prng;
  private readonly uids: Prng;
  /** Revision -> who wrote it and the host record just before. */
  private readonly writers = new Map<number, { from: string; ctx: WriterCtx; recordBefore?: Pick<HostRecord, 'state' | 'epoch'> }>();
  private readonly hostStates = new Map<string, string>();
  /** Hosts whose record is `fenced` now: since when (sim ms) and at which epoch (fence-progress check). */
  private readonly fencedSince = new Map<string, { readonly at: number; readonly epoch: number; reported: boolean }>();
  private lastProgressCheck = 0;
  /**
   * Sim-time intervals in which the controllers were disturbed (crash, partition, quorum loss, leader
   * change, broken watches): the fence-progress check only counts undisturbed time. Set by the run.
   */
  controlFaults: readonly { readonly from: number; readonly to: number }[] = [];
  private vmSeq = 0;

  constructor(
    readonly cfg: SimConfig,
    readonly stores: SimStores,
  ) {
    this.t = cfg.timings ?? DEFAULT_TIMINGS;
    this.trace = new Trace(cfg.keepTrace ?? false);
    this.sched = new Scheduler(this.trace);
    this.rng = new Prng(cfg.seed);
    this.net = new SimNetwork(this.sched, this.rng.fork('net'));
    this.peers = new SimPeerNet(this.sched, this.rng.fork('peers'), (hostId) => {
      const slot = this.hosts.get(hostId);
      const a = slot?.agent;
      if (!slot || !a || !slot.poweredOn) return undefined;
      return { proc: a.proc, node: slot.node, answer: (ask) => a.gc.peerAnswer(ask) };
    });
    this.nonces = this.rng.fork('nonces');
    this.peerSettings = { interval: this.t.heartbeatInterval, timeout: this.t.heartbeatInterval };
    this.guests = this.rng.fork('guests');
    this.uids = this.rng.fork('uids');
    this.ledger = new Incarnations(this.sched);
    this.etcdProc = new SimProcess('etcd', this.sched);
    const etcdClock = new MachineClock(this.sched, 'etcd', 1, 50_000, SIM_ORIGIN_WALL - 50_000);
    this.model = new EtcdModel(etcdClock.forProcess(this.etcdProc), cfg.maxTxnOps === undefined ? {} : { limits: { ...ETCD_34_LIMITS, maxTxnOps: cfg.maxTxnOps } });
    this.opProc = new SimProcess('operator', this.sched);
    this.opClock = new MachineClock(this.sched, 'operator', 1, 0, SIM_ORIGIN_WALL).forProcess(this.opProc);
    this.opStore = stores.controller(this.client('operator', this.opProc, 'operator'), this.opClock, () => this.eventId(), this.txnLimits());
    this.net.hooks = {
      sent: (from) => this.writerCtx(from),
      before: (from, what) => (what === 'txn' ? this.recordOf(this.hostOfClient(from)) : undefined),
      applied: (from, _what, sent, before) => {
        const ctx = sent as WriterCtx;
        if (ctx.hostId === undefined) return;
        this.writers.set(this.model.revision, { from, ctx, ...(before ? { recordBefore: before as Pick<HostRecord, 'state' | 'epoch'> } : {}) });
      },
      answered: (from, what, value) => {
        if (what !== 'leaseKeepAlive') return;
        const ctx = this.writerCtx(from);
        if (ctx.hostId === undefined || ctx.duplicate) return;
        if ((value as { ttlMs?: number }).ttlMs! > 0) this.hosts.get(ctx.hostId)?.acks.push(this.sched.now);
      },
    };
    this.observe();
    for (let i = 1; i <= cfg.hosts; i++) this.addHost(`host-${i}`);
    for (let i = 1; i <= 2; i++) {
      const rate = 1 + (this.rng.float() - 0.5) * 0.004;
      const origin = this.rng.float() * 1e6;
      this.controllers.push({ name: `ctl-${i}`, clock: new MachineClock(this.sched, `ctl-${i}`, rate, origin, SIM_ORIGIN_WALL - origin + (this.rng.float() - 0.5) * 400), proc: undefined, controller: undefined, n: 0 });
    }
  }

  /** Wall ms of sim time now (timelines). */
  wallNow(): number {
    return SIM_ORIGIN_WALL + this.sched.now;
  }

  /** A model client for a process on `node`. */
  client(name: string, proc: SimProcess, node: string): Kv {
    this.net.register(name, proc, node);
    return this.model.client(name, this.net);
  }

  // ---- hosts ----------------------------------------------------------------------------------

  private newMachine(hostId: string, node: string): SimMachine {
    const rate = 1 + (this.rng.float() - 0.5) * 0.004;
    const origin = this.rng.float() * 1e6;
    // Wall clocks agree with sim time within ± 200 ms at the start, then drift apart at their rates.
    const clock = new MachineClock(this.sched, node, rate, origin, SIM_ORIGIN_WALL - origin + (this.rng.float() - 0.5) * 400);
    return new SimMachine(hostId, this.sched, clock, this.ledger, seededGuests(this.guests), `${node}-boot-1`);
  }

  private addHost(hostId: string): void {
    const slot: HostSlot = {
      hostId, node: hostId, machine: this.newMachine(hostId, hostId), agentId: `agent-${hostId}`, agent: undefined, guardian: undefined,
      agentN: 0, guardianN: 0, boots: 1, poweredOn: true, acks: [], events: [],
    };
    this.hosts.set(hostId, slot);
  }

  /** Starts a new agent process on the host (after a crash, or the first one). */
  startAgent(hostId: string): void {
    const slot = this.hosts.get(hostId)!;
    if (!slot.poweredOn) return;
    if (slot.agent?.proc.alive) slot.agent.proc.kill();
    slot.agent = this.makeAgent(slot.machine, slot.node, hostId, slot.agentId, `${hostId}/agent#${++slot.agentN}`, slot, false);
  }

  private makeAgent(machine: SimMachine, node: string, hostId: string, agentId: string, name: string, slot: HostSlot | undefined, duplicate: boolean): AgentInstance {
    const proc = new SimProcess(name, this.sched);
    const clock = machine.clock.forProcess(proc);
    machine.agentClock = () => clock;
    const kv = this.client(name, proc, node);
    const ctx: HostContext = {
      hostId, clock, inventory: machine.inventory, vmm: machine.vmm, network: machine.taps, volumes: machine.volumes, images: machine.images,
      files: machine.files, logger: silent, stop: { graceMs: this.t.stopGrace, killTimeoutMs: this.t.killTimeout }, readyTimeoutMs: 5000,
    };
    const cstore = this.stores.cluster(kv, clock);
    const vstore = this.stores.controller(kv, clock, () => this.eventId(), this.txnLimits());
    const dup = duplicate ? this.duplicates.get(hostId) : undefined;
    const feed = new SimGuardianFeed(
      machine,
      clock,
      () => {
        const g = launchGuardian(this.sched, machine, slot ? ++slot.guardianN : 1, this.t.killTimeout);
        if (slot && !duplicate) slot.guardian = g;
        return g;
      },
      () => (slot && !duplicate ? slot.guardian : undefined),
    );
    void dup;
    const lane = slot && !duplicate ? slot.events : undefined;
    const gc = new HostGc(ctx, cstore, {
      timings: this.t,
      bootId: machine.bootId,
      capacity: { vcpu: 10_000, memoryMb: 10_000_000 },
      agentVersion: 'sim',
      agentId,
      // One machine id per node: the host's machine keeps it across reboots, a duplicate's is its own.
      ...(this.cfg.noMachineId ? {} : { machineId: `machine-${node}` }),
      holder: name,
      ...(this.cfg.noGuardian ? {} : { guardian: feed }),
      holdPollEvery: 3,
      ...(this.cfg.noPeerCheck
        ? {}
        : {
            peerCheck: {
              transport: this.peers.transport(proc, node, clock),
              directory: simDirectory(hostId, [...this.hosts.keys()]),
              // No `contract`: each agent relies on the contract its hold sync acknowledged (the real path).
              settings: this.peerSettings,
              nonce: () => this.nonce(),
            },
          }),
      onTransition: (from, to, reason) => {
        this.trace.add(this.sched.now, `${name} ${from}->${to} ${reason}`);
        if (!lane) return;
        const at = this.wallNow();
        if (to === 'detached') lane.push({ at, kind: 'detached' });
        if (to === 'fencing') lane.push({ at, kind: 'fence-started', reason: reason.includes('guardian') ? 'guardian' : reason.includes('fenced') ? 'cluster-fenced' : 'watchdog' } as HostTimelineEvent);
        if (to === 'clean') lane.push({ at, kind: 'verified', leftovers: [] });
        if (to === 'attached' && (from === 'rejoining' || from === 'clean')) lane.push({ at, kind: 'rejoined', epoch: gc.status().epoch });
      },
    });
    const agent = new Agent(ctx, () => gc.admission());
    const standing = () => ({ attached: gc.phase === 'attached' || gc.phase === 'suspect', epoch: gc.status().epoch });
    const sync = new ClusterVmSync(ctx, vstore, agent.service, standing, this.t.heartbeatInterval);
    this.sched.after(0, `start ${name}`, () => {
      agent.start().catch((err) => this.trace.add(this.sched.now, `${name} start failed ${messageOf(err)}`));
      gc.start();
      sync.start();
    }, proc);
    return { proc, clock, gc, sync, agent };
  }

  /** Agent crash (SIGKILL): the process is gone; VMs, guardian, inventory stay. */
  crashAgent(hostId: string): void {
    const a = this.hosts.get(hostId)?.agent;
    if (a?.proc.alive) a.proc.kill();
  }

  /**
   * Guardian killed (SIGKILL). As deployed (deploy/systemd/tether-guardian.service: Restart=always,
   * RestartSec=200ms) the machine's service manager starts it again 200 ms later, whether or not the
   * agent runs; the new guardian reads the feed and fires at once when the deadline has passed. Without
   * this, an agent down and a guardian killed at once would leave nothing to fence the VMs: a double
   * failure that only a hardware watchdog could cover (docs/guardian.md).
   */
  killGuardian(hostId: string): void {
    const slot = this.hosts.get(hostId);
    const g = slot?.guardian;
    if (!slot || !g?.proc.alive) return;
    g.proc.kill();
    const boots = slot.boots;
    this.sched.after(200, `systemd restarts ${hostId}/guardian`, () => {
      if (!slot.poweredOn || slot.boots !== boots || slot.guardian?.proc.alive) return;
      slot.guardian = launchGuardian(this.sched, slot.machine, ++slot.guardianN, this.t.killTimeout);
    });
  }

  /** Powers the machine off: every process and VM gone, taps gone; the inventory and files stay. */
  powerOff(hostId: string): void {
    const slot = this.hosts.get(hostId)!;
    if (!slot.poweredOn) return;
    slot.poweredOn = false;
    slot.agent?.proc.kill();
    slot.guardian?.proc.kill();
    for (const uid of [...slot.machine.vmm.procs.keys()]) slot.machine.vmm.remove(uid, 'power-off');
    slot.machine.taps.taps.clear();
    slot.machine.feedText = undefined;
    slot.machine.firedText = undefined;
  }

  /** Powers the machine on (a new boot) and starts its agent. */
  powerOn(hostId: string): void {
    const slot = this.hosts.get(hostId)!;
    if (slot.poweredOn) return;
    slot.poweredOn = true;
    slot.boots++;
    const old = slot.machine;
    const m = new SimMachine(hostId, this.sched, old.clock, this.ledger, seededGuests(this.guests), `${slot.node}-boot-${slot.boots}`);
    // What a reboot keeps: the inventory (SQLite on disk) and the state dir's files.
    m.inventory = old.inventory;
    for (const [k, v] of old.files.paths) m.files.paths.set(k, v);
    slot.machine = m;
    this.startAgent(hostId);
  }

  /**
   * A second agent with the same host id on another machine. `fresh`: another state dir (epoch 0,
   * its own agent id). `clone`: a copy of the host's state dir as it is now — same inventory rows,
   * persisted epoch and agent id, as a cloned VM image of the host would have — on another machine
   * (another boot, another machine id, no VM processes, its own host-id lock: the lock guards one
   * machine only). `clone-new-id`: the same with a new agent id (a restored backup whose id was reset).
   */
  startDuplicate(hostId: string, kind: 'fresh' | 'clone' | 'clone-new-id' = 'fresh'): void {
    if (this.duplicates.has(hostId)) return;
    const slot = this.hosts.get(hostId)!;
    const node = `${hostId}-dup`;
    const machine = this.newMachine(hostId, node);
    if (kind !== 'fresh') {
      if (slot.machine.inventory instanceof MemoryInventory) machine.inventory = slot.machine.inventory.clone();
      for (const [k, v] of slot.machine.files.paths) machine.files.paths.set(k, v);
    }
    const agentId = kind === 'clone' ? slot.agentId : `agent-${hostId}-${kind === 'fresh' ? 'dup' : 'clone'}`;
    const agent = this.makeAgent(machine, node, hostId, agentId, `${hostId}/dup-agent`, undefined, true);
    this.duplicates.set(hostId, { machine, agent });
  }

  /** The duplicate's machine goes off: its agent, guardian and VM processes are gone. */
  stopDuplicate(hostId: string): void {
    const d = this.duplicates.get(hostId);
    if (!d) return;
    d.agent.proc.kill();
    for (const uid of [...d.machine.vmm.procs.keys()]) d.machine.vmm.remove(uid, 'power-off');
    d.machine.taps.taps.clear();
    this.duplicates.delete(hostId);
  }

  // ---- controllers ----------------------------------------------------------------------------

  startController(i: number): void {
    const s = this.controllers[i]!;
    if (s.proc?.alive) s.proc.kill();
    const name = `${s.name}#${++s.n}`;
    const proc = new SimProcess(name, this.sched);
    s.proc = proc;
    const clock = s.clock.forProcess(proc);
    const store = this.stores.controller(this.client(name, proc, s.name), clock, () => this.eventId(), this.txnLimits());
    const c = new Controller(store, clock, silent, { controllerId: s.name, leaderTtl: 3000, newUid: () => this.newUid() });
    s.controller = c;
    this.sched.after(0, `start ${name}`, () => c.start(), proc);
  }

  crashController(i: number): void {
    const s = this.controllers[i]!;
    s.proc?.kill();
  }

  /** 32 hex digits for a peer round's nonce (its own stream: rounds do not shift event ids or uids). */
  private nonce(): string {
    let s = '';
    for (let i = 0; i < 4; i++) s += this.nonces.u32().toString(16).padStart(8, '0');
    return s;
  }

  /** 8 hex digits from the run's PRNG (event keys). */
  eventId(): string {
    return this.uids.u32().toString(16).padStart(8, '0');
  }

  /** Releases what outlives the run (the in-memory SQLite inventories). */
  /** The controller stores' txn limits: the model's, when the run lowers them (`SimConfig.maxTxnOps`). */
  private txnLimits(): TxnLimits | undefined {
    return this.cfg.maxTxnOps === undefined ? undefined : { ...DEFAULT_TXN_LIMITS, maxOps: this.cfg.maxTxnOps };
  }

  close(): void {
    for (const s of this.hosts.values()) s.machine.inventory.close();
    for (const d of this.duplicates.values()) d.machine.inventory.close();
  }

  /** 32 hex digits from the run's PRNG. */
  newUid(): string {
    let s = '';
    for (let i = 0; i < 4; i++) s += this.uids.u32().toString(16).padStart(8, '0');
    return s;
  }

  // ---- operator -------------------------------------------------------------------------------

  /** Runs an operator action as an entry of the operator process; failures are traced, never thrown. */
  operator(what: string, fn: () => Promise<unknown>): void {
    this.sched.after(0, `operator ${what}`, () => {
      fn().then(
        () => this.trace.add(this.sched.now, `operator ${what} ok`),
        (err) => this.trace.add(this.sched.now, `operator ${what} failed ${(err as { code?: string }).code ?? messageOf(err)}`),
      );
    }, this.opProc);
  }

  /** Creates `n` cluster VMs, unplaced (the controller places them). */
  createVms(n: number): void {
    const k = this.stores.prefix;
    for (let i = 0; i < n; i++) {
      const name = `vm-${++this.vmSeq}`;
      const spec: VmSpec = { id: { namespace: 'sim', name }, vcpu: 1, memoryMb: 128, kernelImage: '', kernelCmdline: {}, initrdImage: '', volumes: [], interfaces: [], labels: {}, metadata: {} };
      const rec: ClusterVmRecord = { uid: this.newUid(), spec, phase: 'pending', generation: 1, updatedAt: this.wallNow() };
      this.model.put(`${k}vms/sim/${name}`, JSON.stringify(rec));
    }
  }

  // ---- invariants -----------------------------------------------------------------------------

  private writerCtx(client: string): WriterCtx {
    const m = /^(host-\d+)\/(agent#\d+|dup-agent)$/.exec(client);
    if (!m) return {};
    const hostId = m[1]!;
    if (m[2] === 'dup-agent') return { hostId, duplicate: true, epoch: this.duplicates.get(hostId)?.agent.gc.status().epoch ?? 0 };
    const a = this.hosts.get(hostId)?.agent;
    return { hostId, epoch: a?.gc.status().epoch ?? 0 };
  }

  private hostOfClient(client: string): string | undefined {
    return /^(host-\d+)\//.exec(client)?.[1];
  }

  /** The host record as stored now (state and epoch), if readable. */
  recordOf(hostId: string | undefined): Pick<HostRecord, 'state' | 'epoch'> | undefined {
    if (!hostId) return undefined;
    const e = this.model.get(`${this.stores.prefix}hosts/${hostId}/record`);
    if (!e) return undefined;
    try {
      const r = JSON.parse(e.value) as HostRecord;
      return { state: r.state, epoch: r.epoch };
    } catch {
      return undefined;
    }
  }

  /** Every committed change, in revision order: the fenced-epoch and false-fence checks. */
  private observe(from = 1): void {
    const obs = this.model.client('observer', immediateTransport);
    let next = from;
    void obs.watch(
      { key: this.stores.prefix, prefix: true, fromRevision: from },
      {
        onEvents: (events) => {
          next = (events[0]?.kv.modRevision ?? next - 1) + 1;
          this.checkBatch(events);
        },
        onError: (err) => {
          this.trace.add(this.sched.now, `observer watch ended ${messageOf(err)}; resumes from ${next}`);
          this.observe(next);
        },
      },
      1000,
    );
  }

  private checkBatch(events: readonly KvWatchEvent[]): void {
    const p = this.stores.prefix;
    const rev = events[0]?.kv.modRevision;
    const w = rev === undefined ? undefined : this.writers.get(rev);
    if (rev !== undefined) this.writers.delete(rev);
    for (const e of events) {
      const key = e.kv.key.slice(p.length);
      if (w && key.startsWith('vms/') && w.ctx.hostId !== undefined) {
        const rb = w.recordBefore;
        if (!rb || !(rb.state === 'attached' || rb.state === 'ready') || rb.epoch !== w.ctx.epoch) {
          this.violate('fenced-epoch-write', `${w.from} (epoch ${w.ctx.epoch}) wrote ${key} at revision ${rev} while ${w.ctx.hostId}'s record was ${rb ? `${rb.state} at epoch ${rb.epoch}` : 'absent'}`);
        }
      }
      const m = /^hosts\/([^/]+)\/record$/.exec(key);
      if (m && e.type === 'put') {
        let state: string | undefined;
        try {
          state = (JSON.parse(e.kv.value) as HostRecord).state;
        } catch {
          state = undefined;
        }
        const prev = this.hostStates.get(m[1]!);
        if (state !== undefined) this.hostStates.set(m[1]!, state);
        if (state !== 'fenced') this.fencedSince.delete(m[1]!);
        else if (prev !== 'fenced') this.fencedSince.set(m[1]!, { at: this.sched.now, epoch: (JSON.parse(e.kv.value) as HostRecord).epoch, reported: false });
        if (state === 'fenced' && prev !== 'fenced') this.checkFence(m[1]!);
        if (state !== prev) this.trace.add(this.sched.now, `record ${m[1]} ${prev ?? '-'}->${state ?? '?'}`);
      }
    }
  }

  /** A fence of a host whose acknowledged heartbeats never paused longer than the election tolerance is false. */
  private checkFence(hostId: string): void {
    const slot = this.hosts.get(hostId);
    if (!slot) return;
    const now = this.sched.now;
    const from = now - (this.t.ttl + this.t.fenceWindow + this.t.electionTolerance);
    let last = Math.max(0, from);
    let maxGap = 0;
    for (const a of slot.acks) {
      if (a < from) continue;
      maxGap = Math.max(maxGap, a - last);
      last = a;
    }
    maxGap = Math.max(maxGap, now - last);
    if (maxGap <= this.t.electionTolerance && slot.acks.length > 0 && now > this.t.ttl + this.t.fenceWindow) {
      this.violate('false-fence', `${hostId} fenced at ${Math.round(now)} ms although its heartbeats were acknowledged with no pause longer than ${Math.round(maxGap)} ms`);
    }
  }

  /** Double runs found by the ledger since the last call become violations. */
  checkLedger(): void {
    while (this.ledger.doubleRuns.length > 0) {
      const d = this.ledger.doubleRuns.shift()!;
      this.violate('double-run', `${d.key} runs ${d.running.length} incarnations at once: ${d.running.map((r) => `${r.uid.slice(0, 8)} on ${r.hostId}`).join(', ')}`);
    }
  }

  /**
   * Fence progress: once a host is `fenced`, its VMs at (or below) the fenced epoch are marked lost
   * (and so can be placed elsewhere) within {@link FENCE_PROGRESS_MS} of undisturbed controller time,
   * while the host is still away. The check after the heal cannot see this: a host that rejoins
   * marks its old VMs lost itself. Runs at most once per sim second; reports a host once per fence.
   */
  checkFenceProgress(): void {
    const now = this.sched.now;
    if (now - this.lastProgressCheck < 1000 || this.fencedSince.size === 0) return;
    this.lastProgressCheck = now;
    const disturbedUntil = this.controlFaults.reduce((m, f) => (f.from <= now ? Math.max(m, f.to) : m), 0);
    for (const [hostId, f] of this.fencedSince) {
      if (f.reported || now - Math.max(f.at, disturbedUntil) < FENCE_PROGRESS_MS) continue;
      const stuck = this.model.list(`${this.stores.prefix}vms/`).filter((e) => {
        try {
          const r = JSON.parse(e.value) as ClusterVmRecord;
          return r.hostId === hostId && (r.hostEpoch ?? 0) <= f.epoch && r.phase !== 'lost';
        } catch {
          return false;
        }
      });
      if (stuck.length === 0) continue;
      f.reported = true;
      const names = stuck.map((e) => e.key.slice(this.stores.prefix.length + 4));
      this.violate('fence-progress', `${hostId} fenced at epoch ${f.epoch} ${Math.round(now - f.at)} ms ago, yet ${stuck.length} of its VMs are not marked lost: ${names.slice(0, 3).join(', ')}${names.length > 3 ? ` (+${names.length - 3})` : ''}`);
    }
  }

  violate(invariant: Violation['invariant'], detail: string): void {
    this.violations.push({ at: this.sched.now, invariant, detail });
    this.trace.add(this.sched.now, `VIOLATION ${invariant} ${detail}`);
  }

  /**
   * After the heal: every VM record placed on an attached/ready host at its epoch and running
   * there exactly once, every host attached (or ready), every machine free of anything not
   * assigned to it.
   */
  checkLiveness(): void {
    const p = this.stores.prefix;
    const running = this.ledger.running();
    const assigned = new Map<string, Set<string>>();
    for (const e of this.model.list(`${p}vms/`)) {
      let r: ClusterVmRecord;
      try {
        r = JSON.parse(e.value) as ClusterVmRecord;
      } catch {
        continue;
      }
      if (typeof r !== 'object' || r === null || typeof r.uid !== 'string' || !r.spec?.id) continue;
      const key = `${r.spec.id.namespace}/${r.spec.id.name}`;
      if (e.key !== `${p}vms/${key}`) continue;
      if (r.phase === 'failed' && r.hostId) {
        // Not lost: the host reports the VM died (e.g. with a reboot shorter than the lease TTL); the
        // agent never restarts a failed VM by itself (src/agent/reconciler.ts). Noted, not a violation.
        this.notes.push(`${key} failed on ${r.hostId}${r.reason ? `: ${r.reason}` : ''}`);
        const set = assigned.get(r.hostId) ?? new Set();
        set.add(r.uid);
        assigned.set(r.hostId, set);
        continue;
      }
      if (!r.hostId || r.phase === 'lost' || r.phase === 'deleting' || r.phase === 'failed') {
        this.violate('liveness', `${key} not placed again after the heal (phase ${r.phase}${r.hostId ? ` on ${r.hostId}` : ', no host'}${r.reason ? `: ${r.reason}` : ''})`);
        continue;
      }
      const set = assigned.get(r.hostId) ?? new Set();
      set.add(r.uid);
      assigned.set(r.hostId, set);
      const run = running.get(key) ?? [];
      if (run.length !== 1 || run[0]!.uid !== r.uid || run[0]!.hostId !== r.hostId) {
        this.violate('liveness', `${key} (uid ${r.uid.slice(0, 8)} on ${r.hostId}, ${r.phase}) runs as [${run.map((x) => `${x.uid.slice(0, 8)}@${x.hostId}`).join(', ')}] after the heal`);
      }
    }
    for (const slot of this.hosts.values()) {
      const rec = this.recordOf(slot.hostId);
      if (!rec || !(rec.state === 'attached' || rec.state === 'ready')) this.violate('liveness', `${slot.hostId} record is ${rec ? `${rec.state} at epoch ${rec.epoch}` : 'absent'} after the heal`);
      const phase = slot.agent?.gc.phase;
      if (phase !== 'attached') this.violate('liveness', `${slot.hostId} agent is ${phase ?? 'not running'} after the heal`);
      const mine = assigned.get(slot.hostId) ?? new Set<string>();
      const extra = [...slot.machine.vmm.procs.values()].filter((v) => !mine.has(v.uid)).map((v) => `process ${v.key}/${v.uid.slice(0, 8)}`);
      extra.push(...[...slot.machine.taps.taps.values()].filter((t) => !mine.has(t.owner?.vmUid ?? '')).map((t) => `tap ${t.name}`));
      extra.push(...slot.machine.inventory.listVms().filter((v) => !mine.has(v.uid)).map((v) => `inventory ${v.spec.id.name}/${v.uid.slice(0, 8)}`));
      if (extra.length > 0) this.violate('liveness', `${slot.hostId} not clean after the heal: ${extra.slice(0, 5).join(', ')}${extra.length > 5 ? ` (+${extra.length - 5})` : ''}`);
    }
    this.checkHostIndex();
  }

  /**
   * The per-host VM index (Keyspace.hostVm) mirrors the records: every readable record placed on H
   * has `hostvms/H/<key>` with its value and `mod_revision`, and no index entry lacks such a record.
   * Records the codec refuses (the nemesis' malformed ones) are nobody's to index: skipped.
   */
  checkHostIndex(): void {
    const p = this.stores.prefix;
    const copies = new Map(this.model.list(`${p}hostvms/`).map((e) => [e.key.slice(`${p}hostvms/`.length), e]));
    for (const e of this.model.list(`${p}vms/`)) {
      const rel = e.key.slice(p.length);
      const d = decodeClusterVm(rel, e.value);
      if (!d.ok) {
        for (const k of [...copies.keys()]) if (k.endsWith(`/${rel.slice('vms/'.length)}`)) copies.delete(k);
        continue;
      }
      const hostId = d.value.hostId;
      if (hostId === undefined) continue;
      const key = `${hostId}/${rel.slice('vms/'.length)}`;
      const c = copies.get(key);
      if (!c || c.value !== e.value || c.modRevision !== e.modRevision) this.violate('host-index', `hostvms/${key} ${c ? 'differs from its record' : 'is missing'}`);
      copies.delete(key);
    }
    for (const key of copies.keys()) this.violate('host-index', `hostvms/${key} has no record on that host`);
  }
}
