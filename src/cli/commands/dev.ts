import { resolve } from 'node:path';
import type { Command } from 'commander';
import { DEV_CONTROL_ADDR, DevCluster } from '../../dev/dev-cluster.js';
import { parseDuration } from '../../domain/duration.js';
import { TetherError, messageOf } from '../../domain/errors.js';

async function control<T>(method: 'GET' | 'POST', path: string, body?: unknown): Promise<T> {
  let res: Response;
  try {
    res = await fetch(`http://${DEV_CONTROL_ADDR}${path}`, { method, ...(body ? { body: JSON.stringify(body) } : {}), signal: AbortSignal.timeout(5000) });
  } catch (cause) {
    throw new TetherError('UNAVAILABLE', `no dev cluster answers at ${DEV_CONTROL_ADDR}: start one with \`npm run dev\` (or \`tether dev up\`)`, { cause });
  }
  const data = (await res.json()) as T & { error?: { message: string } };
  if (!res.ok) throw new TetherError('INVALID_ARGUMENT', data.error?.message ?? `HTTP ${res.status}`);
  return data;
}

/** `tether dev up|partition|heal|status`: a local cluster to watch detached-host GC happen. */
export function registerDevCommands(program: Command): void {
  const dev = program.command('dev').description('local dev cluster: 3-member etcd, agents behind fault proxies, demo VMs');
  dev
    .command('up')
    .description('start etcd, an agent with a demo VM, and wait (Ctrl-C deletes the VMs and stops everything)')
    .option('--state-dir <dir>', 'where the dev cluster keeps its state', 'state/dev')
    .option('--vms <n>', 'demo VMs to create', '1')
    .action(async (o: { stateDir: string; vms: string }) => {
      const cluster = new DevCluster({ stateDir: resolve(o.stateDir) });
      let stopping = false;
      const stop = async () => {
        if (stopping) return;
        stopping = true;
        console.log('\n[dev] stopping: deleting VMs, stopping the agent and etcd ...');
        await cluster.stop().catch((e: unknown) => console.error(`[dev] stop failed: ${messageOf(e)}`));
        process.exit(0);
      };
      process.on('SIGINT', () => void stop());
      process.on('SIGTERM', () => void stop());
      try {
        await cluster.start();
        await cluster.listenControl();
      } catch (err) {
        console.error(`[dev] start failed: ${messageOf(err)}`);
        await cluster.stop().catch(() => undefined);
        process.exit(1);
      }
      const host = cluster.hosts[0]!;
      const api = host.agent.api();
      for (let i = 0; i < Number(o.vms); i++) {
        const name = `demo-${i + 1}`;
        const vm = await api.create({ id: name, namespace: 'default', vcpu: 1, memory_in_mb: 96, kernel: { image: '', cmdline: {} }, interfaces: [{ device_id: 'eth0', type: 'TAP', address: { address: `10.99.${i}.2/24` } }] });
        process.stdout.write(`[dev] creating ${name} (${vm.spec.uid}) ...`);
        const t0 = Date.now();
        for (;;) {
          const cur = await api.get(vm.spec.uid);
          if (cur.status.state === 'CREATED' || cur.status.state === 'FAILED') {
            console.log(` ${cur.status.state} in ${((Date.now() - t0) / 1000).toFixed(1)}s`);
            console.log(`[dev]   serial log: ${resolve(o.stateDir, 'hosts', host.id, 'vm', 'default', name, vm.spec.uid, 'serial.log')}`);
            break;
          }
          await new Promise((r) => setTimeout(r, 200));
        }
      }
      console.log(`
[dev] ready. In another terminal:
  npx tether vm list --agent ${host.agent.grpc}            # the demo VMs
  npx tether gc status --agent-http ${host.agent.http}     # lifecycle state, last ack, watchdog countdown
  npx tether dev partition --for 30s                    # cut ${host.id} off from etcd (a cut cable)
  npx tether gc report --agent-http ${host.agent.http}     # what the GC did: stops, removals, audit
  npx tether vm delete <uid> --agent ${host.agent.grpc} --wait
Agent log: ${host.agent.log}
Ctrl-C here deletes the VMs and stops everything.`);
    });
  dev
    .command('partition [host]')
    .description('cut a host off from etcd: connections stay open, bytes vanish')
    .option('--for <duration>', 'heal by itself after this long (default: until `tether dev heal`)')
    .action(async (host: string | undefined, o: { for?: string }) => {
      const forMs = o.for ? parseDuration(o.for) : undefined;
      await control('POST', '/partition', { host, forMs });
      console.log(`${host ?? 'the host'} is cut off from etcd${forMs ? ` for ${o.for}` : ''}; watch: npx tether gc status`);
    });
  dev
    .command('heal [host]')
    .description('reconnect a host to etcd')
    .action(async (host: string | undefined) => {
      await control('POST', '/heal', { host });
      console.log(`${host ?? 'the host'} reconnected`);
    });
  dev
    .command('status')
    .description('the dev cluster: etcd endpoints, hosts, partitions')
    .option('--json', 'machine-readable output')
    .action(async (o: { json?: boolean }) => {
      const s = await control<{ etcd: string[]; hosts: { id: string; grpc: string; http: string; partitioned: boolean }[] }>('GET', '/status');
      if (o.json) return console.log(JSON.stringify(s, null, 2));
      console.log(`etcd: ${s.etcd.join(', ')}`);
      for (const h of s.hosts) console.log(`${h.id}  gRPC ${h.grpc}  HTTP ${h.http}  ${h.partitioned ? 'PARTITIONED' : 'connected'}`);
    });
}
