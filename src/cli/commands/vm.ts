import type { Command } from 'commander';
import type { FlintlockMicroVM, MicroVmSpecIn, NetworkInterfaceIn, VolumeIn } from '../../api/grpc/wire-types.js';
import { parseDuration } from '../../domain/duration.js';
import { TetherError, messageOf } from '../../domain/errors.js';
import type { KvControllerStore } from '../../adapters/kv/kv-controller-store.js';
import { DEFAULT_PAGE_SIZE } from '../../domain/kv-read-limits.js';
import {
  CLUSTER_VM_PHASES,
  getClusterVm,
  listClusterVms,
  parsePhases,
  watchClusterVms,
  type ClusterVmChange,
  type ClusterVmFilter,
  type ClusterVmList,
} from '../cluster-vm-list.js';
import { specFromFlintlock } from '../../api/grpc/spec-mapping.js';
import type { ClusterVmRecord } from '../../domain/cluster-vm.js';
import { clusterCreate, clusterDelete } from '../cluster-vms.js';
import { MicroVmApiClient } from '../microvm-client.js';
import { addAgentCredentialOptions, agentCredentialsFrom, type AgentCredentialFlags } from '../agent-client-options.js';
import { withStore, type StoreFlags } from './host.js';
import { addEtcdSecurityOptions } from '../etcd-options.js';
import { ago, printJson, printTable } from '../output.js';

const collect = (v: string, prev: string[] = []) => [...prev, v];

/** A client of the agent named by `--agent`, with the credentials of the `--agent-*` flags. */
function agentClient(o: AgentCredentialFlags & { agent?: unknown }): MicroVmApiClient {
  return new MicroVmApiClient(String(o.agent), 10_000, agentCredentialsFrom(o));
}

function keyValues(items: string[] | undefined, flag: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const item of items ?? []) {
    const i = item.indexOf('=');
    const k = i < 0 ? item : item.slice(0, i);
    if (!k) throw new TetherError('INVALID_ARGUMENT', `${flag} ${JSON.stringify(item)}: expected key=value`);
    out[k] = i < 0 ? '' : item.slice(i + 1);
  }
  return out;
}

/** `eth0[,ip=10.0.0.2/24][,gw=10.0.0.1][,mac=02:..]` -> a TAP interface. */
export function parseNic(text: string): NetworkInterfaceIn {
  const [device, ...opts] = text.split(',');
  const kv = keyValues(opts, '--nic');
  for (const k of Object.keys(kv)) if (!['ip', 'gw', 'mac'].includes(k)) throw new TetherError('INVALID_ARGUMENT', `--nic ${text}: unknown option "${k}" (use ip=, gw=, mac=)`);
  return {
    device_id: device ?? '',
    type: 'TAP',
    ...(kv.mac ? { guest_mac: kv.mac } : {}),
    ...(kv.ip ? { address: { address: kv.ip, ...(kv.gw ? { gateway: kv.gw } : {}) } } : {}),
  };
}

/** `id=image[,ro]` -> an additional volume. */
export function parseVolume(text: string): VolumeIn {
  const [main, ...flags] = text.split(',');
  const i = (main ?? '').indexOf('=');
  if (i <= 0) throw new TetherError('INVALID_ARGUMENT', `--volume ${text}: expected id=image[,ro]`);
  for (const f of flags) if (f !== 'ro') throw new TetherError('INVALID_ARGUMENT', `--volume ${text}: unknown flag "${f}" (only "ro")`);
  return { id: main!.slice(0, i), source: { container_source: main!.slice(i + 1) }, is_read_only: flags.includes('ro') };
}

function intFlag(v: string, flag: string): number {
  const n = Number(v);
  if (!Number.isInteger(n)) throw new TetherError('INVALID_ARGUMENT', `${flag} ${JSON.stringify(v)}: expected an integer`);
  return n;
}

function row(vm: FlintlockMicroVM): (string | number)[] {
  const taps = Object.values(vm.status.network_interfaces ?? {}).map((n) => n.host_device_name).join(',') || '-';
  const created = Number(vm.spec.created_at?.seconds ?? 0) * 1000;
  return [vm.spec.namespace, vm.spec.id, vm.spec.uid, vm.status.state, `${vm.spec.vcpu}/${vm.spec.memory_in_mb}M`, taps, created ? ago(created) : '-'];
}
const HEAD = ['NAMESPACE', 'NAME', 'UID', 'STATE', 'CPU/MEM', 'TAPS', 'AGE'];

