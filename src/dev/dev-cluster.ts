import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, mkdirSync, openSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { AdminHttpServer } from '../api/http/admin-server.js';
import { InvalidArgumentError, TetherError } from '../domain/errors.js';
import { AgentProcess, repoRoot } from './agent-process.js';
import { agentClientEnv, devApiSecurity, type AgentApiSecurity } from './api-credentials.js';
import { DEV_ENV_MARK, defaultLockDir, type DevScope } from './dev-scan.js';
import { devHostDir, writeDevState, type DevState } from './dev-state.js';
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
  /** Absolute dev state dir. */
  readonly stateDir: string;
  readonly hosts?: number;
  /**
   * Host ids are `<hostPrefix>-a`, `-b`, ... (a single host: `<hostPrefix>`). Default `dev-host`.
   * Tests use `test-…` so the leak check sees what they leave.
   */
  readonly hostPrefix?: string;
  /** Extra `tether agent` flags for every host (timings, ...). */
  readonly agentArgs?: readonly string[];
  /** First host's gRPC/HTTP ports (then +2 per host). Default 9090/9091; 0 picks free ports. */
  readonly basePort?: number;
  /** The topmost folder created to make `stateDir`, recorded for the cleanup. */
  readonly createdRoot?: string;
  readonly log?: (line: string) => void;
  /** Start the controller replica (default true); false when the caller runs its own (chaos runs two). */
  readonly controller?: boolean;
}

/**
 * A local cluster for demos and manual testing: a 3-member etcd on loopback, N agents (default 3,
 * each with its own state dir, host id and fault proxy in front of etcd), a controller, and a small
 * HTTP control endpoint to cut a host off (`blackhole`: connections stay open, bytes vanish — a cut
 * cable) and heal it.
 *
 * Invariants:
 *  - Every child (etcd members, agents, controller) runs in its own session and process group, so a
 *    terminal's SIGINT/SIGTERM/SIGHUP reaches only the supervisor, which cleans up in order
 *    (dev-teardown.ts); every child's environment carries `TETHER_DEV_STATE_DIR=<stateDir>`.
 *  - Everything it makes lies under `stateDir` (`hosts/<id>/`, `etcd/`, `controller.log`,
 *    `dev-cluster.json`), and `dev-cluster.json` names every child before the cluster relies on it.
 *  - After {@link abortStart}, {@link start} launches nothing more and rejects.
 */
export class DevCluster {
  readonly etcd: LocalEtcdCluster;
  /** The agents' API security: TLS, client certificates and a token, in `<stateDir>/api-certs`. */
  readonly apiSecurity: AgentApiSecurity;
  /** Hosts whose agent was spawned (started or starting), in start order. */
  readonly hosts: DevHost[] = [];
  /** The controller replica (fence window, reschedule), when started. */
  controller: ChildProcess | undefined;
  /** The control endpoint's address, once listening. */
  controlAddress: string | undefined;
  private control: AdminHttpServer | undefined;
  private aborted = false;
  private readonly log: (line: string) => void;
  private readonly env: NodeJS.ProcessEnv;

  constructor(private readonly opts: DevClusterOptions) {
    this.log = opts.log ?? ((l) => console.log(l));
    this.env = { ...process.env, [DEV_ENV_MARK]: opts.stateDir };
    mkdirSync(opts.stateDir, { recursive: true });
    rmSync(join(opts.stateDir, 'etcd'), { recursive: true, force: true });
    this.apiSecurity = devApiSecurity(join(opts.stateDir, 'api-certs'));
    this.etcd = new LocalEtcdCluster({ dataDir: join(opts.stateDir, 'etcd'), tag: 'dev', ownProcessGroup: true });
  }

  /** The state dir this cluster owns. */
  get stateDir(): string {
    return this.opts.stateDir;
  }

  /** Host ids in start order (spawned hosts first, then the ones not yet started). */
  hostIds(): string[] {
    const n = this.opts.hosts ?? 3;
    const prefix = this.opts.hostPrefix ?? 'dev-host';
    return Array.from({ length: n }, (_, i) => (n === 1 ? prefix : `${prefix}-${String.fromCharCode(97 + i)}`));
  }

  /** What the cleanup looks for: this state dir, every host id, the pids of the children. */
  scope(): DevScope {
    return {
      stateDir: this.opts.stateDir,
      hostIds: this.hostIds(),
      agentPids: new Map(this.hosts.filter((h) => h.agent.proc?.pid !== undefined).map((h) => [h.id, h.agent.proc!.pid!])),
      ...(this.controller?.pid !== undefined ? { controllerPid: this.controller.pid } : {}),
      etcdMark: this.etcd.mark,
      lockDir: defaultLockDir(),
    };
  }

