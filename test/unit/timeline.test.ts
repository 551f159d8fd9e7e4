import { describe, expect, it } from 'vitest';
import type { GcReport } from '../../src/agent/gc/gc-report.js';
import type { ClusterEvent } from '../../src/domain/cluster-event.js';
import { clusterEventsFrom, liveTimelineInput, type TimelineInput } from '../../src/domain/timeline.js';
import { hostEventsFromGcReport, hostTimelinesFromReports, parseHostReport } from '../../src/timeline/gc-report-events.js';
import { formatOffset, layoutTimeline } from '../../src/timeline/layout.js';
import { parseTimelineInput } from '../../src/timeline/parse-input.js';
import { escapeHtml, renderHtml } from '../../src/timeline/render-html.js';
import { renderText, safeText } from '../../src/timeline/render-text.js';
import { ORIGIN, sampleTimeline, violatingTimeline } from '../support/timeline-sample.js';

const at = (s: number) => ORIGIN + Math.round(s * 1000);

describe('timeline layout', () => {
  it('formats offsets to the millisecond, minutes past 60 s, signed', () => {
    expect(formatOffset(0)).toBe('+0.000s');
    expect(formatOffset(1234)).toBe('+1.234s');
    expect(formatOffset(-800)).toBe('-0.800s');
    expect(formatOffset(123456)).toBe('+2m03.456s');
    expect(formatOffset(NaN)).toBe('?');
  });

  it('lays out lanes, the fence window up to its deadline, the watchdog, the fault, and a positive margin', () => {
    const l = layoutTimeline(sampleTimeline());
    expect(l.lanes.map((x) => x.id)).toEqual(['cluster', 'host:h1', 'host:h2', 'faults']);
    expect(l.bands).toContainEqual(expect.objectContaining({ lane: 'host:h1', kind: 'fence-window', from: 11200, to: 21200 }));
    expect(l.bands).toContainEqual(expect.objectContaining({ lane: 'host:h1', kind: 'watchdog', from: 8000, to: 13000 }));
    expect(l.bands).toContainEqual(expect.objectContaining({ lane: 'faults', kind: 'fault', from: 5500, to: 30000 }));
    expect(l.margins).toEqual([{ hostId: 'h1', epoch: 3, detachedAt: 11200, deadline: 21200, lastGone: 18000, marginMs: 3200, violation: false, note: '' }]);
    expect(l.start).toBe(0);
    expect(l.end).toBe(31000);
    // Only the last heartbeat of a run is a full mark.
    const h1Acks = l.marks.filter((m) => m.lane === 'host:h1' && m.kind === 'heartbeat-acked');
    expect(h1Acks.map((m) => m.minor === true)).toEqual([true, true, true, true, true, false]);
  });

  it('a VM gone after the deadline is a negative margin and a violation', () => {
    const l = layoutTimeline(violatingTimeline());
    expect(l.margins[0]).toMatchObject({ hostId: 'h1', lastGone: 23000, marginMs: -1800, violation: true });
    expect(l.violations).toEqual([{ t: 23000, invariant: 'no-double-run', detail: 'batch-1 ran on h1 (u-batch-1) and h2 (u-batch-2) at once' }]);
  });

  it('the latest fence-deadline-extended of the same epoch is the deadline', () => {
    const s = sampleTimeline();
    const ext: ClusterEvent = { kind: 'fence-deadline-extended', at: at(12), detail: 'term change', hostId: 'h1', epoch: 3, from: at(21.2), to: at(27.2), why: 'raft-term-change' };
    const other: ClusterEvent = { kind: 'fence-deadline-extended', at: at(12.5), detail: 'other epoch', hostId: 'h1', epoch: 2, from: null, to: at(99) };
    const l = layoutTimeline({ ...s, cluster: [...s.cluster, ext, other] });
    expect(l.margins[0]).toMatchObject({ deadline: 27200, marginMs: 9200, violation: false });
  });

  it('a mass freeze pushes the deadline to its resumeAt; never lifted: no deadline, no violation', () => {
    const s = sampleTimeline();
    const late = violatingTimeline();
    const entered: ClusterEvent = { kind: 'freeze-entered', at: at(12), detail: 'freeze', detached: 2, total: 3, limit: 0.55 };
    const lifted: ClusterEvent = { kind: 'freeze-lifted', at: at(22), detail: 'lifted', detached: 1, total: 3, resumeAt: at(32) };
    const l = layoutTimeline({ ...late, cluster: [...s.cluster, entered, lifted], violations: [] });
    expect(l.margins[0]).toMatchObject({ deadline: 32000, lastGone: 23000, marginMs: 9000, violation: false, note: 'mass freeze: fencing resumed only at +32.000s' });
    const never = layoutTimeline({ ...late, cluster: [...s.cluster, entered], violations: [] });
    expect(never.margins[0]).toMatchObject({ violation: false, note: 'mass freeze: the cluster fenced nothing' });
    expect(never.margins[0]!.marginMs).toBeUndefined();
    // A freeze after the deadline changes nothing.
    const after = layoutTimeline({ ...late, cluster: [...s.cluster, { ...entered, at: at(22) }, { ...lifted, at: at(40), resumeAt: at(50) }], violations: [] });
    expect(after.margins[0]).toMatchObject({ deadline: 21200, marginMs: -1800, violation: true });
  });

  it("a host's second detachment counts only the stops after its first one ended", () => {
    const s = sampleTimeline();
    const again: ClusterEvent[] = [
      { kind: 'host-detached', at: at(40), detail: 'again', hostId: 'h1', epoch: 4, fenceDeadline: at(50), heldAtDetach: false },
      { kind: 'host-returned', at: at(45), detail: 'back', hostId: 'h1', epoch: 4 },
    ];
    const l = layoutTimeline({ ...s, cluster: [...s.cluster, ...again] });
    expect(l.margins).toHaveLength(2);
    expect(l.margins[0]).toMatchObject({ epoch: 3, marginMs: 3200 });
    expect(l.margins[1]).toMatchObject({ epoch: 4, violation: false, note: 'no VM stop recorded; the host returned (not fenced)' });
    expect(l.margins[1]!.lastGone).toBeUndefined();
  });

  it('a failed stop is a violation even without a negative margin; no host account leaves the margin unknown', () => {
    const s = sampleTimeline();
    const h1 = [...s.hosts[0]!.events, { kind: 'vm-stop-failed' as const, at: at(17.5), vm: 'db-2', uid: 'u-db-2', error: 'EPERM' }];
    const l = layoutTimeline({ ...s, hosts: [{ hostId: 'h1', events: h1 }] });
    expect(l.margins[0]).toMatchObject({ marginMs: 3200, violation: true });
    expect(l.margins[0]!.note).toContain('1 VM stop(s) FAILED');
    const none = layoutTimeline({ ...s, hosts: [] });
    expect(none.margins[0]).toMatchObject({ violation: false, note: 'no account from this host (pass its GC report)' });
    expect(none.margins[0]!.marginMs).toBeUndefined();
    expect(none.lanes.map((x) => x.id)).toContain('host:h1');
  });

  it('malformed entries (from etcd or a file) are ignored or shown as ?, never thrown', () => {
    const hostile = {
      ...sampleTimeline(),
      cluster: [
        { kind: 'host-detached', at: 'soon', hostId: 'h9' },
        { kind: 'host-detached', at: at(1), hostId: { x: 1 }, epoch: 'e', fenceDeadline: null },
        { kind: 'no-such-kind', at: at(2), detail: 7 },
        { kind: 'host-fenced', at: at(3), hostId: 'h1', lostVms: 'all' },
      ],
      hosts: [{ hostId: 'h1', events: [{ kind: 'vm-stop', at: at(4), vm: null, method: 'teleported' }, { kind: 'verified', at: at(5), leftovers: 'x' }, { kind: 'heartbeat-acked', at: Infinity }] }],
    } as unknown as TimelineInput;
    const l = layoutTimeline(hostile);
    expect(l.marks.map((m) => m.label)).toEqual([
      '? detached (epoch e), fence deadline ?',
      'no-such-kind: 7',
      'h1 FENCED by ? (epoch ?), 0 VM(s) lost',
      'vm ? stopped, teleported',
      'verified clean',
      expect.stringContaining('fault: partition'),
    ]);
    expect(() => renderText(hostile)).not.toThrow();
    expect(() => renderHtml(hostile)).not.toThrow();
  });
});

