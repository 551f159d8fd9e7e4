/**
 * One simulated host of the `fleet` bench: the PRODUCTION agent-side cluster code — `HostGc`
 * (registration, heartbeat with its keepalive + `alive` check, hold polling, lifecycle) over a
 * `KvClusterStore`, and `ClusterVmSync` (the agent's VM sync, whatever it reads and watches) over a
 * `KvControllerStore` — composed exactly as `tether agent` composes them (src/cli/commands/agent.ts),
 * on a fake substrate: an in-memory inventory whose VMs are `running` the moment they are accepted,
 * no QEMU, taps, overlays or guardian process. Everything a host sends to etcd is the production
 * code's; nothing host-local costs more than a map update.
 *
 * Differences from a real agent, all of them host-local or transport:
 *  - the VM service is {@link InstantVmService}: create = an inventory row in phase `running`,
 *    delete = the row removed (a real agent boots QEMU and reports `creating` first);
 *  - no guardian (the option is absent, as on a host configured without one);
 *  - the stores of several hosts share one `Kv` (one etcd3 client = one gRPC channel per member):
 *    the same requests, fewer TCP connections and HTTP/2 streams multiplexed on them.
 */
import { ClusterVmSync } from '../../src/agent/cluster-sync.js';
import { HostGc } from '../../src/agent/gc/host-gc.js';
import type { HostContext } from '../../src/agent/host-context.js';
import type { AgentVmService } from '../../src/agent/vm-service.js';
import { KvClusterStore } from '../../src/adapters/kv/kv-cluster-store.js';
import { KvControllerStore } from '../../src/adapters/kv/kv-controller-store.js';
import { SimFiles, SimImages, SimTaps, SimVolumes } from '../../src/dev/sim/substrate.js';
import { MemoryInventory } from '../../src/dev/sim/inventory.js';
import { InstantVmService } from '../../src/dev/instant-vm-service.js';
import type { GcTimings } from '../../src/domain/gc-timing.js';
import type { HostPhase } from '../../src/domain/host-lifecycle.js';
import type { Clock } from '../../src/ports/clock.js';
import type { Kv } from '../../src/ports/kv.js';
import type { Logger } from '../../src/ports/logger.js';
import type { StopResult, Vmm } from '../../src/ports/vmm.js';

/** A VMM that never runs anything (the fake substrate's VMs exist only as inventory rows). */
const NO_VMM: Vmm = {
  start: async () => ({ pid: 0 }),
  waitReady: async () => undefined,
  status: async () => ({ running: false, ready: false }),
  stop: async (): Promise<StopResult> => ({ method: 'already-stopped', tookMs: 0 }),
  listOwned: async () => [],
};

/** Warn and error lines of the simulated hosts' production code: counted, the first few kept. */
export class LogTally {
  warn = 0;
  error = 0;
  readonly samples: string[] = [];
  /** Distinct debug messages (the agent logs retryable failures at debug) and how often each came. */
  readonly debug = new Map<string, number>();
  logger(hostId: string): Logger {
    const note = (level: 'warn' | 'error', fields: Record<string, unknown>, msg: string) => {
      this[level]++;
      if (this.samples.length < 8) this.samples.push(`${level} ${hostId}: ${msg} ${JSON.stringify(fields).slice(0, 300)}`);
    };
    const l: Logger = {
      debug: (f, m) => {
        const k = `${m}${f.err ? `: ${String(f.err).slice(0, 160)}` : ''}`;
        if (this.debug.has(k) || this.debug.size < 20) this.debug.set(k, (this.debug.get(k) ?? 0) + 1);
      },
      info: () => undefined,
      warn: (f, m) => note('warn', f, m),
      error: (f, m) => note('error', f, m),
      child: () => l,
    };
    return l;
  }
}


/** Options of one {@link FleetHost}. */
export interface FleetHostOptions {
  readonly hostId: string;
  readonly prefix: string;
  readonly timings: GcTimings;
  readonly capacity: { readonly vcpu: number; readonly memoryMb: number };
  readonly clock: Clock;
  readonly kv: Kv;
  readonly logs: LogTally;
  readonly onTransition: (from: HostPhase, to: HostPhase, reason: string) => void;
}

/** One simulated host: production HostGc + ClusterVmSync on the fake substrate. */
export class FleetHost {
  readonly gc: HostGc;
  readonly sync: ClusterVmSync;
  readonly inventory = new MemoryInventory();
  private stopped = false;

  constructor(readonly o: FleetHostOptions) {
    const root = `/fleet/${o.hostId}`;
    const files = new SimFiles(root);
    const ctx: HostContext = {
      hostId: o.hostId,
      clock: o.clock,
      inventory: this.inventory,
      vmm: NO_VMM,
      network: new SimTaps(),
      volumes: new SimVolumes(files),
      images: new SimImages(),
      files,
      logger: o.logs.logger(o.hostId),
      stop: { graceMs: o.timings.stopGrace, killTimeoutMs: o.timings.killTimeout },
      readyTimeoutMs: 5000,
    };
    // As src/cli/commands/agent.ts: a ClusterStore for the GC, a ControllerStore for the VM sync.
    const cstore = new KvClusterStore(o.kv, { prefix: o.prefix, clock: o.clock });
    const vstore = new KvControllerStore(o.kv, { prefix: o.prefix, clock: o.clock, idSource: () => Math.floor(Math.random() * 2 ** 32).toString(16).padStart(8, '0') });
    this.gc = new HostGc(ctx, cstore, {
      timings: o.timings,
      bootId: 'fleet-bench-boot',
      capacity: o.capacity,
      agentVersion: 'bench-fleet',
      agentId: `agent-${o.hostId}`,
      machineId: `machine-${o.hostId}`,
      holder: `bench fleet simulated host ${o.hostId}`,
      onTransition: o.onTransition,
    });
    const gc = this.gc;
    const standing = () => ({ attached: gc.phase === 'attached' || gc.phase === 'suspect', epoch: gc.status().epoch });
    const service = new InstantVmService(ctx) as unknown as AgentVmService;
    this.sync = new ClusterVmSync(ctx, vstore, service, standing, o.timings.heartbeatInterval);
  }

  start(): void {
    this.gc.start();
    this.sync.start();
  }

  /** The host dies (power cut): no more keepalives, nothing revoked; its lease expires on its own. */
  crash(): void {
    if (this.stopped) return;
    this.stopped = true;
    this.gc.stop();
    this.sync.stop();
  }

  get isStopped(): boolean {
    return this.stopped;
  }
}
