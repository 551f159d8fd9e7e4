import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { closeSync, mkdirSync, openSync } from 'node:fs';
import { join } from 'node:path';
import { EtcdControllerStore } from '../../adapters/etcd/etcd-controller-store.js';
import { TetherError } from '../../domain/errors.js';
import { guardianFiles } from '../../domain/guardian.js';
import type { ControllerStore } from '../../ports/controller-store.js';
import { repoRoot } from '../agent-process.js';
import { forgetOnExit, killOnExit, startOrphanReaper, type OrphanReaper } from '../child-guard.js';
import { DevCluster, type DevHost } from '../dev-cluster.js';
import { readPidSync, reclassify } from '../dev-scan.js';
import { devHostDir } from '../dev-state.js';

/**
 * Agent timings of a chaos run (those of the cluster integration test): ttl 3s, heartbeat 1s,
 * detach 2s, watchdog 9s, grace 3s, kill 2s, fence window 12s (9 + 3 + 2 + 1 <= 3 + 12): a cut
 * host stops its VMs within ~14 s and the controller fences it ~15 s after its last acknowledged
 * heartbeat, so faults of a few seconds to half a minute exercise both blips and fences. A guest
 * may take 120 s to be ready (TCG guests on a loaded 2-core machine took over 60 s).
 */
export const CHAOS_AGENT_TIMINGS: readonly string[] = ['--ttl', '3s', '--heartbeat-interval', '1s', '--detach-after', '2s', '--watchdog-timeout', '9s', '--stop-grace', '3s', '--kill-timeout', '2s', '--fence-window', '12s', '--ready-timeout', '120s'];

/** Controller flags of a chaos run: a leader lease of 3 s, so a killed leader is replaced quickly. */
export const CHAOS_CONTROLLER_ARGS: readonly string[] = ['--leader-ttl', '3s', '--log-level', 'info'];

/** One `tether controller` replica run by chaos. */
export interface ChaosController {
  /** `controller-<n>`. */
  readonly name: string;
  /** Its `--controller-id` (carries the run's mark, so the leak check and the orphan reaper see it). */
  readonly id: string;
  proc: ChildProcess | undefined;
  paused: boolean;
}

/**
 * The real cluster of a chaos run: a {@link DevCluster} (3-member TLS etcd, 3 agents each behind
 * its own fault proxy, their guardians, real QEMU and taps) without its controller, plus two
 * `tether controller` replicas run here, and the signals the nemesis sends.
 *
 * Invariants:
 *  - Host ids are `test-x<4 hex>-a|b|c` and the state dir `/tmp/tether-test-chx-*`, so
 *    scripts/check-leaks.sh sees anything a run leaves; controller ids carry `tether:test-chx-<hex>`,
 *    which an orphan reaper kills if this process dies, and the `'exit'` hook kills them otherwise.
 *  - A signal goes only to this process's own unreaped children (agents, controllers, etcd members),
 *    or to a guardian that passes dev-scan's ownership check (its pid file under the host's state
 *    dir names it and its command line is `tether.js guardian --state-dir <that dir>`) right before.
 */
export class ChaosCluster {
  readonly dev: DevCluster;
  readonly controllers: ChaosController[] = [];
  /** A store straight to etcd (not through any proxy): what the chaos run reads the cluster with. */
  store: ControllerStore | undefined;
  private reaper: OrphanReaper | undefined;
  private readonly mark: string;

  constructor(
    readonly stateDir: string,
    readonly logDir: string,
    private readonly log: (line: string) => void,
  ) {
    const hex = randomBytes(2).toString('hex');
    this.mark = `tether:test-chx-${hex}`;
    this.dev = new DevCluster({ stateDir, hosts: 3, hostPrefix: `test-x${hex}`, basePort: 0, agentArgs: [...CHAOS_AGENT_TIMINGS], controller: false, log });
  }

  /** Host ids, start order. */
  get hostIds(): string[] {
    return this.dev.hostIds();
  }

  /** Starts etcd, the agents (and their guardians) and two controllers. */
  async start(): Promise<void> {
    await this.dev.start();
    this.store = new EtcdControllerStore({ endpoints: this.dev.etcd.endpoints(), security: this.dev.etcd.clientTls() });
    this.reaper = startOrphanReaper(this.mark);
    for (const n of [1, 2]) {
      const c: ChaosController = { name: `controller-${n}`, id: `${this.mark}-ctl${n}`, proc: undefined, paused: false };
      this.controllers.push(c);
      this.spawnController(c);
    }
    this.log(`[chaos] two controllers started (${this.controllers.map((c) => c.id).join(', ')}; logs in ${this.logDir})`);
  }

