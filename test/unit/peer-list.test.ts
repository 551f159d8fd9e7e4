import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { PEER_LIST_FILE, PeerList, type PeerListStore } from '../../src/agent/peer/peer-list.js';
import { decodeHostRecord, encodeHostRecord } from '../../src/domain/codec.js';
import { isPeerAddress } from '../../src/domain/codec/peer-address.js';
import { TetherError } from '../../src/domain/errors.js';
import { DEFAULT_TIMINGS } from '../../src/domain/gc-timing.js';
import { Keyspace } from '../../src/domain/keyspace.js';
import { registrationTxn } from '../../src/domain/registration-txn.js';
import type { HostRecord, HostRecordState } from '../../src/domain/host-record.js';
import { decodePersistedPool, encodePersistedPool, PeerPool } from '../../src/domain/peer-pool.js';
import type { HostEntry, HostWatchEvent, HostsSnapshot, WatchHandlers } from '../../src/ports/controller-store.js';
import { FakeClock } from '../support/fake-clock.js';
import { silentLogger } from '../support/fake-ports.js';

/** The pool a peer check asks (pure PeerPool) and the PeerList that feeds and persists it. */

const rec = (hostId: string, state: HostRecordState, peerAddress?: string): HostRecord => ({
  hostId,
  state,
  epoch: 1,
  timings: DEFAULT_TIMINGS,
  hold: false,
  capacity: { vcpu: 1, memoryMb: 512 },
  labels: {},
  agentVersion: '0.1.0',
  updatedAt: 1,
  ...(peerAddress !== undefined ? { peerAddress } : {}),
});

describe('peer address on the host record', () => {
  it('is optional, validated, and round-trips', () => {
    const r = rec('h1', 'attached', '10.0.0.1:9443');
    expect(decodeHostRecord('hosts/h1/record', encodeHostRecord('hosts/h1/record', r))).toEqual({ ok: true, value: r });
    expect(decodeHostRecord('hosts/h1/record', JSON.stringify(rec('h1', 'attached'))).ok).toBe(true);
    for (const bad of ['10.0.0.1', '0.0.0.0:9443', '[::]:9443', '10.0.0.1:0', '10.0.0.1:70000', 'a b:1', '-x:1', 'x:01']) {
      const d = decodeHostRecord('hosts/h1/record', JSON.stringify({ ...rec('h1', 'attached'), peerAddress: bad }));
      expect(d.ok, bad).toBe(false);
      if (!d.ok) expect(d.error.field).toBe('peerAddress');
    }
    for (const good of ['127.0.0.1:1', '[::1]:65535', 'node-7.example.org:9443']) expect(isPeerAddress(good), good).toBe(true);
  });

  it('is written by each registration as the agent gives it, and dropped when it gives none', () => {
    const keys = new Keyspace('/t/');
    const { state: _s, epoch: _e, hold: _h, updatedAt: _u, ...fields } = rec('h1', 'attached', '10.0.0.1:9443');
    const reg = { hostId: 'h1', mode: 'ready' as const, epoch: 1, agentId: 'a1', holder: 'test', holdApplied: false, record: fields, lease: '7' };
    const cur = { record: rec('h1', 'fenced', '10.0.0.9:1'), modRevision: 5 };
    const with_ = registrationTxn(keys, reg, cur, undefined, 1);
    expect(with_.ok && with_.record.peerAddress).toBe('10.0.0.1:9443');
    const { peerAddress: _p, ...none } = fields;
    const without = registrationTxn(keys, { ...reg, record: none }, cur, undefined, 1);
    expect(without.ok && 'peerAddress' in without.record).toBe(false);
  });
});

