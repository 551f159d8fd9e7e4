import { describe, expect, it } from 'vitest';
import { WatchFeed, type FeedView } from '../../src/agent/watch-feed.js';
import { TetherError } from '../../src/domain/errors.js';
import { silentLogger } from '../support/fake-ports.js';

/** A view over a counter: `relist` sets the revision, watches are recorded with their handlers. */
function fakeView() {
  const watches: { from: string; onEvent(e: number): void; onError(err: unknown): void; closed: boolean }[] = [];
  const applied: number[] = [];
  let rev: number | undefined;
  let failList: Error | undefined;
  const view: FeedView<number> = {
    revision: () => rev,
    relist: async () => {
      if (failList) throw failList;
      rev = 10;
    },
    watch: async (from, h) => {
      const w = { from, ...h, closed: false };
      watches.push(w);
      return { close: async () => void (w.closed = true) };
    },
    apply: (e) => {
      applied.push(e);
      rev = e;
    },
  };
  return { view, watches, applied, setFailList: (e: Error | undefined) => (failList = e) };
}

describe('WatchFeed', () => {
  it('lists once, watches from the revision after it, resumes after an error without a list', async () => {
    const v = fakeView();
    const feed = new WatchFeed(v.view, silentLogger(), 'test watch');
    await feed.ensure(1000);
    expect(feed.up).toBe(true);
    expect(v.watches.map((w) => w.from)).toEqual(['11']);
    v.watches[0]!.onEvent(12);
    v.watches[0]!.onError(new TetherError('UNAVAILABLE', 'reset', { retryable: true }));
    expect(feed.up).toBe(false);
    await feed.ensure(1000);
    expect(v.watches.map((w) => w.from)).toEqual(['11', '13']);
    expect(feed.stats).toEqual({ lists: 1, watches: 2, watchErrors: 1 });
  });

  it('after COMPACTED it lists again, and a list that fails keeps it so: the next attempt lists, it does not resume', async () => {
    const v = fakeView();
    const feed = new WatchFeed(v.view, silentLogger(), 'test watch');
    await feed.ensure(1000);
    v.watches[0]!.onError(new TetherError('COMPACTED', 'gone', { retryable: false }));
    v.setFailList(new TetherError('UNAVAILABLE', 'no leader', { retryable: true }));
    await expect(feed.ensure(1000)).rejects.toThrow(/no leader/);
    expect(v.watches).toHaveLength(1);
    v.setFailList(undefined);
    await feed.ensure(1000);
    expect(feed.stats).toEqual({ lists: 3, watches: 2, watchErrors: 1 });
  });

  it('a dropped or failed watch delivers nothing more; re-attached, it re-opens from the revision (a watch, not a list); closed, it does nothing', async () => {
    const v = fakeView();
    const feed = new WatchFeed(v.view, silentLogger(), 'test watch');
    await feed.ensure(1000);
    v.watches[0]!.onEvent(11);
    await feed.reattached();
    expect(v.watches[0]!.closed).toBe(true);
    v.watches[0]!.onEvent(99);
    expect(v.applied).toEqual([11]);
    await feed.ensure(1000);
    expect(v.watches.map((w) => w.from)).toEqual(['11', '12']);
    expect(feed.stats.lists).toBe(1);
    await feed.close();
    expect(v.watches[1]!.closed).toBe(true);
    v.watches[1]!.onEvent(50);
    await feed.ensure(1000);
    expect(v.applied).toEqual([11]);
    expect(v.watches).toHaveLength(2);
    expect(feed.up).toBe(false);
  });
});
