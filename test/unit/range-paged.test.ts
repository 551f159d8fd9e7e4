import { describe, expect, it } from 'vitest';
import { isReplyTooLarge, rangePaged } from '../../src/adapters/kv/range-paged.js';
import { EtcdModel } from '../../src/dev/etcd-model/index.js';
import type { ClusterVmRecord } from '../../src/domain/cluster-vm.js';
import { TetherError } from '../../src/domain/errors.js';
import { DEFAULT_PAGE_SIZE, ETCD_CLIENT_MAX_RECV_BYTES, estimateRangeReplyBytes, VM_CREATE_MAX_BYTES, VM_RECORD_MAX_BYTES } from '../../src/domain/kv-read-limits.js';
import type { Kv } from '../../src/ports/kv.js';
import { rec } from '../support/controller-step.js';
import { expectCode } from '../support/expect-code.js';
import { FakeClock } from '../support/fake-clock.js';
import { bareSpec } from '../support/host-harness.js';
import { ModelControllerStore } from '../support/model-cluster.js';

const DL = 5000;
/** grpc-js's default receive limit: the measured failure (4889527 vs 4194304). */
const GRPC_DEFAULT = 4 * 1024 * 1024;

function setup(maxRecv = GRPC_DEFAULT) {
  const clock = new FakeClock();
  const model = new EtcdModel(clock, { clientMaxRecvBytes: maxRecv });
  return { clock, model, kv: model.client('c1') };
}

/** Writes `n` keys `<prefix>kNNNNN` of `bytes` each, 100 per txn. */
async function fill(kv: Kv, prefix: string, n: number, bytes: number, value: (i: number) => string = (i) => `${i}:`.padEnd(bytes, 'x')) {
  for (let i = 0; i < n; i += 100) {
    const ops = [];
    for (let j = i; j < Math.min(n, i + 100); j++) ops.push({ op: 'put' as const, key: `${prefix}k${String(j).padStart(5, '0')}`, value: value(j) });
    await kv.txn({ compare: [], success: ops }, DL);
  }
}

describe('etcd model: the client receive limit', () => {
  it('refuses a range reply over the limit with RESOURCE_EXHAUSTED (reply-too-large), like grpc-js', async () => {
    const { kv } = setup();
    await fill(kv, '/p/', 600, 8000); // ~4.8 MB
    const err = await kv.range({ key: '/p/', prefix: true }, DL).catch((e: unknown) => e);
    expect(isReplyTooLarge(err)).toBe(true);
    expect((err as TetherError).details).toMatchObject({ reason: 'reply-too-large', limit: GRPC_DEFAULT });
    expect((err as TetherError).details.bytes as number).toBeGreaterThan(GRPC_DEFAULT);
    expect((err as TetherError).retryable).toBe(false);
    // Under the limit: fine.
    expect((await kv.range({ key: '/p/', prefix: true, limit: 100 }, DL)).kvs).toHaveLength(100);
  });

  it('a page of the largest records the API lets through fits the receive limit (DEFAULT_PAGE_SIZE x VM_RECORD_MAX_BYTES)', () => {
    const key = `/tether/hostvms/${'h'.repeat(63)}/${'n'.repeat(63)}/${'v'.repeat(63)}`.padEnd(300, 'k');
    const page = Array.from({ length: DEFAULT_PAGE_SIZE }, () => ({ key, value: 'x'.repeat(VM_RECORD_MAX_BYTES) }));
    expect(estimateRangeReplyBytes(page)).toBeLessThanOrEqual(ETCD_CLIENT_MAX_RECV_BYTES);
    expect(VM_CREATE_MAX_BYTES).toBeLessThan(VM_RECORD_MAX_BYTES);
  });

  it('defaults to the limit Tether sets on its etcd client, and estimates never below the payload', () => {
    expect(new EtcdModel(new FakeClock()).clientMaxRecvBytes).toBe(ETCD_CLIENT_MAX_RECV_BYTES);
    const kvs = [{ key: '/a', value: 'é'.repeat(1000) }];
    expect(estimateRangeReplyBytes(kvs)).toBeGreaterThan(2002);
  });

  it('reads a range from a start key to the end of the prefix (`from`)', async () => {
    const { kv } = setup();
    await fill(kv, '/p/', 10, 10);
    await kv.txn({ compare: [], success: [{ op: 'put', key: '/q', value: 'other' }] }, DL);
    const res = await kv.range({ key: '/p/', prefix: true, from: '/p/k00007' }, DL);
    expect(res.kvs.map((e) => e.key)).toEqual(['/p/k00007', '/p/k00008', '/p/k00009']);
    expect(res.count).toBe(3);
  });
});