describe('renderText', () => {
  it('prints the expected aligned lines for the sample', () => {
    const text = renderText(sampleTimeline());
    const lines = text.split('\n');
    expect(lines[0]).toBe('tether timeline: sample: h1 partitioned (sim)');
    expect(lines[1]).toBe('t=0 is 2027-01-15T08:00:00.000Z; shown +0.000s .. +31.000s');
    expect(text).not.toContain('VIOLATION');
    const events = lines.slice(lines.indexOf('EVENTS') + 1, lines.indexOf('', lines.indexOf('EVENTS')));
    expect(events).toEqual([
      '         T  LANE     EVENT               WHAT',
      '   +0.000s  cluster  controller-elected  controller c1 elected',
      '   +5.000s  h1       heartbeat-acked     heartbeat acknowledged (last of 6)',
      '   +5.500s  faults   fault               fault: partition h1<->etcd until +30.000s',
      '   +8.000s  h1       detached            detached: no acknowledged heartbeat',
      '   +8.000s  h1       watchdog-armed      watchdog armed, deadline +13.000s',
      '  +11.200s  cluster  host-detached       h1 detached (epoch 3), fence deadline +21.200s',
      '  +13.000s  h1       watchdog-expired    watchdog expired: fencing itself',
      '  +13.000s  h1       fence-started       fence started (watchdog)',
      '  +14.100s  h1       vm-stop             vm web-1 stopped, graceful',
      '  +17.000s  h1       vm-stop             vm db-1 stopped, forced',
      '  +18.000s  h1       vm-stop             vm batch-1 stopped, forced-guardian',
      '  +18.500s  h1       cleaned             cleaned (9 resource(s) removed, 0 failure(s))',
      '  +18.700s  h1       verified            verified clean',
      '  +21.200s  cluster  host-fenced         h1 FENCED by controller (epoch 3), 3 VM(s) lost',
      "  +21.200s  h1       fence-deadline      the cluster's fence deadline (window opened +11.200s)",
      '  +21.500s  cluster  vm-rescheduled      vm web-1 rescheduled from h1 to h2',
      '  +21.600s  cluster  vm-rescheduled      vm db-1 rescheduled from h1 to h2',
      '  +21.700s  cluster  vm-rescheduled      vm batch-1 rescheduled from h1 to h2',
      '  +30.000s  h2       heartbeat-acked     heartbeat acknowledged (last of 7)',
      '  +31.000s  h1       rejoined            rejoined at epoch 4',
    ]);
    expect(lines).toContain('  h1 epoch 3: deadline +21.200s, last VM gone +18.000s, margin +3.200s  ok');
    expect(lines).toContain('  h1       |          h     w......---f--s-----s-sv----|                   R|');
    // eslint-disable-next-line no-control-regex
    expect(text).not.toMatch(/\u001b/);
  });

  it('a violation stands out: banner, VIOLATION on the margin, the violations section; red with colour', () => {
    const text = renderText(violatingTimeline());
    expect(text.split('\n')[2]).toBe('VIOLATION: 2 safety problem(s) below');
    expect(text).toContain('  h1 epoch 3: deadline +21.200s, last VM gone +23.000s, margin -1.800s  VIOLATION');
    expect(text).toContain('  +23.000s  no-double-run: batch-1 ran on h1 (u-batch-1) and h2 (u-batch-2) at once');
    const colour = renderText(violatingTimeline(), { color: true });
    expect(colour).toContain('\u001b[1;31m  VIOLATION\u001b[0m');
  });

  it('hostile names cannot put escape sequences or bidi overrides on the terminal', () => {
    const s = sampleTimeline();
    const evil = 'h1\u001b[2J\u001b]0;pwned\u0007\u202e\r\nFAKE';
    const hostile: TimelineInput = {
      ...s,
      title: 'x\u001b[31m',
      hosts: [{ hostId: evil, events: [{ kind: 'vm-stop', at: at(14), vm: 'vm\u009b31m', uid: 'u', method: 'graceful' }] }],
    };
    const text = renderText(hostile, { color: false });
    // eslint-disable-next-line no-control-regex
    expect(text).not.toMatch(/[\u0000-\u0009\u000b-\u001f\u007f-\u009f\u202e]/);
    expect(text).toContain('h1?[2J?]0;pwned????FAKE');
    expect(safeText('a'.repeat(500), 20)).toBe(`${'a'.repeat(17)}...`);
  });
});

