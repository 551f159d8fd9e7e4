import { spawn } from 'node:child_process';
import { openSync } from 'node:fs';
import { join } from 'node:path';
import { EtcdControllerStore } from '../../src/adapters/etcd/etcd-controller-store.js';
import { specFromFlintlock } from '../../src/api/grpc/spec-mapping.js';
import { clusterCreate } from '../../src/cli/cluster-vms.js';
import { repoRoot } from '../../src/dev/agent-process.js';
import { FaultProxyGroup } from '../../src/dev/tcp-proxy.js';
import type { ClusterVmRecord } from '../../src/domain/cluster-vm.js';
import type { BenchContext, ScenarioResult } from '../lib/context.js';
import { BenchHost, benchVmSpec } from '../lib/host.js';
import { progress, sleep } from '../lib/progress.js';
import { fmtMs } from '../lib/stats.js';

/** Timing profiles: the defaults, and the most aggressive settings the safety rules accept (docs/gc.md). */
const PROFILES: Record<string, string[]> = {
  default: [],
  aggressive: ['--ttl', '3s', '--heartbeat-interval', '1s', '--detach-after', '2s', '--watchdog-timeout', '5s', '--stop-grace', '1s', '--kill-timeout', '1s', '--clock-drift-margin', '1s', '--fence-window', '5s'],
};

async function until<T>(what: string, fn: () => Promise<T | undefined>, timeoutMs: number): Promise<T> {
  const t0 = Date.now();
  for (;;) {
    const v = await fn().catch(() => undefined);
    if (v !== undefined) return v;
    if (Date.now() - t0 > timeoutMs) throw new Error(`timed out waiting for ${what}`);
    await sleep(50);
  }
}

/**
 * Partition -> the VM running again on another host: three agents (own fault proxies), one
 * controller, one VM on host B; B's etcd traffic is blackholed at P. Reported from P: the cluster
 * marks B detached, B finishes its self-fence (clean), the cluster fences B, the VM is placed
 * elsewhere, and runs there (its new host reports `running`).
 */
export async function runReschedule(ctx: BenchContext): Promise<ScenarioResult> {
  const etcd = await ctx.etcd();
  const rows: string[][] = [];
  const data: Record<string, unknown> = {};
  const failures: string[] = [];
  for (const [name, args] of Object.entries(PROFILES)) {
    progress(`reschedule/${name}: starting 3 agents and a controller`);
    const prefix = `/tether-bench-${name}/`;
    const store = new EtcdControllerStore({ endpoints: etcd.endpoints(), security: etcd.clientTls(), prefix });
    const proxies: FaultProxyGroup[] = [];
    const hosts: BenchHost[] = [];
    const dir = ctx.res.tempDir(`resched-${name}`);
    const log = openSync(join(dir, 'controller.log'), 'a');
    const ctl = spawn(process.execPath, [join(repoRoot(), 'bin/tether.js'), 'controller', ...etcd.agentArgs(), '--etcd-prefix', prefix, '--leader-ttl', '3s'], { stdio: ['ignore', log, log] });
    const stopCtl = ctx.res.onCleanup(`controller ${name}`, async () => {
      ctl.kill('SIGKILL');
    });
    try {
      for (const tag of ['ra', 'rb', 'rc']) {
        const p = await FaultProxyGroup.start(etcd.endpoints());
        proxies.push(p);
        hosts.push(await BenchHost.start(ctx.res, tag, [...etcd.agentArgs(p.endpoints()), '--etcd-prefix', prefix, ...args]));
      }
      const b = hosts[1]!;
      await until('hosts registered', async () => ((await store.listHosts(3000)).hosts.filter((h) => h.alive).length === 3 ? true : undefined), 30_000);
      const created = await clusterCreate(store, specFromFlintlock(benchVmSpec('moving')), b.hostId);
      const key = created.key;
      const vmRec = async (): Promise<ClusterVmRecord | undefined> => (await store.listVms(3000)).find((v) => v.key === key)?.record;
      await until('VM running on B', async () => ((await vmRec())?.phase === 'running' ? true : undefined), 60_000);
      await sleep(2000);
      const P = Date.now();
      await proxies[1]!.blackhole();
      progress(`reschedule/${name}: B cut off`);
      const t: Record<string, number> = {};
      const seen = (k: string) => {
        if (t[k] === undefined) {
          t[k] = Date.now() - P;
          progress(`reschedule/${name}: +${t[k]} ms ${k}`);
        }
      };
      await until('VM running elsewhere', async () => {
        const [hostB, rec, st] = await Promise.all([store.getHost(b.hostId, 2000), vmRec(), b.status(1000).catch(() => undefined)]);
        if (hostB.record?.state === 'detached') seen('cluster: B detached');
        if (st?.phase === 'clean' || st?.phase === 'rejoining') seen('B: self-fence clean');
        if (hostB.record?.state === 'fenced') seen('cluster: B fenced');
        if (rec && rec.uid !== created.record.uid && rec.hostId !== b.hostId) seen('VM placed elsewhere');
        if (rec && rec.uid !== created.record.uid && rec.phase === 'running') {
          seen('VM running elsewhere');
          return true;
        }
        return undefined;
      }, 120_000);
      data[name] = { timings: args, msFromPartition: t };
      rows.push([name, fmtMs(t['cluster: B detached']), fmtMs(t['B: self-fence clean']), fmtMs(t['cluster: B fenced']), fmtMs(t['VM placed elsewhere']), fmtMs(t['VM running elsewhere'])]);
      await proxies[1]!.heal();
    } catch (err) {
      failures.push(`reschedule/${name}: ${(err as Error).message}`);
    } finally {
      await stopCtl();
      for (const h of hosts) {
        const vms = await h.api.list().catch(() => []);
        for (const v of vms) await h.api.delete(v.spec.uid).catch(() => undefined);
      }
      await sleep(1000);
      for (const h of hosts) await h.stop();
      for (const p of proxies) await p.close();
      await store.close();
    }
  }
  return {
    data,
    failures,
    tables: [
      {
        title: 'partition -> VM running again on another host (3 hosts, 1 controller), ms from the cut',
        headers: ['timings', 'cluster: detached', 'B clean', 'cluster: fenced', 'placed elsewhere', 'running elsewhere'],
        rows,
        notes: ['default: ttl 6s, heartbeat 1s, detach 3s, watchdog 8s, grace 4s, kill 2s, fence window 10s', `aggressive: ${PROFILES.aggressive!.join(' ')}`],
      },
    ],
  };
}