describe('rangePaged', () => {
  it('reads a prefix larger than 4 MiB that one range cannot, halving pages that are too large', async () => {
    const { kv, clock } = setup();
    await fill(kv, '/p/', 600, 8000);
    const res = await rangePaged(kv, { key: '/p/', prefix: true }, { pageSize: 1000, clock }, DL);
    expect(res.kvs).toHaveLength(600);
    expect(res.kvs.map((e) => e.key)).toEqual([...res.kvs.map((e) => e.key)].sort());
    expect(new Set(res.kvs.map((e) => e.key)).size).toBe(600);
    expect(res.pages).toBeGreaterThan(2); // at least one refusal, then pages that fit
  });

  it('pins every page to the first page revision: writes between pages are not seen', async () => {
    const { kv, clock } = setup();
    await fill(kv, '/p/', 50, 10);
    const before = await kv.range({ key: '/p/', prefix: true }, DL);
    let n = 0;
    const res = await rangePaged(
      kv,
      { key: '/p/', prefix: true },
      {
        pageSize: 7,
        clock,
        onPage: () => {
          n++;
          // Between pages: delete a key not yet read, add one at the end, change one.
          void kv.txn(
            {
              compare: [],
              success: [
                { op: 'delete', key: `/p/k${String(49 - n).padStart(5, '0')}` },
                { op: 'put', key: `/p/z${n}`, value: 'new' },
                { op: 'put', key: '/p/k00002', value: `changed ${n}` },
              ],
            },
            DL,
          );
        },
      },
      DL,
    );
    expect(n).toBe(8);
    expect(res.revision).toBe(before.header.revision);
    expect(res.kvs).toEqual(before.kvs);
    expect(res.header.revision).toBeGreaterThan(res.revision);
  });

  it('starts over when the pinned revision is compacted between pages', async () => {
    const { kv, model, clock } = setup();
    await fill(kv, '/p/', 30, 10);
    let compacted = false;
    const res = await rangePaged(
      kv,
      { key: '/p/', prefix: true },
      {
        pageSize: 10,
        clock,
        onPage: () => {
          if (compacted) return;
          compacted = true;
          void kv.txn({ compare: [], success: [{ op: 'put', key: '/p/zz', value: 'after' }] }, DL).then(() => model.compact(model.revision));
        },
      },
      DL,
    );
    expect(res.kvs.map((e) => e.key)).toContain('/p/zz');
    expect(res.kvs).toHaveLength(31);
  });

  it('throws COMPACTED at a caller-given revision, and a single key over the limit', async () => {
    const { kv, model, clock } = setup(64 * 1024);
    await fill(kv, '/p/', 3, 10);
    const rev = model.revision;
    await fill(kv, '/p/', 3, 10, () => 'v2');
    model.compact(model.revision);
    await expectCode(rangePaged(kv, { key: '/p/', prefix: true }, { revision: rev, clock }, DL), 'COMPACTED');
    await kv.txn({ compare: [], success: [{ op: 'put', key: '/p/big', value: 'x'.repeat(70 * 1024) }] }, DL);
    await expectCode(rangePaged(kv, { key: '/p/', prefix: true }, { clock }, DL), 'RESOURCE_EXHAUSTED');
  });

  it('bounds the whole read by one deadline on the given clock', async () => {
    const { kv, clock } = setup();
    await fill(kv, '/p/', 20, 10);
    let calls = 0;
    // Time moves 2 s per page: the third page has no time left of the 5 s deadline.
    const slow = { nowMono: () => clock.nowMono() + 2000 * calls++ };
    await expectCode(rangePaged(kv, { key: '/p/', prefix: true }, { pageSize: 5, clock: slow }, DL), 'TIMEOUT');
  });

  it('reads an empty prefix and a single key', async () => {
    const { kv } = setup();
    expect((await rangePaged(kv, { key: '/none/', prefix: true }, {}, DL)).kvs).toEqual([]);
    await kv.txn({ compare: [], success: [{ op: 'put', key: '/one', value: '1' }] }, DL);
    expect((await rangePaged(kv, { key: '/one' }, {}, DL)).kvs.map((e) => e.value)).toEqual(['1']);
    expect(DEFAULT_PAGE_SIZE).toBeGreaterThan(0);
  });
});