  /** The state file's content now. */
  state(): DevState {
    const etcdPids = Array.from({ length: this.etcd.size }, (_, i) => this.etcd.pid(i)).filter((p): p is number => p !== undefined);
    let endpoints: string[] = [];
    try {
      endpoints = this.etcd.endpoints();
    } catch {
      /* ports not picked yet */
    }
    return {
      version: 1,
      supervisorPid: process.pid,
      stateDir: this.opts.stateDir,
      ...(this.opts.createdRoot ? { createdRoot: this.opts.createdRoot } : {}),
      hosts: this.hosts.map((h) => ({ id: h.id, grpc: h.agent.grpc, http: h.agent.http, ...(h.agent.proc?.pid !== undefined ? { pid: h.agent.proc.pid } : {}) })),
      ...(this.controller?.pid !== undefined ? { controllerPid: this.controller.pid } : {}),
      etcd: { mark: this.etcd.mark, endpoints, pids: etcdPids },
      ...(this.controlAddress ? { control: this.controlAddress } : {}),
      lockDir: defaultLockDir(),
    };
  }

  /** Writes `dev-cluster.json` (see dev-state.ts). */
  saveState(): void {
    writeDevState(this.state());
  }

  /** Stops {@link start} at its next step: nothing more is launched. Idempotent. */
  abortStart(): void {
    this.aborted = true;
  }

  private checkAborted(): void {
    if (this.aborted) throw new TetherError('FAILED_PRECONDITION', 'dev cluster start interrupted: cleaning up');
  }

  /** Starts etcd, the proxies and the agents; resolves when every agent answers. */
  async start(): Promise<void> {
    this.saveState();
    this.log('[dev] starting a 3-member etcd cluster (Raft) on loopback');
    await this.etcd.start();
    this.saveState();
    this.checkAborted();
    this.log(`[dev] etcd healthy: ${this.etcd.endpoints().join(', ')}`);
    this.log(`[dev] agents serve TLS, require a client certificate and a token (${this.apiSecurity.certs.dir}); the tether vm and gc commands need: ${Object.entries(agentClientEnv(this.apiSecurity)).map(([k, v]) => `${k}=${v}`).join(' ')}`);
    const base = this.opts.basePort ?? 9090;
    for (const [i, id] of this.hostIds().entries()) {
      const proxies = await FaultProxyGroup.start(this.etcd.endpoints());
      const ports: [number, number] | undefined = base === 0 ? undefined : [base + 2 * i, base + 2 * i + 1];
      const agent = new AgentProcess(
        id,
        devHostDir(this.opts.stateDir, id),
        [...this.etcd.agentArgs(proxies.endpoints()), '--log-level', 'info', ...(this.opts.agentArgs ?? [])],
        ports,
        { ownProcessGroup: true, env: this.env, security: this.apiSecurity },
      );
      this.hosts.push({ id, agent, proxies });
      this.checkAborted();
      await agent.spawn();
      if (this.aborted) {
        // The cleanup may already have looked at this host: do not leave it an agent it did not see.
        await agent.kill('SIGKILL');
        this.checkAborted();
      }
      this.saveState();
      this.log(`[dev] starting agent ${id} (gRPC ${agent.grpc}, HTTP ${agent.http}${agent.peer ? `, peer channel ${agent.peer}` : ''}), etcd via fault proxy ${proxies.endpoints().join(',')}`);
      await agent.waitReady();
      this.checkAborted();
    }
    if (this.opts.controller === false) return;
    const log = join(this.opts.stateDir, 'controller.log');
    this.log(`[dev] starting the controller (log: ${log})`);
    const fd = openSync(log, 'a');
    try {
      this.controller = spawn(process.execPath, [join(repoRoot(), 'bin/tether.js'), 'controller', ...this.etcd.agentArgs(), '--controller-id', 'dev-controller'], {
        stdio: ['ignore', fd, fd],
        detached: true,
        env: this.env,
      });
    } finally {
      closeSync(fd);
    }
    this.controller.on('error', () => undefined);
    this.saveState();
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

  /** Heals every host quietly (the cleanup needs the agents to reach etcd). */
  async healAll(): Promise<void> {
    for (const h of this.hosts) {
      if (h.healTimer) clearTimeout(h.healTimer);
      delete h.partitionedUntil;
      await h.proxies.heal().catch(() => undefined);
    }
  }

  /**
   * Serves `POST /v1/partition {host, forMs}`, `POST /v1/heal {host}`, `GET /v1/status` (client:
   * `adminCall`) on `address` (port 0 picks one; loopback only), behind the dev agents' token
   * (`<stateDir>/api-certs/api-token`); resolves with the address it listens on.
   */
  async listenControl(address = DEV_CONTROL_ADDR): Promise<string> {
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
    }, { security: { token: this.apiSecurity.token }, addressKey: 'control' });
    this.controlAddress = await this.control.listen(address);
    this.saveState();
    return this.controlAddress;
  }

  /** Closes the control endpoint (idempotent). */
  async closeControl(): Promise<void> {
    const c = this.control;
    this.control = undefined;
    await c?.close();
  }

  /** Hosts with their addresses and partition state. */
  status(): { etcd: string[]; hosts: { id: string; grpc: string; http: string; partitioned: boolean }[] } {
    return {
      etcd: this.etcd.endpoints(),
      hosts: this.hosts.map((h) => ({ id: h.id, grpc: h.agent.grpc, http: h.agent.http, partitioned: h.partitionedUntil !== undefined })),
    };
  }

  private host(id: string): DevHost {
    const h = this.hosts.find((x) => x.id === id);
    if (!h) throw new InvalidArgumentError('host', `unknown host "${id}" (hosts: ${this.hosts.map((x) => x.id).join(', ')})`);
    return h;
  }
}