describe('PeerPool', () => {
  it('keeps attached, ready and detached hosts other than self; counts self; lists only addressed ones', () => {
    const p = new PeerPool('me');
    expect(p.poolSize()).toBe(1);
    expect(
      p.reset([
        { hostId: 'me', record: rec('me', 'attached', '127.0.0.1:1') },
        { hostId: 'b', record: rec('b', 'ready', '127.0.0.1:3') },
        { hostId: 'a', record: rec('a', 'attached', '127.0.0.1:2') },
        { hostId: 'c', record: rec('c', 'detached') },
        { hostId: 'd', record: rec('d', 'fenced', '127.0.0.1:5') },
        { hostId: 'e', record: rec('e', 'retired', '127.0.0.1:6') },
        { hostId: 'f' },
      ]),
    ).toBe(true);
    expect(p.endpoints()).toEqual([{ hostId: 'a', address: '127.0.0.1:2' }, { hostId: 'b', address: '127.0.0.1:3' }]);
    expect(p.peerIds()).toEqual(['a', 'b', 'c']);
    expect(p.poolSize()).toBe(4);
    expect(p.apply('a', rec('a', 'attached', '127.0.0.1:2'))).toBe(false); // nothing changed
    expect(p.apply('a', rec('a', 'detached', '127.0.0.1:2'))).toBe(true);
    expect(p.apply('b', rec('b', 'fenced', '127.0.0.1:3'))).toBe(true);
    expect(p.apply('c', undefined)).toBe(true);
    expect(p.apply('me', undefined)).toBe(false);
    expect(p.peerIds()).toEqual(['a']);
    expect(p.poolSize()).toBe(2);
  });

  it('persists and loads; refuses a malformed file or another host\'s', () => {
    const p = new PeerPool('me');
    p.reset([{ hostId: 'a', record: rec('a', 'attached', '127.0.0.1:2') }, { hostId: 'c', record: rec('c', 'detached') }]);
    const text = encodePersistedPool(p);
    const d = decodePersistedPool(text, 'me');
    expect(d).toEqual({ ok: true, members: p.list() });
    expect(decodePersistedPool(text, 'other')).toMatchObject({ ok: false, why: expect.stringContaining('written for host me') });
    expect(decodePersistedPool('{', 'me').ok).toBe(false);
    const bad = JSON.parse(text) as { peers: { peerAddress?: string }[] };
    bad.peers[0]!.peerAddress = '0.0.0.0:1';
    expect(decodePersistedPool(JSON.stringify(bad), 'me')).toMatchObject({ ok: false, why: expect.stringContaining('peers.0.peerAddress') });
  });
});

/** A controller store's host listing and watch, in memory; the test drives events and errors. */
class FakeHostStore implements PeerListStore {
  hosts = new Map<string, HostRecord>();
  revision = 10;
  lists = 0;
  watchesFrom: string[] = [];
  handlers: WatchHandlers<HostWatchEvent> | undefined;
  closed = 0;
  failList: Error | undefined;

  async listHosts(): Promise<HostsSnapshot> {
    this.lists++;
    if (this.failList) throw this.failList;
    return { revision: String(this.revision), hosts: [...this.hosts.values()].map((r): HostEntry => ({ hostId: r.hostId, record: r })) };
  }
  async watchHosts(from: string, h: WatchHandlers<HostWatchEvent>) {
    this.watchesFrom.push(from);
    this.handlers = h;
    return { close: async () => void this.closed++ };
  }
  put(r: HostRecord): void {
    this.hosts.set(r.hostId, r);
    this.handlers?.onEvent({ kind: 'record', hostId: r.hostId, record: r, revision: String(++this.revision) });
  }
  del(id: string): void {
    this.hosts.delete(id);
    this.handlers?.onEvent({ kind: 'record-deleted', hostId: id, revision: String(++this.revision) });
  }
}

const dirs: string[] = [];
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

function setup(attached = { v: true }) {
  const stateDir = mkdtempSync(join(tmpdir(), 'peer-list-'));
  dirs.push(stateDir);
  const clock = new FakeClock();
  const store = new FakeHostStore();
  const make = () => new PeerList({ hostId: 'me', stateDir, store, clock, logger: silentLogger(), attached: () => attached.v, intervalMs: 1000 });
  return { stateDir, clock, store, make, attached };
}

