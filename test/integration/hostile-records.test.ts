import { lstatSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { EtcdClusterStore } from '../../src/adapters/etcd/etcd-cluster-store.js';
import { EtcdControllerStore } from '../../src/adapters/etcd/etcd-controller-store.js';
import type { GcStatus } from '../../src/agent/gc/host-gc.js';
import { EVENT_RECORD_INVALID, EVENT_VM_KEPT_UNREADABLE } from '../../src/agent/cluster-sync.js';
import { adminCall } from '../../src/api/http/admin-server.js';
import { LocalEtcdCluster } from '../../src/dev/etcd-cluster.js';
import type { ClusterVmRecord } from '../../src/domain/cluster-vm.js';
import { DEFAULT_TIMINGS } from '../../src/domain/gc-timing.js';
import type { InventoryEvent } from '../../src/ports/inventory.js';
import { expectCode } from '../support/expect-code.js';
import { AgentProcess, killHostLeftovers, processesWith, qemusOf, removeDir, requireRealParts, tapsOf, testDir, testHostId, until } from '../support/real-host.js';

/**
 * Hostile and malformed `vms/` records against a REAL agent (its cluster sync, inventory, state dir,
 * QEMU VM) on a REAL etcd: every bad record is skipped with an error event and one error log line
 * naming its key and field; no file outside the running VM's own folder is touched (the test dir
 * is snapshot before and after, decoys included: another VM's overlay, a file at the state root); a
 * running VM whose record becomes unparsable keeps running (same pid) and is reported as kept; the
 * agent never crashes and keeps heartbeating.
 */
const TIMINGS = ['--ttl', '3s', '--heartbeat-interval', '1s', '--detach-after', '2s', '--watchdog-timeout', '6s', '--stop-grace', '2s', '--kill-timeout', '2s', '--fence-window', '8s'];
const TTL_MS = 3000;
const PREFIX = '/tether/';
const hostId = testHostId('hr');
let dir = '';
let stateDir = '';
let etcd: LocalEtcdCluster;
let store: EtcdControllerStore;
let agent: AgentProcess;

const status = () => adminCall<GcStatus>(agent.admin, 'GET', 'gc/status', undefined, 3000);
const events = () => adminCall<InventoryEvent[]>(agent.admin, 'GET', 'events?limit=1000', undefined, 3000);
/**
 * A raw write of `vms/<key>`, with its copy in the agent's index (`hostvms/<hostId>/<key>`) in the same
 * txn, as a hostile writer with etcd access could do: the agent reads only its index.
 */
const put = async (key: string, value: string): Promise<void> => {
  const copy = key.startsWith('vms/') ? [{ op: 'put' as const, key: `${PREFIX}hostvms/${hostId}/${key.slice('vms/'.length)}`, value }] : [];
  const ops = [{ op: 'put' as const, key: PREFIX + key, value }, ...copy];
  // Two copies of a value over 700 kB do not fit one request (etcd's 1.5 MiB): then one txn each.
  if (value.length > 700_000) for (const op of ops) await store.kv.txn({ compare: [], success: [op] }, 5000);
  else await store.kv.txn({ compare: [], success: ops }, 5000);
};
const logLines = (): { level: number; msg: string; key?: string; field?: string }[] =>
  readFileSync(agent.log, 'utf8')
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as { level: number; msg: string; key?: string; field?: string });

/** path -> identity of every entry under `root` (files: inode, size, mtime; folders: inode). */
function snapshot(root: string, skip: (rel: string) => boolean): Map<string, string> {
  const out = new Map<string, string>();
  const walk = (rel: string) => {
    for (const name of readdirSync(join(root, rel))) {
      const r = rel ? `${rel}/${name}` : name;
      if (skip(r)) continue;
      const st = lstatSync(join(root, r));
      out.set(r, st.isDirectory() ? `dir:${st.ino}` : `${st.isFile() ? 'file' : st.isSymbolicLink() ? 'link' : 'other'}:${st.ino}:${st.size}:${st.mtimeMs}`);
      if (st.isDirectory()) walk(r);
    }
  };
  walk('');
  return out;
}
function changes(a: Map<string, string>, b: Map<string, string>): string[] {
  const out: string[] = [];
  for (const [p, v] of a) if (b.get(p) !== v) out.push(b.has(p) ? `changed ${p}` : `removed ${p}`);
  for (const p of b.keys()) if (!a.has(p)) out.push(`added ${p}`);
  return out.sort();
}