describe('renderHtml', () => {
  it('is one self-contained document: no script, no external reference, an inline SVG', () => {
    const html = renderHtml(sampleTimeline());
    expect(html.startsWith('<!doctype html>')).toBe(true);
    expect(html).toContain('<svg xmlns="http://www.w3.org/2000/svg"');
    expect(html).not.toMatch(/<script|<link|<img|<iframe|@import|url\((?!#)|src=|href=/i);
    expect(html).toContain('No violation');
    expect(html).toContain('margin +3.200s');
  });

  it('escapes every hostile string from the input', () => {
    const s = sampleTimeline();
    const evil = '<script>alert(1)</script><img src=x onerror=alert(2)>"\'&';
    const hostile = {
      ...s,
      title: evil,
      cluster: [...s.cluster, { kind: 'vm-pending', at: at(22), detail: evil, vm: evil, reason: evil }, { kind: evil, at: at(23), detail: evil }],
      hosts: [{ hostId: evil, events: [{ kind: 'vm-stop', at: at(14), vm: evil, uid: evil, method: 'graceful' }] }, ...s.hosts],
      faults: [{ at: at(1), kind: evil, target: evil, detail: evil }],
      violations: [{ at: at(2), invariant: evil, detail: evil }],
    } as unknown as TimelineInput;
    const html = renderHtml(hostile);
    expect(html).not.toContain('<script');
    expect(html).not.toContain('<img');
    expect(html).not.toMatch(/<[^>]*\sonerror=/);
    expect(html).toContain('&lt;script&gt;alert(1)&lt;/script&gt;');
    expect(escapeHtml(`<a href="x">'&'</a>`)).toBe('&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;');
  });

  it('a violation is drawn in red and named', () => {
    const html = renderHtml(violatingTimeline());
    expect(html).toContain('<div class="banner">VIOLATION: 2 safety problem(s), marked in red below</div>');
    expect(html).toContain('VIOLATION margin -1.800s');
    expect(html).toContain('VIOLATION no-double-run');
    expect(renderHtml(sampleTimeline())).not.toContain('VIOLATION');
  });
});

describe('inputs from what exists today', () => {
  const report: GcReport = {
    reason: 'watchdog',
    startedAt: at(13),
    detectedAfterAckMs: 3000,
    fenceStartAfterAckMs: 8000,
    stops: [
      { uid: 'u1', vm: 'web-1', method: 'graceful', stoppedAfterMs: 1100, tookMs: 1100 },
      { uid: 'u2', vm: 'db-1', method: 'forced-kill', stoppedAfterMs: 4000, tookMs: 10 },
      { uid: 'u3', vm: 'batch-1', method: 'forced-guardian', stoppedAfterMs: 5000, tookMs: 0 },
      { uid: 'u4', vm: 'odd-1', method: 'failed', stoppedAfterMs: 5100, tookMs: 0, error: 'EPERM' },
    ],
    allStoppedAfterMs: 5000,
    removed: ['tap-a', 'overlay-b'],
    cleanupFailures: [],
    cleanAfterMs: 5500,
    audit: { clean: true, leaks: [], missing: [], at: at(18.7) },
    rejoinedEpoch: 4,
    rejoinedAfterMs: 18000,
  };

  it('a GC report becomes the host events it tells, in wall time', () => {
    expect(hostEventsFromGcReport(report)).toEqual([
      { kind: 'heartbeat-acked', at: at(5), detail: 'last acknowledged heartbeat' },
      { kind: 'detached', at: at(8) },
      { kind: 'watchdog-armed', at: at(8), deadline: at(13) },
      { kind: 'watchdog-expired', at: at(13) },
      { kind: 'fence-started', at: at(13), reason: 'watchdog' },
      { kind: 'vm-stop', at: at(14.1), vm: 'web-1', uid: 'u1', method: 'graceful' },
      { kind: 'vm-stop', at: at(17), vm: 'db-1', uid: 'u2', method: 'forced', detail: 'forced-kill' },
      { kind: 'vm-stop', at: at(18), vm: 'batch-1', uid: 'u3', method: 'forced-guardian' },
      { kind: 'vm-stop-failed', at: at(18.1), vm: 'odd-1', uid: 'u4', error: 'EPERM' },
      { kind: 'cleaned', at: at(18.5), detail: '2 resource(s) removed, 0 failure(s)' },
      { kind: 'verified', at: at(18.7), leftovers: [] },
      { kind: 'rejoined', at: at(31), epoch: 4 },
    ]);
  });

  it('host report files: a report takes the host id of the only status; bad files are refused by name', () => {
    const status = { hostId: 'h1', phase: 'attached', epoch: 4, held: false, heldAtDetach: false, localHold: false, timings: {} };
    const parts = [parseHostReport(report, 'r.json'), parseHostReport(status, 's.json')];
    const lanes = hostTimelinesFromReports(parts);
    expect(lanes.map((x) => x.hostId)).toEqual(['h1']);
    expect(lanes[0]!.events).toHaveLength(12);
    expect(parseHostReport({ status, report }, 'both.json').hostId).toBe('h1');
    expect(parseHostReport(null, 'none.json')).toEqual({ report: null });
    expect(() => parseHostReport({ nope: 1 }, 'x.json')).toThrow(/x\.json: not a GC report/);
    expect(hostTimelinesFromReports([parseHostReport(report, 'r.json')], 'h7')[0]!.hostId).toBe('h7');
  });

  it('listed cluster events (plain or stored) plus host lanes make a live input, cut at --since', () => {
    const s = sampleTimeline();
    const stored = s.cluster.map((event, i) => ({ key: `events/${i}`, event }));
    const events = clusterEventsFrom([...stored.slice().reverse(), 'junk', { event: { kind: 'x' } }]);
    expect(events).toEqual(s.cluster);
    const live = liveTimelineInput({ title: 'live', events: stored, hosts: hostTimelinesFromReports([{ hostId: 'h1', report }]), since: at(10), now: at(60) });
    expect(live.source).toBe('live');
    expect(live.origin).toBe(at(11.2));
    expect(live.cluster[0]!.kind).toBe('host-detached');
    const l = layoutTimeline(live);
    expect(l.margins[0]).toMatchObject({ hostId: 'h1', marginMs: 3200, violation: true });
    expect(l.margins[0]!.note).toContain('FAILED');
    expect(liveTimelineInput({ title: 'empty', events: [], now: 42 }).origin).toBe(42);
  });

  it('a timeline file is checked at the top level, and a chaos report holding one is accepted', () => {
    const s = sampleTimeline();
    expect(parseTimelineInput(JSON.parse(JSON.stringify(s)), 'f.json')).toEqual(s);
    expect(parseTimelineInput({ report: 'chaos', timeline: s }, 'c.json').title).toBe(s.title);
    expect(() => parseTimelineInput({ ...s, origin: 'now' }, 'f.json')).toThrow(/f\.json: "origin" must be a number/);
    expect(() => parseTimelineInput({ ...s, hosts: [{ id: 1 }] }, 'f.json')).toThrow(/hosts\[0\]/);
    expect(() => parseTimelineInput([], 'f.json')).toThrow(/not a timeline/);
  });
});
