import { resolve } from 'node:path';
import type { Command } from 'commander';
import { EtcdControllerStore } from '../../adapters/etcd/etcd-controller-store.js';
import { specFromFlintlock } from '../../api/grpc/spec-mapping.js';
import { adminCall } from '../../api/http/admin-server.js';
import { DEV_CONTROL_ADDR, DevCluster } from '../../dev/dev-cluster.js';
import { clusterCreate } from '../cluster-vms.js';
import { parseDuration } from '../../domain/duration.js';
import { messageOf } from '../../domain/errors.js';

function control<T>(method: 'GET' | 'POST', path: string, body?: unknown): Promise<T> {
  return adminCall<T>(DEV_CONTROL_ADDR, method, path, body, 5000, 'a dev cluster (start one with `npm run dev` or `tether dev up`)');
}

/** `tether dev up|partition|heal|status`: a local cluster to watch detached-host GC happen. */
export function registerDevCommands(program: Command): void {
  const dev = program.command('dev').description('local dev cluster: 3-member etcd, agents behind fault proxies, a controller, demo VMs');
  dev
    .command('up')
    .description('start etcd, 3 agents, a controller and demo VMs, and wait (Ctrl-C deletes the VMs and stops everything)')
    .option('--state-dir <dir>', 'where the dev cluster keeps its state', 'state/dev')
    .option('--hosts <n>', 'hosts (agents) to start', '3')
    .option('--vms <n>', 'demo VMs to create, spread over the hosts by capacity', '3')
    .action(async (o: { stateDir: string; hosts: string; vms: string }) => {
      const cluster = new DevCluster({ stateDir: resolve(o.stateDir), hosts: Number(o.hosts) });
      let stopping = false;
      const stop = async () => {
        if (stopping) return;
        stopping = true;
        console.log('\n[dev] stopping: deleting VMs, stopping the agents, the controller and etcd ...');
        await cluster.stop().catch((e: unknown) => console.error(`[dev] stop failed: ${messageOf(e)}`));
        process.exit(0);
      };
      process.on('SIGINT', () => void stop());
      process.on('SIGTERM', () => void stop());
      try {
        await cluster.start();
        await cluster.listenControl();
        const store = new EtcdControllerStore({ endpoints: cluster.etcd.endpoints() });
        try {
          for (let i = 0; i < Number(o.vms); i++) {
            const spec = specFromFlintlock({ id: `demo-${i + 1}`, namespace: 'default', vcpu: 1, memory_in_mb: 96, interfaces: [{ device_id: 'eth0', type: 'TAP', address: { address: `10.99.${i}.2/24` } }] });
            const c = await clusterCreate(store, spec);
            console.log(`[dev] ${c.key} placed on ${c.record.hostId ?? '(no host: ' + (c.record.reason ?? '') + ')'} as ${c.record.uid}`);
          }
          const t0 = Date.now();
          for (;;) {
            const vms = await store.listVms(5000);
            if (vms.every((v) => v.record.phase === 'running' || v.record.phase === 'failed')) {
              console.log(`[dev] ${vms.length} VM(s) running after ${((Date.now() - t0) / 1000).toFixed(1)}s`);
              break;
            }
            if (Date.now() - t0 > 120_000) throw new Error('demo VMs not running after 2 minutes');
            await new Promise((r) => setTimeout(r, 500));
          }
        } finally {
          await store.close();
        }
      } catch (err) {
        console.error(`[dev] start failed: ${messageOf(err)}`);
        await cluster.stop().catch(() => undefined);
        process.exit(1);
      }
      const eps = cluster.etcd.endpoints().join(',');
      const b = cluster.hosts[1] ?? cluster.hosts[0]!;
      console.log(`
[dev] ready: ${cluster.hosts.map((h) => `${h.id} (gRPC ${h.agent.grpc}, HTTP ${h.agent.http})`).join(', ')}.
In another terminal:
  export TETHER_ETCD_ENDPOINTS=${eps}
  npx tether host list                                   # hosts: state, epoch, lease age, fence countdown
  npx tether vm list                                     # VMs cluster-wide: phase and host
  npx tether dev partition ${b.id} --for 60s            # cut ${b.id} off from etcd (a cut cable)
  npx tether gc status --agent-http ${b.agent.http}      # on ${b.id}: detached, watchdog countdown, fencing, clean
  npx tether events --follow                             # the cluster's view: detached, fenced, rescheduled, rejoined
  npx tether gc report --agent-http ${b.agent.http}      # what ${b.id} did: stops, removals, audit, rejoin
Logs: ${resolve(o.stateDir)}/hosts/<host>/agent.log and ${resolve(o.stateDir)}/controller.log
Ctrl-C here deletes the VMs and stops everything.`);
    });
  dev
    .command('partition [host]')
    .description('cut a host off from etcd: connections stay open, bytes vanish')
    .option('--for <duration>', 'heal by itself after this long (default: until `tether dev heal`)')
    .action(async (host: string | undefined, o: { for?: string }) => {
      const forMs = o.for ? parseDuration(o.for) : undefined;
      await control('POST', 'partition', { host, forMs });
      console.log(`${host ?? 'the host'} is cut off from etcd${forMs ? ` for ${o.for}` : ''}; watch: npx tether gc status`);
    });
  dev
    .command('heal [host]')
    .description('reconnect a host to etcd')
    .action(async (host: string | undefined) => {
      await control('POST', 'heal', { host });
      console.log(`${host ?? 'the host'} reconnected`);
    });
  dev
    .command('status')
    .description('the dev cluster: etcd endpoints, hosts, partitions')
    .option('--json', 'machine-readable output')
    .action(async (o: { json?: boolean }) => {
      const s = await control<{ etcd: string[]; hosts: { id: string; grpc: string; http: string; partitioned: boolean }[] }>('GET', 'status');
      if (o.json) return console.log(JSON.stringify(s, null, 2));
      console.log(`etcd: ${s.etcd.join(', ')}`);
      for (const h of s.hosts) console.log(`${h.id}  gRPC ${h.grpc}  HTTP ${h.http}  ${h.partitioned ? 'PARTITIONED' : 'connected'}`);
    });
}
