import { describe, expect, it } from 'vitest';
import {
  absorbFeed,
  guardianDecision,
  guardianFiles,
  guardianMayExit,
  parseGuardianFeed,
  validateFiredRecord,
  type FeedOutcome,
  type GuardianFeedRecord,
} from '../../src/domain/guardian.js';
import { InvalidArgumentError } from '../../src/domain/errors.js';

const HOST = 'h1';
const BOOT = 'boot-a';
const expectIds = { hostId: HOST, bootId: BOOT };
const feed = (over: Partial<Record<keyof GuardianFeedRecord, unknown>> = {}): GuardianFeedRecord =>
  ({ v: 1, hostId: HOST, bootId: BOOT, seq: 10, deadlineMono: 5000, epoch: 2, reason: 'attached', ...over }) as GuardianFeedRecord;
const text = (over: Partial<Record<keyof GuardianFeedRecord, unknown>> = {}): string => JSON.stringify(feed(over));

describe('guardian feed validation names the bad field', () => {
  const rows: [string, string, string][] = [
    ['not JSON', '{"v":1,', 'feed'],
    ['null', 'null', 'feed'],
    ['array', '[]', 'feed'],
    ['wrong version', text({ v: 2 }), 'v'],
    ['missing version', JSON.stringify({ ...feed(), v: undefined }), 'v'],
    ['empty host', text({ hostId: '' }), 'hostId'],
    ['numeric boot', text({ bootId: 7 }), 'bootId'],
    ['fractional seq', text({ seq: 1.5 }), 'seq'],
    ['negative seq', text({ seq: -1 }), 'seq'],
    ['string deadline', text({ deadlineMono: '5000' }), 'deadlineMono'],
    ['missing deadline', JSON.stringify({ ...feed(), deadlineMono: undefined }), 'deadlineMono'],
    ['negative deadline', text({ deadlineMono: -1 }), 'deadlineMono'],
    ['epoch string', text({ epoch: '2' }), 'epoch'],
    ['huge reason', text({ reason: 'x'.repeat(201) }), 'reason'],
    ['shutdown false', text({ shutdown: false }), 'shutdown'],
    ['huge file', JSON.stringify({ ...feed(), pad: 'x'.repeat(70_000) }), 'feed'],
  ];
  it.each(rows)('%s -> %s', (_name, t, field) => {
    let err: unknown;
    try {
      parseGuardianFeed(t);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(InvalidArgumentError);
    expect((err as InvalidArgumentError).field).toBe(field);
    expect((err as InvalidArgumentError).code).toBe('INVALID_ARGUMENT');
  });

  it('accepts null (suspended) and ignores unknown fields (a newer agent may add some)', () => {
    expect(parseGuardianFeed(text({ deadlineMono: null })).deadlineMono).toBeNull();
    const f = parseGuardianFeed(JSON.stringify({ ...feed(), futureField: { a: 1 } }));
    expect(f).toEqual(feed());
    expect(parseGuardianFeed(text({ shutdown: true })).shutdown).toBe(true);
  });
});

describe('absorbFeed: a pending deadline is never suppressed by a bad, foreign or stale feed', () => {
  const held = feed({ seq: 10, deadlineMono: 5000 });
  // [name, held, file text, expected outcome, expected held deadline afterwards]
  const rows: [string, GuardianFeedRecord | undefined, string | undefined, FeedOutcome, number | null | undefined][] = [
    ['first valid feed arms', undefined, text(), 'armed', 5000],
    ['first suspended feed', undefined, text({ deadlineMono: null }), 'suspended', null],
    ['no file, nothing held', undefined, undefined, 'missing', undefined],
    ['no file keeps the held deadline', held, undefined, 'missing', 5000],
    ['malformed keeps the held deadline', held, '{"v":1, "hostId":', 'rejected', 5000],
    ['malformed field keeps it', held, text({ seq: 11, deadlineMono: 'later' }), 'rejected', 5000],
    ['other boot keeps it', held, text({ seq: 11, bootId: 'boot-b', deadlineMono: 99_999 }), 'rejected', 5000],
    ['other host keeps it', held, text({ seq: 11, hostId: 'h2', deadlineMono: null }), 'rejected', 5000],
    ['older seq keeps it', held, text({ seq: 9, deadlineMono: 99_999 }), 'stale', 5000],
    ['same seq: nothing', held, text({ seq: 10, deadlineMono: 99_999 }), 'same', 5000],
    ['newer seq re-arms later', held, text({ seq: 11, deadlineMono: 6000 }), 're-armed', 6000],
    ['newer seq may re-arm earlier', held, text({ seq: 11, deadlineMono: 4000 }), 're-armed', 4000],
    ['newer seq, same deadline', held, text({ seq: 11, reason: 'suspect' }), 'renewed', 5000],
    ['newer seq suspends', held, text({ seq: 11, deadlineMono: null }), 'suspended', null],
    ['newer seq ends a suspension', feed({ deadlineMono: null }), text({ seq: 11, deadlineMono: 7000 }), 're-armed', 7000],
    ['shutdown keeps its deadline', held, text({ seq: 11, shutdown: true }), 'shutdown', 5000],
  ];
  it.each(rows)('%s', (_name, h, t, outcome, deadline) => {
    const r = absorbFeed(h, t, expectIds);
    expect(r.outcome).toBe(outcome);
    expect(r.held?.deadlineMono).toBe(deadline);
    if (outcome === 'rejected') expect(r.error).toBeInstanceOf(InvalidArgumentError);
    else expect(r.error).toBeUndefined();
  });

  it('names the field of a foreign feed', () => {
    expect(absorbFeed(held, text({ seq: 11, bootId: 'b2' }), expectIds).error?.field).toBe('bootId');
    expect(absorbFeed(held, text({ seq: 11, hostId: 'h2' }), expectIds).error?.field).toBe('hostId');
  });
});

describe('guardianDecision', () => {
  const rows: [string, GuardianFeedRecord | undefined, string, number, string][] = [
    ['no feed', undefined, BOOT, 10_000, 'idle'],
    ['other boot counts as none', feed({ bootId: 'old' }), BOOT, 10_000, 'idle'],
    ['suspended never fires', feed({ deadlineMono: null }), BOOT, 1e12, 'suspended'],
    ['before the deadline', feed({ deadlineMono: 5000 }), BOOT, 4999.9, 'wait'],
    ['at the deadline', feed({ deadlineMono: 5000 }), BOOT, 5000, 'fire'],
    ['after the deadline', feed({ deadlineMono: 5000 }), BOOT, 7500, 'fire'],
    ['shutdown with a passed deadline still fires', feed({ deadlineMono: 5000, shutdown: true }), BOOT, 6000, 'fire'],
  ];
  it.each(rows)('%s', (_n, f, boot, now, kind) => {
    expect(guardianDecision(f, boot, now).kind).toBe(kind);
  });

  it('waits until the deadline and reports lateness when firing', () => {
    expect(guardianDecision(feed(), BOOT, 1000)).toEqual({ kind: 'wait', until: 5000 });
    expect(guardianDecision(feed(), BOOT, 5250)).toEqual({ kind: 'fire', deadlineMono: 5000, lateMs: 250, seq: 10 });
  });

  it('never fires while renewed deadlines keep moving ahead (checked at every step)', () => {
    let held: GuardianFeedRecord | undefined;
    for (let now = 0, seq = 1; now < 600_000; now += 100, seq++) {
      // The agent feeds lastAck + 1500 at every acknowledged heartbeat (every 100 ms here).
      held = absorbFeed(held, text({ seq, deadlineMono: now + 1500 }), expectIds).held;
      expect(guardianDecision(held, BOOT, now + 99).kind).toBe('wait');
    }
  });

  it('fires once renewals stop, even when garbage and foreign feeds keep arriving', () => {
    let held = absorbFeed(undefined, text({ seq: 1, deadlineMono: 1500 }), expectIds).held;
    const noise = ['', 'garbage', text({ seq: 2, bootId: 'other', deadlineMono: 1e9 }), text({ seq: 0, deadlineMono: 1e9 }), text({ seq: 3, hostId: 'x', deadlineMono: null })];
    for (const n of noise) held = absorbFeed(held, n, expectIds).held;
    expect(guardianDecision(held, BOOT, 1499).kind).toBe('wait');
    expect(guardianDecision(held, BOOT, 1500).kind).toBe('fire');
  });

  it('may exit only after a shutdown feed and with no VM left', () => {
    expect(guardianMayExit(feed({ shutdown: true }), 0)).toBe(true);
    expect(guardianMayExit(feed({ shutdown: true }), 1)).toBe(false);
    expect(guardianMayExit(feed(), 0)).toBe(false);
    expect(guardianMayExit(undefined, 0)).toBe(false);
  });
});

describe('guardian files and fired record', () => {
  it('lays out the guardian folder under the state dir', () => {
    expect(guardianFiles('/var/lib/tether/')).toEqual({
      dir: '/var/lib/tether/guardian',
      feed: '/var/lib/tether/guardian/feed.json',
      fired: '/var/lib/tether/guardian/fired.json',
      journal: '/var/lib/tether/guardian/journal.jsonl',
      pid: '/var/lib/tether/guardian/guardian.pid',
      log: '/var/lib/tether/guardian/guardian.log',
    });
  });

  it('validates a fired record and names the bad field', () => {
    const ok = {
      v: 1, hostId: HOST, bootId: BOOT, seq: 3, epoch: 1, reason: 'detached', deadlineMono: 10, firedAtMono: 11, firedAt: 1,
      state: 'done', killed: [{ pid: 5, uid: 'u', goneAfterMs: 3 }], survivors: [], leaks: [],
    };
    expect(validateFiredRecord(ok).state).toBe('done');
    expect(() => validateFiredRecord({ ...ok, state: 'maybe' })).toThrow(/state/);
    expect(() => validateFiredRecord({ ...ok, killed: null })).toThrow(/killed/);
    expect(() => validateFiredRecord({ ...ok, firedAtMono: 'x' })).toThrow(/firedAtMono/);
  });
});