describe('KvControllerStore lists past the 4 MiB receive limit (etcd model)', () => {
  const big = (i: number): string => `${i}`.padEnd(7000, 'm');

  async function bigCluster() {
    const clock = new FakeClock();
    const model = new EtcdModel(clock, { clientMaxRecvBytes: GRPC_DEFAULT });
    const store = new ModelControllerStore(clock, '/tether/', { model });
    const w = model.client('writer');
    // 700 hosts with 7 KB of labels each (~4.9 MB), 700 VMs with 7 KB of metadata (~4.9 MB), 700 events (~4.9 MB).
    for (let i = 0; i < 700; i += 50) {
      const ops = [];
      for (let j = i; j < i + 50; j++) {
        const h = `h${String(j).padStart(4, '0')}`;
        ops.push({ op: 'put' as const, key: `/tether/hosts/${h}/record`, value: JSON.stringify(rec(h, { labels: { pad: big(j) } })) });
        const record: ClusterVmRecord = {
          uid: `u${j}`,
          spec: { ...bareSpec(`vm${j}`), metadata: { pad: big(j) } },
          hostId: h,
          hostEpoch: 1,
          phase: 'running',
          generation: 1,
        } as ClusterVmRecord;
        ops.push({ op: 'put' as const, key: `/tether/vms/ns/vm${j}`, value: JSON.stringify(record) });
      }
      await w.txn({ compare: [], success: ops }, DL);
      const events = [];
      for (let j = i; j < i + 50; j++) {
        const at = 1_700_000_000_000 + j;
        const key = `/tether/events/${String(at).padStart(15, '0')}-${j.toString(16).padStart(8, '0')}`;
        events.push({ op: 'put' as const, key, value: JSON.stringify({ kind: 'host-hold-changed', hostId: 'h1', hold: true, at, detail: big(j) }) });
      }
      await w.txn({ compare: [], success: events }, DL);
    }
    return { clock, model, store, w };
  }

  it('an unpaged read of vms/ or events/ fails as on grpc-js; listHosts, getHost, listVms, scanVms, listEvents and pruneEvents page and return everything', async () => {
    const { model, store } = await bigCluster();
    await expectCode(model.client('raw').range({ key: '/tether/vms/', prefix: true }, DL), 'RESOURCE_EXHAUSTED');
    const hosts = await store.listHosts(DL);
    expect(hosts.hosts).toHaveLength(700);
    expect(hosts.hosts.every((h) => h.record?.labels.pad?.length === 7000)).toBe(true);
    expect((await store.getHost('h0005', DL)).record?.hostId).toBe('h0005');
    const vms = await store.listVms(DL);
    expect(vms).toHaveLength(700);
    const scan = await store.scanVms(DL);
    expect(scan.entries).toHaveLength(700);
    expect(scan.invalid).toEqual([]);
    await expectCode(model.client('raw').range({ key: '/tether/events/', prefix: true }, DL), 'RESOURCE_EXHAUSTED');
    expect((await store.listEvents(700, DL)).events).toHaveLength(700);
    expect((await store.listEvents(5, DL)).events.map((e) => e.event.at)).toEqual([695, 696, 697, 698, 699].map((j) => 1_700_000_000_000 + j));
    expect(await store.pruneEvents(10, DL)).toBe(690);
  });
});