beforeAll(async () => {
  requireRealParts(['root', 'qemu', 'guest', 'etcd', 'build']);
  dir = testDir('hostile');
  stateDir = join(dir, 'agent');
  etcd = new LocalEtcdCluster({ dataDir: join(dir, 'etcd'), tag: 'test', size: 1 });
  await etcd.start();
  store = new EtcdControllerStore({ endpoints: etcd.endpoints(), security: etcd.clientTls(), prefix: PREFIX });
  agent = new AgentProcess(hostId, stateDir, [...etcd.agentArgs(), '--etcd-prefix', PREFIX, '--lock-dir', join(dir, 'locks'), '--accel', 'tcg', ...TIMINGS]);
  await agent.start();
  await agent.waitTakesVms();
}, 120_000);

afterAll(async () => {
  if (process.env.TETHER_TEST_KEEP_LOG) writeFileSync(process.env.TETHER_TEST_KEEP_LOG, readFileSync(agent.log));
  await agent?.kill();
  killHostLeftovers(hostId);
  await store?.close();
  await etcd?.stop();
  if (dir) removeDir(dir);
  await until('guardians gone', () => [...processesWith('guardian')].every(([, argv]) => !argv.some((a) => a.startsWith(dir))), 10_000, 100);
  expect(qemusOf(hostId).size).toBe(0);
  expect(tapsOf(hostId)).toEqual([]);
});

