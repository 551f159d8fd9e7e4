import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { GcReport } from '../../src/agent/gc/gc-report.js';
import type { GcStatus } from '../../src/agent/gc/host-gc.js';
import { adminCall } from '../../src/api/http/admin-server.js';
import type { FlintlockMicroVM, MicroVmSpecIn } from '../../src/api/grpc/wire-types.js';
import type { MicroVmApiClient } from '../../src/cli/microvm-client.js';
import { AgentProcess } from '../../src/dev/agent-process.js';
import { killHostLeftovers, links, qemusOf, tapsOf } from '../../src/dev/host-probe.js';
import type { InventoryEvent } from '../../src/ports/inventory.js';
import { progress, sleep, throttle } from './progress.js';
import type { BenchResources } from './resources.js';

/** Namespace of every bench VM. */
export const BENCH_NAMESPACE = 'bench';

/**
 * The VM every scenario creates: the built-in guest (kernel, initrd, qcow2 overlay of its rootfs),
 * 1 vCPU, 96 MiB, one TAP interface — the host substrate a real VM needs. The guest honours the
 * ACPI power button (its handler syncs and `poweroff -f`).
 */
export function benchVmSpec(name: string): MicroVmSpecIn {
  return {
    id: name,
    namespace: BENCH_NAMESPACE,
    vcpu: 1,
    memory_in_mb: 96,
    kernel: { image: '', cmdline: {} },
    root_volume: { id: 'root', source: { container_source: '' } },
    interfaces: [{ device_id: 'eth0', type: 'TAP' }],
  };
}

/** True when `err` is the API's NOT_FOUND. */
export function isNotFound(err: unknown): boolean {
  return (err as { code?: string }).code === 'NOT_FOUND';
}

/** VmRSS and VmHWM of a process, KiB (from /proc/<pid>/status). */
export function rssOf(pid: number): { rssKiB: number; hwmKiB: number } {
  const text = readFileSync(`/proc/${pid}/status`, 'utf8');
  const field = (name: string) => Number(new RegExp(`^${name}:\\s+(\\d+) kB`, 'm').exec(text)?.[1] ?? NaN);
  return { rssKiB: field('VmRSS'), hwmKiB: field('VmHWM') };
}

/** True while `pid` exists and is not a zombie (a daemonised QEMU is reaped by init, maybe late). */
export function pidAlive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return false;
  }
}

/**
 * One `tether agent` process under a `bench-` host id with its own temp state folder and free
 * ports, registered with {@link BenchResources} so that it, its VMs and its taps go away on any exit.
 */
export class BenchHost {
  private constructor(
    private readonly res: BenchResources,
    readonly hostId: string,
    readonly dir: string,
    readonly agent: AgentProcess,
    /** Runs the stop once (and unregisters it from the final cleanup). */
    readonly stop: () => Promise<void>,
  ) {}

  /** Starts an agent (`--log-level info` unless `extraArgs` says otherwise) and waits for its API. */
  static async start(res: BenchResources, tag: string, extraArgs: readonly string[] = []): Promise<BenchHost> {
    const hostId = res.newHostId(tag);
    const dir = res.tempDir(tag);
    const agent = new AgentProcess(hostId, join(dir, 'state'), ['--log-level', 'info', ...extraArgs]);
    const stop = res.onCleanup(`agent ${hostId}`, async () => {
      await stopAgent(agent);
      killHostLeftovers(hostId);
    });
    progress(`starting agent ${hostId} (state ${join(dir, 'state')}${extraArgs.length ? `, ${extraArgs.join(' ')}` : ''})`);
    try {
      await agent.start();
    } catch (err) {
      progress(`agent ${hostId} did not start; log kept at ${res.keepLog(agent.log, hostId)}; tail:\n${logTail(agent.log, 15)}`);
      throw err;
    }
    return new BenchHost(res, hostId, dir, agent, stop);
  }

  get api(): MicroVmApiClient {
    return this.agent.api();
  }

  get stateDir(): string {
    return this.agent.stateDir;
  }

  /** The agent's pid. */
  get pid(): number {
    const pid = this.agent.proc?.pid;
    if (pid === undefined) throw new Error(`agent ${this.hostId} is not running`);
    return pid;
  }

  /** `GET /v1/gc/status`. */
  status(timeoutMs = 3000): Promise<GcStatus> {
    return adminCall<GcStatus>(this.agent.admin, 'GET', 'gc/status', undefined, timeoutMs);
  }

  /** `GET /v1/gc/report` (null before the first GC run). */
  report(): Promise<GcReport | null> {
    return adminCall<GcReport | null>(this.agent.admin, 'GET', 'gc/report');
  }

  /** `GET /v1/events`, newest first. */
  events(limit = 500): Promise<InventoryEvent[]> {
    return adminCall<InventoryEvent[]>(this.agent.admin, 'GET', `events?limit=${limit}`);
  }

  /** State folder of a VM: `<state>/vm/<namespace>/<name>/<uid>`. */
  vmFolder(vm: FlintlockMicroVM): string {
    return join(this.stateDir, 'vm', vm.spec.namespace, vm.spec.id, vm.spec.uid);
  }

  /** The tail of the agent log (for failures). */
  logTail(lines = 30): string {
    return logTail(this.agent.log, lines);
  }

