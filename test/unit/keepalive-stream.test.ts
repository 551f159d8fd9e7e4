/**
 * The matching rules of the shared LeaseKeepAlive stream (src/adapters/etcd/keepalive-stream.ts) on
 * a scripted duplex: etcd answers each request once, in order, so the n-th answer for a lease is the
 * n-th request of that lease; an abandoned request keeps its place (its late answer is dropped, never
 * given to the next request); a broken stream fails every live request; a retired stream takes no new
 * request and closes once the live ones are settled. The real stream is tested on etcd in
 * test/integration/keepalive-stream.test.ts.
 */
import { EventEmitter } from 'node:events';
import { describe, expect, it } from 'vitest';
import type { ILeaseKeepAliveResponse } from 'etcd3';
import { KeepaliveStream, type KeepaliveDuplex } from '../../src/adapters/etcd/keepalive-stream.js';
import { TetherError } from '../../src/domain/errors.js';

class FakeDuplex extends EventEmitter {
  readonly written: string[] = [];
  ended = false;
  cancelled = false;
  write(item: { ID: string | number }): void {
    this.written.push(String(item.ID));
  }
  end(): void {
    this.ended = true;
  }
  cancel(): void {
    this.cancelled = true;
  }
  answer(id: string, ttl: string, revision = '1'): void {
    const res = { ID: id, TTL: ttl, header: { cluster_id: '1', member_id: '2', revision, raft_term: '3' } } as unknown as ILeaseKeepAliveResponse;
    this.emit('data', res);
  }
}

function make(): { raw: FakeDuplex; s: KeepaliveStream } {
  const raw = new FakeDuplex();
  return { raw, s: new KeepaliveStream(raw as unknown as KeepaliveDuplex) };
}

const settled = async <T>(p: Promise<T>): Promise<'pending' | T> => Promise.race([p, new Promise<'pending'>((r) => setImmediate(() => r('pending')))]);

describe('KeepaliveStream', () => {
  it('answers go to requests of their own lease, in order per lease, whatever the interleaving', async () => {
    const { raw, s } = make();
    const a1 = s.send('A');
    const b1 = s.send('B');
    const a2 = s.send('A');
    expect(raw.written).toEqual(['A', 'B', 'A']);
    raw.answer('B', '10', '5');
    raw.answer('A', '6', '6');
    raw.answer('A', '6', '7');
    expect((await b1.answer).header.revision).toBe('5');
    expect((await a1.answer).header.revision).toBe('6');
    expect((await a2.answer).header.revision).toBe('7');
    expect(s.waiting).toBe(0);
    expect(s.open).toBe(true);
  });

  it('an abandoned request keeps its place: its late answer is dropped, the next request of that lease gets the next answer', async () => {
    const { raw, s } = make();
    const first = s.send('A');
    first.abandon();
    const second = s.send('A');
    raw.answer('A', '6', '10'); // the answer to `first`, late
    expect(await settled(second.answer)).toBe('pending');
    raw.answer('A', '6', '11');
    expect((await second.answer).header.revision).toBe('11');
    expect(await settled(first.answer)).toBe('pending'); // never settled: its caller gave up
  });

  it('an answer for a lease nobody asked about is ignored', async () => {
    const { raw, s } = make();
    const a = s.send('A');
    raw.answer('Z', '6');
    expect(await settled(a.answer)).toBe('pending');
    raw.answer('A', '0');
    expect((await a.answer).TTL).toBe('0');
  });

  it('a stream error fails every live request with it, closes the stream, and refuses new requests (retryable UNAVAILABLE)', async () => {
    const { raw, s } = make();
    const a = s.send('A');
    const b = s.send('B');
    b.abandon();
    const err = new Error('14 UNAVAILABLE: Connection dropped');
    raw.emit('error', err);
    await expect(a.answer).rejects.toBeDefined();
    expect(s.open).toBe(false);
    expect(raw.ended && raw.cancelled).toBe(true);
    try {
      s.send('A');
      expect.unreachable();
    } catch (e) {
      expect(e).toBeInstanceOf(TetherError);
      expect((e as TetherError).code).toBe('UNAVAILABLE');
      expect((e as TetherError).retryable).toBe(true);
    }
  });

  it('the end of the stream fails live requests as a retryable UNAVAILABLE', async () => {
    const { raw, s } = make();
    const a = s.send('A');
    raw.emit('end');
    const e = await a.answer.then(() => undefined, (x: unknown) => x);
    expect(e).toBeInstanceOf(TetherError);
    expect((e as TetherError).code).toBe('UNAVAILABLE');
    expect((e as TetherError).retryable).toBe(true);
  });

  it('a retired stream takes no new request, still answers the live ones, and closes once they are settled (abandoned ones do not hold it open)', async () => {
    const { raw, s } = make();
    const a = s.send('A');
    const b = s.send('B');
    b.abandon();
    s.retire();
    expect(s.open).toBe(false);
    expect(() => s.send('C')).toThrow(TetherError);
    expect(raw.cancelled).toBe(false);
    raw.answer('A', '6');
    expect((await a.answer).TTL).toBe('6');
    expect(raw.ended && raw.cancelled).toBe(true);
    // A retired stream with nothing live closes at once.
    const other = make();
    other.s.send('A').abandon();
    other.s.retire();
    expect(other.raw.cancelled).toBe(true);
  });

  it('close() fails live requests as a retryable UNAVAILABLE and ends the stream (end before cancel)', async () => {
    const { raw, s } = make();
    const a = s.send('A');
    s.close();
    const e = await a.answer.then(() => undefined, (x: unknown) => x);
    expect((e as TetherError).code).toBe('UNAVAILABLE');
    expect(raw.ended && raw.cancelled).toBe(true);
    raw.answer('A', '6'); // after close: ignored
  });
});