  /** (Re)starts controller `c`. */
  spawnController(c: ChaosController): void {
    mkdirSync(this.logDir, { recursive: true });
    const fd = openSync(join(this.logDir, `${c.name}.log`), 'a');
    try {
      const env = { ...process.env };
      delete env.TETHER_DEV_STATE_DIR;
      c.proc = spawn(process.execPath, [join(repoRoot(), 'bin/tether.js'), 'controller', ...this.dev.etcd.agentArgs(), '--controller-id', c.id, ...CHAOS_CONTROLLER_ARGS], {
        stdio: ['ignore', fd, fd],
        detached: true,
        env,
      });
    } finally {
      closeSync(fd);
    }
    const p = c.proc;
    p.on('error', () => undefined);
    if (p.pid !== undefined) {
      killOnExit(p.pid);
      p.once('exit', () => forgetOnExit(p.pid!));
    }
    c.paused = false;
  }

  /** The controller named `nameOrLeader` (`controller-<n>`, or `leader`: the one etcd names leader now). */
  async controller(nameOrLeader: string): Promise<ChaosController> {
    if (nameOrLeader !== 'leader') {
      const c = this.controllers.find((x) => x.name === nameOrLeader);
      if (!c) throw new TetherError('NOT_FOUND', `no controller ${nameOrLeader}`);
      return c;
    }
    const leader = await this.store!.getLeader(3000).catch(() => undefined);
    return this.controllers.find((x) => x.id === leader?.candidateId) ?? this.controllers[0]!;
  }

  /** SIGKILLs controller `c` (own child) and waits for its exit. */
  async killController(c: ChaosController): Promise<void> {
    const p = c.proc;
    if (!p || p.exitCode !== null || p.signalCode !== null) return;
    const gone = new Promise((r) => p.once('exit', r));
    p.kill('SIGKILL');
    await gone;
  }

  /** Sends `signal` to controller `c` while it runs (own child). */
  signalController(c: ChaosController, signal: 'SIGSTOP' | 'SIGCONT'): boolean {
    const p = c.proc;
    if (!p || p.exitCode !== null || p.signalCode !== null) return false;
    p.kill(signal);
    c.paused = signal === 'SIGSTOP';
    return true;
  }

  /** Stops both controllers (SIGCONT, SIGTERM, SIGKILL after 5 s). */
  async stopControllers(): Promise<void> {
    await Promise.all(this.controllers.map(async (c) => {
      const p = c.proc;
      if (!p || p.exitCode !== null || p.signalCode !== null) return;
      const gone = new Promise((r) => p.once('exit', r));
      p.kill('SIGCONT');
      p.kill('SIGTERM');
      const t = setTimeout(() => p.kill('SIGKILL'), 5000);
      await gone;
      clearTimeout(t);
    }));
    this.reaper?.release();
  }

  host(id: string): DevHost {
    const h = this.dev.hosts.find((x) => x.id === id);
    if (!h) throw new TetherError('NOT_FOUND', `no host ${id}`);
    return h;
  }

  /** Sends `signal` to host `id`'s agent (own child) while it runs. */
  signalAgent(id: string, signal: 'SIGSTOP' | 'SIGCONT'): boolean {
    const a = this.host(id).agent;
    if (!a.running) return false;
    a.proc!.kill(signal);
    return true;
  }

  /** Pid of host `id`'s guardian when one runs and passes the ownership checks now, else undefined. */
  guardianPid(id: string): number | undefined {
    const pid = readPidSync(guardianFiles(devHostDir(this.stateDir, id)).pid);
    if (pid === undefined) return undefined;
    const p = reclassify(pid, this.dev.scope());
    return p?.kind === 'guardian' && p.owned && p.hostId === id ? pid : undefined;
  }

  /** Sends `signal` to `pid` only if it is still host `id`'s guardian (checked right before). */
  signalGuardian(id: string, pid: number, signal: 'SIGSTOP' | 'SIGCONT' | 'SIGKILL'): boolean {
    if (this.guardianPid(id) !== pid) return false;
    try {
      process.kill(pid, signal);
      return true;
    } catch {
      return false;
    }
  }

  async close(): Promise<void> {
    await this.store?.close().catch(() => undefined);
    this.store = undefined;
  }
}