describe('hostile and malformed records read from etcd (real agent, etcd, QEMU)', () => {
  it('skips each with a named error event, touches no file outside the VM’s own folder, keeps a VM whose record became unparsable, keeps heartbeating', async () => {
    // A real VM, placed through the agent's API (a cluster record on this host), running.
    const created = await agent.api().create({ id: 'keep', namespace: 'hr', vcpu: 1, memory_in_mb: 96, kernel: { image: '', cmdline: {} } });
    const uid = created.spec.uid;
    const good = await until('keep running', async () => {
      const v = (await store.listVms(3000)).find((x) => x.key === 'hr/keep');
      return v?.record.phase === 'running' ? v.record : undefined;
    }, 60_000, 200);
    const pid = qemusOf(hostId).get(uid);
    expect(pid).toBeDefined();
    const { epoch } = await status();
    const vmFolder = `agent/vm/hr/keep/${uid}`;

    // Decoys a hostile record would hit: another VM's overlay, a file at the state root.
    const victim = join(stateDir, 'vm', 'victim', 'web', '0123456789abcdef0123456789abcdef');
    mkdirSync(victim, { recursive: true });
    writeFileSync(join(victim, 'vol-root.qcow2'), 'QFI\xfb decoy overlay of another VM');
    writeFileSync(join(stateDir, 'decoy-root.txt'), 'must survive');

    // Baseline: what changes on its own while nothing hostile happens (heartbeats, guardian feed).
    const skip = (rel: string) => rel === 'etcd' || rel.startsWith('etcd/') || rel === vmFolder || rel.startsWith(`${vmFolder}/`);
    const s0 = snapshot(dir, skip);
    await new Promise((r) => setTimeout(r, 3000));
    const s1 = snapshot(dir, skip);
    const churn = new Set(changes(s0, s1).map((c) => c.split(' ')[1]!));
    // The snapshot really covers the state dir, decoys included, and the decoys are not churn.
    const decoys = ['agent/decoy-root.txt', 'agent/vm/victim/web/0123456789abcdef0123456789abcdef/vol-root.qcow2', 'agent/inventory.db'];
    for (const d of decoys) expect(s1.has(d), d).toBe(true);
    expect(decoys.filter((d) => churn.has(d))).toEqual([]);
    const journal = (p: string) => /^agent\/(inventory\.db(-wal|-shm|-journal)?|agent\.log)$/.test(p);

    // The hostile table: key -> [raw value, field the error must name].
    const placed = { hostId, hostEpoch: epoch, phase: 'pending' as const, generation: 1 };
    const rec = (name: string, over: Record<string, unknown> = {}, ns = 'hr') => JSON.stringify({ uid: '0f'.repeat(16), spec: { ...good.spec, id: { namespace: ns, name } }, ...placed, ...over });
    const hostile: Record<string, [string, string]> = {
      'vms/hr/uiddb': [rec('uiddb', { uid: 'inventory.db' }), 'uid'],
      'vms/../escape': [rec('escape', {}, '..'), '(key)'],
      'vms/hr/a/b': [rec('a/b'), '(key)'],
      'vms/hr/dots': [JSON.stringify({ ...JSON.parse(rec('dots')), spec: { ...good.spec, id: { namespace: '..', name: '.' } } }), 'spec.id.namespace'],
      'vms/hr/vol': [rec('vol', { spec: { ...good.spec, id: { namespace: 'hr', name: 'vol' }, volumes: [{ id: '../../../inventory', image: '', readOnly: false, isRoot: true }] } }), 'spec.volumes[0].id'],
      'vms/hr/nul': [rec('nul', { uid: 'a\u0000b' }), 'uid'],
      'vms/hr/null': ['null', '(value)'],
      'vms/hr/badjson': ['{"uid": ', '(value)'],
      'vms/hr/unknown': [rec('unknown', { owner: 'root' }), 'owner'],
      'vms/hr/wrongtype': [rec('wrongtype', { generation: '1' }), 'generation'],
      'vms/hr/huge': [rec('huge', { reason: 'r'.repeat(1_100_000) }), '(value)'],
    };
    const sampled: GcStatus[] = [];
    const sampler = setInterval(() => void status().then((s) => sampled.push(s), () => undefined), 250);
    try {
      for (const [key, [value]] of Object.entries(hostile)) await put(key, value);
      // The running VM's record becomes unparsable.
      await put('vms/hr/keep', '{"uid": ');

      const want = [...Object.keys(hostile), 'vms/hr/keep'];
      const seen = await until('an invalid-record event for every hostile key', async () => {
        const ev = (await events()).filter((e) => e.kind === EVENT_RECORD_INVALID);
        return want.every((k) => ev.some((e) => e.detail.key === k)) ? ev : undefined;
      }, 20_000, 250);
      for (const [key, [, field]] of Object.entries(hostile)) {
        const e = seen.filter((x) => x.detail.key === key);
        expect(e, key).toHaveLength(1);
        expect(e[0]!.detail.field, key).toBe(field);
        expect(String(e[0]!.detail.error), key).toMatch(new RegExp(`^${key.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}: `));
      }
      const kept = await until('the VM is reported kept', async () => (await events()).find((e) => e.kind === EVENT_VM_KEPT_UNREADABLE && e.vmUid === uid), 10_000, 250);
      expect(kept.detail).toMatchObject({ key: 'vms/hr/keep', field: '(value)' });

      // Several more sync rounds: nothing more is reported (once per revision), the VM still runs.
      await new Promise((r) => setTimeout(r, 4000));
      expect((await events()).filter((e) => e.kind === EVENT_RECORD_INVALID)).toHaveLength(want.length);
      expect(qemusOf(hostId).get(uid)).toBe(pid);
      expect((await agent.api().get(uid)).status.state).toBe('CREATED');
      const errors = logLines().filter((l) => l.level >= 50 && l.msg.startsWith('cluster record read from etcd is invalid'));
      expect(errors.map((l) => l.key).sort()).toEqual([...want].sort());
      expect(errors.every((l) => typeof l.field === 'string' && l.field.length > 0)).toBe(true);

      // The controller-side reader (this test's store) skips the same records, each reported once.
      const scan = await store.scanVms(3000);
      expect(scan.entries.map((e) => e.key)).toEqual([]);
      expect(scan.invalid.map((e) => e.key).sort()).toEqual([...want].sort());
      await store.scanVms(3000);
      expect(store.invalidRecords.total).toBe(want.length);

      // The record is readable again: the same VM, same pid, and its status flows back.
      await put('vms/hr/keep', JSON.stringify({ ...good, phase: 'pending', generation: good.generation + 1 } satisfies ClusterVmRecord));
      await until('keep running again in the record', async () => (await store.listVms(3000)).find((x) => x.key === 'hr/keep')?.record.phase === 'running', 10_000, 200);
      expect(qemusOf(hostId).get(uid)).toBe(pid);
    } finally {
      clearInterval(sampler);
    }

    // No file outside the VM's own folder was touched: decoys intact, nothing added or removed.
    const s2 = snapshot(dir, skip);
    const touched = changes(s1, s2).filter((c) => !journal(c.split(' ')[1]!) && !churn.has(c.split(' ')[1]!));
    expect(touched).toEqual([]);
    console.log(`hostile-records: ${s2.size} entries compared; ignored as journal or baseline churn: ${[...new Set([...churn, ...[...s2.keys()].filter(journal)])].sort().join(', ')}`);
    expect(readFileSync(join(stateDir, 'decoy-root.txt'), 'utf8')).toBe('must survive');
    expect(readFileSync(join(victim, 'vol-root.qcow2'), 'utf8')).toBe('QFI\xfb decoy overlay of another VM');
    expect(readdirSync(join(stateDir, 'vm')).sort()).toEqual(['hr', 'victim']);
    expect(readdirSync(join(stateDir, 'vm', 'hr'))).toEqual(['keep']);

    // No crash, and the agent kept heartbeating the whole time.
    expect(agent.running).toBe(true);
    expect(sampled.length).toBeGreaterThan(10);
    // Never detached (a keepalive answered late may show `suspect` for a moment on 2 shared cores).
    expect(sampled.filter((s) => s.phase !== 'attached' && s.phase !== 'suspect')).toEqual([]);
    expect(sampled.filter((s) => (s.lastAckAgeMs ?? Infinity) >= TTL_MS)).toEqual([]);
    expect(logLines().filter((l) => /unhandled|uncaught/i.test(l.msg))).toEqual([]);
  }, 120_000);

  it('a malformed host record fails registration with a non-retryable INVALID_RECORD naming the field, and is never overwritten', async () => {
    const cs = new EtcdClusterStore({ endpoints: etcd.endpoints(), security: etcd.clientTls(), prefix: PREFIX });
    const id = `${hostId}-broken`;
    const bad = JSON.stringify({ hostId: id, state: 'attached', epoch: 1, timings: { ...DEFAULT_TIMINGS, ttl: '6s' }, hold: false, capacity: { vcpu: 1, memoryMb: 512 }, labels: {}, agentVersion: 't', updatedAt: 0 });
    await put(`hosts/${id}/record`, bad);
    const lease = await cs.grantLease(3000, 3000);
    try {
      const reg = { hostId: id, mode: 'reattach' as const, epoch: 1, lease, agentId: 'a1', holder: 'test', holdApplied: false, record: { hostId: id, timings: DEFAULT_TIMINGS, capacity: { vcpu: 1, memoryMb: 512 }, labels: {}, agentVersion: 't' } };
      const err = await expectCode(cs.register(reg, 3000), 'INVALID_RECORD');
      expect(err.message).toBe(`hosts/${id}/record: timings.ttl: expected number, received string`);
      expect(err.retryable).toBe(false);
      await expectCode(cs.getHost(id, 3000), 'INVALID_RECORD');
      expect((await store.client.get(`${PREFIX}hosts/${id}/record`).string())).toBe(bad);
      expect(await store.client.get(`${PREFIX}hosts/${id}/alive`).string()).toBeNull();
    } finally {
      await cs.revokeLease(lease, 3000).catch(() => undefined);
      await cs.close();
    }
  }, 30_000);
});
