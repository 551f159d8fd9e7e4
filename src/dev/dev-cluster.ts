import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, openSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { AdminHttpServer } from '../api/http/admin-server.js';
import { InvalidArgumentError } from '../domain/errors.js';
import { AgentProcess, repoRoot } from './agent-process.js';
import { LocalEtcdCluster } from './etcd-cluster.js';
import { FaultProxyGroup } from './tcp-proxy.js';

/** Default port of the dev cluster's control endpoint (`tether dev partition|heal|status`). */
export const DEV_CONTROL_ADDR = '127.0.0.1:9099';

/** One host of the dev cluster: an agent whose etcd traffic goes through its own fault proxies. */
export interface DevHost {
  readonly id: string;
  readonly agent: AgentProcess;
  readonly proxies: FaultProxyGroup;
  partitionedUntil?: number;
  healTimer?: NodeJS.Timeout;
}

/** Options of {@link DevCluster}. */
export interface DevClusterOptions {
  readonly stateDir: string;
  readonly hosts?: number;
  /** Extra `tether agent` flags for every host (timings, ...). */
  readonly agentArgs?: readonly string[];
  /** First host's gRPC/HTTP ports (then +2 per host). Default 9090/9091. */
  readonly basePort?: number;
  readonly log?: (line: string) => void;
}

/**
 * A local cluster for demos and manual testing: a 3-member etcd on loopback, N agents (default 3,
 * each with its own state dir, host id and fault proxy in front of etcd), a controller, and a small
 * HTTP control endpoint to cut a host off (`blackhole`: connections stay open, bytes vanish — a cut
 * cable) and heal it.
 */
export class DevCluster {
  readonly etcd: LocalEtcdCluster;
  readonly hosts: DevHost[] = [];
  /** The controller replica (fence window, reschedule), when started. */
  controller: ChildProcess | undefined;
  private control: AdminHttpServer | undefined;
  private readonly log: (line: string) => void;

  constructor(private readonly opts: DevClusterOptions) {
    this.log = opts.log ?? ((l) => console.log(l));
    mkdirSync(opts.stateDir, { recursive: true });
    rmSync(join(opts.stateDir, 'etcd'), { recursive: true, force: true });
    this.etcd = new LocalEtcdCluster({ dataDir: join(opts.stateDir, 'etcd'), tag: 'dev' });
  }

  /** Starts etcd, the proxies and the agents; resolves when every agent answers. */
  async start(): Promise<void> {
    this.log('[dev] starting a 3-member etcd cluster (Raft) on loopback');
    await this.etcd.start();
    this.log(`[dev] etcd healthy: ${this.etcd.endpoints().join(', ')}`);
    const n = this.opts.hosts ?? 3;
    const base = this.opts.basePort ?? 9090;
    for (let i = 0; i < n; i++) {
      const id = n === 1 ? 'dev-host' : `dev-host-${String.fromCharCode(97 + i)}`;
      const proxies = await FaultProxyGroup.start(this.etcd.endpoints());
      const agent = new AgentProcess(id, join(this.opts.stateDir, 'hosts', id), ['--etcd-endpoints', proxies.endpoints().join(','), '--log-level', 'info', ...(this.opts.agentArgs ?? [])], [base + 2 * i, base + 2 * i + 1]);
      this.log(`[dev] starting agent ${id} (gRPC ${agent.grpc}, HTTP ${agent.http}), etcd via fault proxy ${proxies.endpoints().join(',')}`);
      await agent.start();
      this.hosts.push({ id, agent, proxies });
    }
    const log = join(this.opts.stateDir, 'controller.log');
    this.log(`[dev] starting the controller (log: ${log})`);
    this.controller = spawn(process.execPath, [join(repoRoot(), 'bin/tether.js'), 'controller', '--etcd-endpoints', this.etcd.endpoints().join(','), '--controller-id', 'dev-controller'], {
      stdio: ['ignore', openSync(log, 'a'), openSync(log, 'a')],
    });
  }

  /** Cuts `hostId` off from etcd (blackhole) for `forMs` (then heals), or until {@link heal}. */
  async partition(hostId: string, forMs?: number): Promise<void> {
    const h = this.host(hostId);
    await h.proxies.blackhole();
    if (h.healTimer) clearTimeout(h.healTimer);
    h.partitionedUntil = forMs ? Date.now() + forMs : Infinity;
    if (forMs) h.healTimer = setTimeout(() => void this.heal(hostId), forMs);
    this.log(`[dev] ${hostId} cut off from etcd${forMs ? ` for ${forMs / 1000}s` : ' until `tether dev heal`'}`);
  }

  /** Reconnects `hostId` to etcd. */
  async heal(hostId: string): Promise<void> {
    const h = this.host(hostId);
    if (h.healTimer) clearTimeout(h.healTimer);
    delete h.partitionedUntil;
    await h.proxies.heal();
    this.log(`[dev] ${hostId} reconnected to etcd`);
  }

  /** Serves `POST /v1/partition {host, forMs}`, `POST /v1/heal {host}`, `GET /v1/status` (client: `adminCall`). */
  async listenControl(address = DEV_CONTROL_ADDR): Promise<void> {
    const target = (b: Record<string, unknown>) => (typeof b.host === 'string' && b.host) || this.hosts[0]?.id || '';
    this.control = new AdminHttpServer({
      handlers: {
        'POST partition': async (b) => {
          await this.partition(target(b), typeof b.forMs === 'number' ? b.forMs : undefined);
          return { ok: true };
        },
        'POST heal': async (b) => {
          await this.heal(target(b));
          return { ok: true };
        },
        'GET status': async () => this.status(),
      },
    });
    await this.control.listen(address);
  }

  /** Hosts with their addresses and partition state. */
  status(): { etcd: string[]; hosts: { id: string; grpc: string; http: string; partitioned: boolean }[] } {
    return {
      etcd: this.etcd.endpoints(),
      hosts: this.hosts.map((h) => ({ id: h.id, grpc: h.agent.grpc, http: h.agent.http, partitioned: h.partitionedUntil !== undefined })),
    };
  }

  /** Deletes every VM, stops the agents, the controller, the proxies and etcd. */
  async stop(): Promise<void> {
    await this.control?.close();
    this.controller?.kill('SIGTERM');
    for (const h of this.hosts) {
      if (h.healTimer) clearTimeout(h.healTimer);
      await h.proxies.heal().catch(() => undefined);
    }
    for (const h of this.hosts) {
      try {
        const api = h.agent.api();
        const vms = await api.list();
        for (const vm of vms) await api.delete(vm.spec.uid).catch(() => undefined);
        const t0 = Date.now();
        while ((await api.list()).length > 0 && Date.now() - t0 < 30_000) await new Promise((r) => setTimeout(r, 250));
        if (vms.length) this.log(`[dev] ${h.id}: deleted ${vms.length} VM(s)`);
      } catch (err) {
        this.log(`[dev] ${h.id}: could not delete VMs: ${(err as Error).message}`);
      }
      await h.agent.kill('SIGTERM');
      await h.proxies.close();
    }
    await this.etcd.stop();
    this.log('[dev] stopped');
  }

  private host(id: string): DevHost {
    const h = this.hosts.find((x) => x.id === id);
    if (!h) throw new InvalidArgumentError('host', `unknown host "${id}" (hosts: ${this.hosts.map((x) => x.id).join(', ')})`);
    return h;
  }
}