  /** After a failure: keeps the agent log (see {@link BenchResources.keepLog}) and shows its tail on stderr. */
  reportFailure(what: string): void {
    const kept = this.res.keepLog(this.agent.log, this.hostId);
    progress(`${what} failed; agent log kept at ${kept ?? '(could not copy)'}; its tail:\n${this.logTail(15)}`);
  }

  /** The `-accel` value of a running QEMU of this host ('tcg,tb-size=64', 'kvm', ...), if any runs. */
  accel(): string | undefined {
    for (const pid of qemusOf(this.hostId).values()) {
      try {
        const argv = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
        const i = argv.indexOf('-accel');
        if (i >= 0) return argv[i + 1];
      } catch {
        /* gone */
      }
    }
    return undefined;
  }

  /**
   * Polls the API until every uid is CREATED; returns, per uid, ms from `t0` (performance.now())
   * to the first poll that saw it CREATED. Throws on FAILED or after `timeoutMs`.
   */
  async waitAllCreated(
    uids: readonly string[],
    t0: number,
    opts: { everyMs: number; timeoutMs: number; label: string; check?: () => Promise<void> },
  ): Promise<Map<string, number>> {
    const readyAt = new Map<string, number>();
    const tick = throttle(5000, () => progress(`${opts.label}: ${readyAt.size}/${uids.length} CREATED after ${((performance.now() - t0) / 1000).toFixed(1)} s`));
    const wanted = new Set(uids);
    for (;;) {
      const vms = uids.length === 1 ? [await this.api.get(uids[0]!)] : await this.api.list(BENCH_NAMESPACE);
      const now = performance.now();
      for (const vm of vms) {
        if (!wanted.has(vm.spec.uid) || readyAt.has(vm.spec.uid)) continue;
        if (vm.status.state === 'FAILED') throw new Error(`${opts.label}: VM ${vm.spec.id} (${vm.spec.uid}) FAILED after ${Math.round(now - t0)} ms`);
        if (vm.status.state === 'CREATED') readyAt.set(vm.spec.uid, now - t0);
      }
      if (readyAt.size === uids.length) return readyAt;
      if (now - t0 > opts.timeoutMs) throw new Error(`${opts.label}: only ${readyAt.size}/${uids.length} CREATED after ${opts.timeoutMs} ms`);
      await opts.check?.();
      tick();
      await sleep(opts.everyMs);
    }
  }

  /** Polls until Get answers NOT_FOUND for every uid; returns ms from `t0` per uid. */
  async waitAllGone(uids: readonly string[], t0: number, opts: { everyMs: number; timeoutMs: number; label: string }): Promise<Map<string, number>> {
    const goneAt = new Map<string, number>();
    const tick = throttle(5000, () => progress(`${opts.label}: ${goneAt.size}/${uids.length} deleted after ${((performance.now() - t0) / 1000).toFixed(1)} s`));
    for (;;) {
      await Promise.all(
        uids
          .filter((u) => !goneAt.has(u))
          .map((u) =>
            this.api.get(u).then(
              () => undefined,
              (err: unknown) => {
                if (isNotFound(err)) goneAt.set(u, performance.now() - t0);
                else throw err;
              },
            ),
          ),
      );
      if (goneAt.size === uids.length) return goneAt;
      if (performance.now() - t0 > opts.timeoutMs) throw new Error(`${opts.label}: only ${goneAt.size}/${uids.length} deleted after ${opts.timeoutMs} ms`);
      tick();
      await sleep(opts.everyMs);
    }
  }

  /**
   * What the system (not the agent) still holds of `vm`: its QEMU process, its taps, its folder.
   * Empty when it is entirely gone.
   */
  leftoversOf(vm: FlintlockMicroVM): string[] {
    const out: string[] = [];
    if (qemusOf(this.hostId).has(vm.spec.uid)) out.push(`QEMU process of ${vm.spec.uid}`);
    const present = links();
    for (const nic of Object.values(vm.status.network_interfaces)) if (present.has(nic.host_device_name)) out.push(`tap ${nic.host_device_name}`);
    if (existsSync(this.vmFolder(vm))) out.push(`folder ${this.vmFolder(vm)}`);
    return out;
  }

  /** What the system holds of this host at all: QEMU processes, marked taps, VM folders. */
  hostLeftovers(): string[] {
    const out: string[] = [];
    for (const [uid, pid] of qemusOf(this.hostId)) out.push(`QEMU ${pid} (${uid})`);
    for (const tap of tapsOf(this.hostId)) out.push(`tap ${tap}`);
    const vmRoot = join(this.stateDir, 'vm');
    if (existsSync(vmRoot)) for (const ns of readdirSync(vmRoot)) out.push(`folder ${join(vmRoot, ns)}`);
    return out;
  }
}

/** SIGTERM, then SIGKILL after 10 s. */
async function stopAgent(agent: AgentProcess): Promise<void> {
  const p = agent.proc;
  if (!p || p.exitCode !== null || p.signalCode !== null) return;
  const exited = new Promise<void>((r) => p.once('exit', () => r()));
  p.kill('SIGTERM');
  const timer = setTimeout(() => p.kill('SIGKILL'), 10_000);
  await exited;
  clearTimeout(timer);
  // Not agent.kill(): it waits for an 'exit' that already happened when the agent died by a signal.
  agent.api().close();
}

function logTail(path: string, lines = 30): string {
  try {
    return readFileSync(path, 'utf8').trimEnd().split('\n').slice(-lines).join('\n');
  } catch {
    return '(no log)';
  }
}