/** Polls until the VM is CREATED or FAILED (or gone, when deleting); prints progress on stderr. */
async function waitFor(client: MicroVmApiClient, uid: string, want: 'created' | 'gone', timeoutMs: number): Promise<FlintlockMicroVM | undefined> {
  const t0 = Date.now();
  let last = '';
  for (;;) {
    let vm: FlintlockMicroVM | undefined;
    try {
      vm = await client.get(uid);
    } catch (err) {
      if (want === 'gone' && err instanceof TetherError && err.code === 'NOT_FOUND') return undefined;
      throw err;
    }
    if (vm.status.state !== last) {
      last = vm.status.state;
      process.stderr.write(`  ${((Date.now() - t0) / 1000).toFixed(1)}s ${uid} ${last}\n`);
    }
    if (want === 'created' && (last === 'CREATED' || last === 'FAILED')) return vm;
    if (Date.now() - t0 > timeoutMs) throw new TetherError('TIMEOUT', `microvm ${uid} still ${last} after ${timeoutMs}ms`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

const CLUSTER_HEAD = ['NAMESPACE', 'NAME', 'UID', 'PHASE', 'HOST', 'EPOCH', 'REASON'];
function clusterRow(key: string, r: ClusterVmRecord): (string | number)[] {
  const [ns, name] = key.split('/');
  return [ns ?? '', name ?? '', r.uid, r.phase, r.hostId ?? '-', r.hostEpoch ?? '-', r.reason ?? ''];
}

/** Cluster mode: etcd endpoints from the flag or TETHER_ETCD_ENDPOINTS. */
function clustered(o: StoreFlags): boolean {
  return Boolean(o.etcdEndpoints || process.env.TETHER_ETCD_ENDPOINTS);
}

/** Polls the cluster record until `done` says so; progress on stderr. */
async function waitRecord(o: StoreFlags, key: string, done: (r: ClusterVmRecord | undefined) => boolean, timeoutMs: number): Promise<ClusterVmRecord | undefined> {
  const t0 = Date.now();
  let last = '';
  return withStore(o, async (store) => {
    for (;;) {
      const r = (await getClusterVm(store, key, 5000))?.record;
      const now = r ? `${r.phase}${r.hostId ? ` on ${r.hostId}` : ''}` : 'gone';
      if (now !== last) process.stderr.write(`  ${((Date.now() - t0) / 1000).toFixed(1)}s ${key} ${(last = now)}\n`);
      if (done(r)) return r;
      if (Date.now() - t0 > timeoutMs) throw new TetherError('TIMEOUT', `microvm ${key} still ${now} after ${timeoutMs}ms`);
      await new Promise((res) => setTimeout(res, 250));
    }
  });
}

/** Deadline of one whole (paged) list. */
const LIST_DEADLINE = 60_000;

/**
 * `vm list --watch` in cluster mode: prints the list (text: the table; JSON: one `{type:'put',…}`
 * line per VM), then one line per change from the list's revision + 1. After a watch error (etcd
 * compacted, connection lost) it lists again (paged), prints what changed meanwhile, and watches
 * from the new revision: nothing is missed, nothing printed twice. Runs until interrupted.
 */
async function followClusterVms(store: KvControllerStore, filter: ClusterVmFilter, first: ClusterVmList, pageSize: number, json: boolean): Promise<void> {
  const shown = new Map<string, string>();
  const print = (c: ClusterVmChange): void => {
    if (c.type === 'put') {
      if (shown.get(c.vm.key) === c.vm.revision) return;
      shown.set(c.vm.key, c.vm.revision);
    } else if (!shown.delete(c.key)) return;
    if (json) console.log(JSON.stringify(c.type === 'put' ? { type: 'put', key: c.vm.key, revision: c.vm.revision, record: c.vm.record } : c));
    else if (c.type === 'put') console.log([new Date().toISOString(), ...clusterRow(c.vm.key, c.vm.record)].join('  '));
    else console.log(`${new Date().toISOString()}  gone  ${c.key}`);
  };
  let list = first;
  if (json) for (const v of list.vms) print({ type: 'put', vm: v });
  else {
    for (const v of list.vms) shown.set(v.key, v.revision);
    if (list.vms.length === 0) console.log('no microvms in the cluster (watching)');
    else printTable(CLUSTER_HEAD, list.vms.map((v) => clusterRow(v.key, v.record)));
  }
  for (;;) {
    const failed = await new Promise<Error>((resolve) => {
      watchClusterVms(store, filter, list.revision + 1, list.vms, { onChange: print, onError: resolve }, 5000).catch(resolve);
    });
    process.stderr.write(`vm watch interrupted (${messageOf(failed)}); listing again\n`);
    await new Promise((r) => setTimeout(r, 1000));
    try {
      list = await listClusterVms(store, filter, { pageSize, deadlineMs: LIST_DEADLINE });
    } catch (err) {
      process.stderr.write(`listing failed (${messageOf(err)}); retrying\n`);
      continue;
    }
    const now = new Set(list.vms.map((v) => v.key));
    for (const key of [...shown.keys()]) if (!now.has(key)) print({ type: 'gone', key, revision: String(list.revision) });
    for (const v of list.vms) print({ type: 'put', vm: v });
  }
}

/** `tether vm create|get|list|delete`. */
export function registerVmCommands(program: Command): void {
  const vm = program.command('vm').description('microVMs on an agent (Flintlock-compatible gRPC API)');
  const withAgent = (c: Command) =>
    addAgentCredentialOptions(addEtcdSecurityOptions(c))
      .option('--agent <addr>', 'agent gRPC address', process.env.TETHER_AGENT ?? '127.0.0.1:9090')
      .option('--etcd-endpoints <urls>', 'talk to the cluster instead of one agent (or TETHER_ETCD_ENDPOINTS); VMs are then named <ns>/<name>')
      .option('--etcd-prefix <prefix>', 'key prefix in etcd (or TETHER_ETCD_PREFIX)')
      .option('--json', 'machine-readable output');

  withAgent(vm.command('create <name>').description('create a microVM (returns once recorded; --wait for running)'))
    .option('-n, --namespace <ns>', 'namespace', 'default')
    .option('--vcpu <n>', 'virtual CPUs', '1')
    .option('--memory <MiB>', 'guest memory in MiB (>= 72)', '96')
    .option('--kernel-image <name>', 'kernel from the local image store (default: built-in guest)', '')
    .option('--initrd-image <name>', 'initrd from the local image store (default: built-in guest)', '')
    .option('--root-image <name>', 'root disk image (default: built-in guest disk)', '')
    .option('--volume <id=image[,ro]>', 'additional disk (repeatable)', collect)
    .option('--nic <dev[,ip=cidr][,gw=ip][,mac=mac]>', 'network interface backed by a tap (repeatable)', collect)
    .option('--cmdline <key=value>', 'extra kernel argument (repeatable)', collect)
    .option('--label <key=value>', 'label (repeatable)', collect)
    .option('--host <id>', 'cluster mode: place on this host (default: by capacity)')
    .option('--wait', 'wait until the VM is running (or failed), with progress')
    .option('--timeout <duration>', 'with --wait: give up after', '2m')
    .action(async (name: string, o: Record<string, string | string[] | boolean | undefined>) => {
      const spec: MicroVmSpecIn = {
        id: name,
        namespace: o.namespace as string,
        vcpu: intFlag(o.vcpu as string, '--vcpu'),
        memory_in_mb: intFlag(o.memory as string, '--memory'),
        kernel: { image: o.kernelImage as string, cmdline: keyValues(o.cmdline as string[], '--cmdline') },
        ...(o.initrdImage ? { initrd: { image: o.initrdImage as string } } : {}),
        root_volume: { id: 'root', source: { container_source: o.rootImage as string } },
        additional_volumes: ((o.volume as string[] | undefined) ?? []).map(parseVolume),
        interfaces: ((o.nic as string[] | undefined) ?? []).map(parseNic),
        labels: keyValues(o.label as string[], '--label'),
      };
      const timeoutMs = parseDuration(o.timeout as string);
      if (clustered(o as StoreFlags)) {
        const c = await withStore(o as StoreFlags, (store) => clusterCreate(store, specFromFlintlock(spec), o.host as string | undefined));
        let rec: ClusterVmRecord | undefined = c.record;
        if (o.wait) rec = await waitRecord(o as StoreFlags, c.key, (r) => r?.phase === 'running' || r?.phase === 'failed' || r === undefined, timeoutMs);
        if (o.json) printJson({ key: c.key, record: rec });
        else printTable(CLUSTER_HEAD, [clusterRow(c.key, rec ?? c.record)]);
        if (rec?.phase === 'failed') process.exitCode = 1;
        return;
      }
      const client = agentClient(o);
      try {
        let created = await client.create(spec);
        if (o.wait) created = (await waitFor(client, created.spec.uid, 'created', timeoutMs)) ?? created;
        if (o.json) printJson(created);
        else printTable(HEAD, [row(created)]);
        if (o.wait && created.status.state === 'FAILED') process.exitCode = 1;
      } finally {
        client.close();
      }
    });

  withAgent(vm.command('get <uid>').description('show one microVM (cluster mode: <ns>/<name>)')).action(async (uid: string, o: StoreFlags & { agent: string; json?: boolean }) => {
    if (clustered(o)) {
      const v = await withStore(o, (store) => getClusterVm(store, uid, 5000));
      if (!v) throw new TetherError('NOT_FOUND', `microvm ${uid} not found in the cluster (use <namespace>/<name>)`);
      if (o.json) printJson(v);
      else printTable(CLUSTER_HEAD, [clusterRow(v.key, v.record)]);
      return;
    }
    const client = agentClient(o);
    try {
      const v = await client.get(uid);
      if (o.json) printJson(v);
      else printTable(HEAD, [row(v)]);
    } finally {
      client.close();
    }
  });

  withAgent(vm.command('list').description('list microVMs (cluster mode: read in pages at one revision)'))
    .option('-n, --namespace <ns>', 'only this namespace', '')
    .option('--name <name>', 'only this name')
    .option('--host <id>', 'cluster mode: only VMs placed on this host (reads its index only)')
    .option('--phase <phase>', `cluster mode: only these phases (${CLUSTER_VM_PHASES.join(', ')}; comma-separated or repeated)`, collect)
    .option('--watch', 'cluster mode: after the list, print every change until interrupted (JSON: one object per line)')
    .option('--page-size <n>', 'cluster mode: keys per read', String(DEFAULT_PAGE_SIZE))
    .action(async (o: StoreFlags & { agent: string; json?: boolean; namespace: string; name?: string; host?: string; phase?: string[]; watch?: boolean; pageSize: string }) => {
      const phases = parsePhases(o.phase);
      if (clustered(o)) {
        const filter: ClusterVmFilter = {
          ...(o.host !== undefined ? { host: o.host } : {}),
          ...(phases ? { phases } : {}),
          ...(o.namespace ? { namespace: o.namespace } : {}),
          ...(o.name ? { name: o.name } : {}),
        };
        const pageSize = intFlag(o.pageSize, '--page-size');
        await withStore(o, async (store) => {
          const l = await listClusterVms(store, filter, { pageSize, deadlineMs: LIST_DEADLINE });
          for (const u of l.unreadable) process.stderr.write(`warning: vms/${u.key} skipped: ${u.message}\n`);
          if (o.watch) return followClusterVms(store, filter, l, pageSize, Boolean(o.json));
          if (o.json) printJson(l.vms);
          else if (l.vms.length === 0) console.log('no microvms in the cluster');
          else printTable(CLUSTER_HEAD, l.vms.map((v) => clusterRow(v.key, v.record)));
        });
        return;
      }
      if (o.host !== undefined || phases || o.watch) throw new TetherError('INVALID_ARGUMENT', '--host, --phase and --watch list the cluster: give --etcd-endpoints (or TETHER_ETCD_ENDPOINTS)');
      const client = agentClient(o);
      try {
        const vms = await client.list(o.namespace, o.name);
        if (o.json) printJson(vms);
        else if (vms.length === 0) console.log('no microvms');
        else printTable(HEAD, vms.map(row));
      } finally {
        client.close();
      }
    });

  withAgent(vm.command('delete <uid>').description('delete a microVM (graceful stop, then every resource removed; cluster mode: <ns>/<name>)'))
    .option('--wait', 'wait until every resource is gone, with progress')
    .option('--timeout <duration>', 'with --wait: give up after', '1m')
    .action(async (uid: string, o: StoreFlags & { agent: string; json?: boolean; wait?: boolean; timeout: string }) => {
      const timeoutMs = parseDuration(o.timeout);
      if (clustered(o)) {
        const how = await withStore(o, (store) => clusterDelete(store, uid));
        if (o.wait && how === 'deleting') await waitRecord(o, uid, (r) => r === undefined, timeoutMs);
        if (o.json) printJson({ key: uid, deleted: o.wait || how === 'removed' ? true : 'requested' });
        else console.log(how === 'removed' || o.wait ? `deleted ${uid}` : `delete of ${uid} requested: its host stops it and removes the record`);
        return;
      }
      const client = agentClient(o);
      try {
        await client.delete(uid);
        if (o.wait) await waitFor(client, uid, 'gone', timeoutMs);
        if (o.json) printJson({ uid, deleted: o.wait ? true : 'requested' });
        else console.log(o.wait ? `deleted ${uid}` : `delete of ${uid} requested (tether vm get ${uid} to follow)`);
      } finally {
        client.close();
      }
    });
}