describe('PeerList', () => {
  it('lists, then follows the watch from the listing revision + 1, and saves every change 0600', async () => {
    const { stateDir, clock, store, make } = setup();
    store.hosts.set('a', rec('a', 'attached', '127.0.0.1:2'));
    store.hosts.set('me', rec('me', 'attached', '127.0.0.1:1'));
    const list = make();
    list.start();
    await clock.advance(0);
    expect(store.watchesFrom).toEqual(['11']);
    expect(list.peers()).toEqual([{ hostId: 'a', address: '127.0.0.1:2' }]);
    expect(list.poolSize()).toBe(2);
    store.put(rec('b', 'ready', '127.0.0.1:3'));
    store.put(rec('c', 'detached'));
    expect(list.peerIds()).toEqual(['a', 'b', 'c']);
    store.put(rec('a', 'fenced', '127.0.0.1:2'));
    store.del('b');
    store.handlers!.onEvent({ kind: 'alive-deleted', hostId: 'c', revision: String(++store.revision) });
    expect(list.peerIds()).toEqual(['c']);
    const file = join(stateDir, PEER_LIST_FILE);
    expect(statSync(file).mode & 0o777).toBe(0o600);
    expect(decodePersistedPool(readFileSync(file, 'utf8'), 'me')).toEqual({ ok: true, members: [{ hostId: 'c', state: 'detached' }] });
    await list.stop();
    expect(store.closed).toBe(1);
  });

  it('an agent restarted while detached knows its peers from the file, and asks the store nothing', async () => {
    const { clock, store, make, attached } = setup();
    store.hosts.set('a', rec('a', 'attached', '127.0.0.1:2'));
    store.hosts.set('b', rec('b', 'attached', '127.0.0.1:3'));
    const first = make();
    first.start();
    await clock.advance(0);
    await first.stop();
    attached.v = false;
    const second = make();
    second.start();
    await clock.advance(5000);
    expect(second.peers()).toEqual([{ hostId: 'a', address: '127.0.0.1:2' }, { hostId: 'b', address: '127.0.0.1:3' }]);
    expect(second.poolSize()).toBe(3);
    expect(store.lists).toBe(1); // only the first agent's
    await second.stop();
  });

  it('a watch error resumes from the last revision seen; COMPACTED lists again; a failed list retries', async () => {
    const { clock, store, make } = setup();
    const list = make();
    list.start();
    await clock.advance(0);
    store.put(rec('a', 'attached', '127.0.0.1:2')); // revision 11
    store.handlers!.onError(new TetherError('UNAVAILABLE', 'stream reset', { retryable: true }));
    await clock.advance(1000);
    expect(store.watchesFrom).toEqual(['11', '12']);
    expect(store.lists).toBe(1);
    store.revision = 50;
    store.hosts.set('z', rec('z', 'ready', '127.0.0.1:9'));
    store.handlers!.onError(new TetherError('COMPACTED', 'compacted', { details: { compactRevision: 40 } }));
    store.failList = new TetherError('UNAVAILABLE', 'no leader', { retryable: true });
    await clock.advance(1000);
    expect(store.lists).toBe(2);
    expect(list.peerIds()).toEqual(['a']); // a failed list changes nothing
    store.failList = undefined;
    await clock.advance(1000);
    expect(store.lists).toBe(3);
    expect(store.watchesFrom.at(-1)).toBe('51');
    expect(list.peerIds()).toEqual(['a', 'z']);
    await list.stop();
  });

  it('attached again after a detachment, the watch is re-established from the last revision (no list)', async () => {
    const { clock, store, make, attached } = setup();
    const list = make();
    list.start();
    await clock.advance(0);
    store.put(rec('a', 'attached', '127.0.0.1:2'));
    attached.v = false;
    await clock.advance(1000);
    attached.v = true;
    await clock.advance(1000);
    expect(store.closed).toBe(1);
    expect(store.watchesFrom).toEqual(['11', '12']);
    expect(store.lists).toBe(1);
    await list.stop();
  });

  it('ignores an unusable saved file (warned) and replaces it on the next listing', async () => {
    const { stateDir, clock, store } = setup();
    writeFileSync(join(stateDir, PEER_LIST_FILE), '{"version":1,"hostId":"someone-else","peers":[]}');
    const sink: string[] = [];
    const list = new PeerList({ hostId: 'me', stateDir, store, clock, logger: silentLogger(sink), attached: () => true, intervalMs: 1000 });
    expect(sink.join('\n')).toContain('saved pool unusable');
    store.hosts.set('a', rec('a', 'attached', '127.0.0.1:2'));
    list.start();
    await clock.advance(0);
    expect(decodePersistedPool(readFileSync(join(stateDir, PEER_LIST_FILE), 'utf8'), 'me').ok).toBe(true);
    await list.stop();
  });
});
