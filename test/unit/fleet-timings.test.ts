/**
 * Heartbeats that scale with the fleet (src/domain/fleet-timings.ts): the rule on worked examples,
 * the refusal of unsafe results with the inequality and the scaled numbers, "never unsafe" over
 * many safe configurations, and the choice of the fleet size (never up under a pending deadline).
 */
import { describe, expect, it } from 'vitest';
import { checkTimings, DEFAULT_TIMINGS, type GcTimings } from '../../src/domain/gc-timing.js';
import { chooseFleetSize, describeScaledViolations, scaleTimings, type FleetSizeInputs } from '../../src/domain/fleet-timings.js';

const ON = { fleetHeartbeatRate: 2000, maxHeartbeatInterval: 10_000 };

describe('scaleTimings', () => {
  it('off (rate 0), an unknown fleet (0) or a fleet within the target: the configured timings, unchanged', () => {
    for (const [size, scaling] of [
      [10_000, { fleetHeartbeatRate: 0, maxHeartbeatInterval: 10_000 }],
      [0, ON],
      [2000, ON], // 2,000 hosts at 1 s = 2,000/s: on target
      [500, ON],
    ] as const) {
      const s = scaleTimings(DEFAULT_TIMINGS, size, scaling);
      expect(s.timings).toEqual(DEFAULT_TIMINGS);
      expect(s.stretch).toBe(0);
      expect(s.capped).toBe(false);
      expect(s.violations).toEqual([]);
    }
  });

  it('10,000 hosts at 2,000 keepalives/s: interval 5 s; detachAfter and watchdog +4 s; ttl 3 x 5 s = 15 s; the rest unchanged; safe', () => {
    const s = scaleTimings(DEFAULT_TIMINGS, 10_000, ON);
    expect(s.timings).toEqual({ ...DEFAULT_TIMINGS, heartbeatInterval: 5000, detachAfter: 7000, watchdogTimeout: 12_000, ttl: 15_000 });
    expect(s).toMatchObject({ fleetSize: 10_000, stretch: 4000, fleetRate: 2000, capped: false, violations: [] });
  });

  it('the interval is rounded up to 100 ms and ttl to whole seconds', () => {
    const s = scaleTimings(DEFAULT_TIMINGS, 2345, ON); // 1172.5 ms -> 1200 ms
    expect(s.timings.heartbeatInterval).toBe(1200);
    expect(s.timings.ttl).toBe(7000); // max(6000 + 200 -> 7000, 3600 -> 4000)
    expect(s.timings.ttl % 1000).toBe(0);
    expect(s.fleetRate).toBeLessThanOrEqual(2000);
  });

  it('capped by maxHeartbeatInterval: the rate stays above the target, and it says so', () => {
    const s = scaleTimings(DEFAULT_TIMINGS, 100_000, { fleetHeartbeatRate: 1000, maxHeartbeatInterval: 10_000 });
    expect(s.timings.heartbeatInterval).toBe(10_000);
    expect(s.capped).toBe(true);
    expect(s.fleetRate).toBe(10_000);
    expect(s.timings.ttl).toBe(30_000);
    expect(s.violations).toEqual([]);
    // A maximum below the configured interval never shortens it.
    expect(scaleTimings(DEFAULT_TIMINGS, 100_000, { fleetHeartbeatRate: 1000, maxHeartbeatInterval: 500 }).timings).toEqual(DEFAULT_TIMINGS);
  });

  it('unsafe timings are refused with the inequality and the SCALED numbers', () => {
    const base: GcTimings = { ...DEFAULT_TIMINGS, fenceWindow: 2000 };
    const s = scaleTimings(base, 10_000, ON);
    expect(s.violations.map((v) => v.rule)).toEqual(['safety']);
    expect(describeScaledViolations(s)).toBe(
      'unsafe GC timings after scaling heartbeats for a fleet of 10000 hosts (heartbeatInterval + 4000 ms): ' +
        'watchdogTimeout + stopGrace + killTimeout + clockDriftMargin <= ttl + fenceWindow is violated (12000 + 4000 + 2000 + 1000 = 19000 > 15000 + 2000 = 17000)',
    );
  });

  it('never: any safe configuration stays safe at any fleet size and rate; the interval never shortens; more hosts never shorten a timing', () => {
    let seed = 12345;
    const rnd = (n: number) => {
      seed = (seed * 1103515245 + 12345) % 2 ** 31;
      return seed % n;
    };
    let tried = 0;
    while (tried < 2000) {
      const t: GcTimings = {
        ttl: (1 + rnd(20)) * 1000,
        heartbeatInterval: 100 * (1 + rnd(40)),
        detachAfter: 100 * (1 + rnd(200)),
        watchdogTimeout: 100 * (1 + rnd(400)),
        stopGrace: 100 * rnd(100),
        killTimeout: 100 * rnd(50),
        fenceWindow: 100 * rnd(400),
        clockDriftMargin: 100 * rnd(30),
        electionTolerance: 2000 + 100 * rnd(50),
      };
      if (checkTimings(t).length > 0) continue;
      tried++;
      const scaling = { fleetHeartbeatRate: 1 + rnd(5000), maxHeartbeatInterval: 100 * rnd(600) };
      const a = scaleTimings(t, rnd(50_000), scaling);
      const b = scaleTimings(t, a.fleetSize + rnd(50_000), scaling);
      for (const s of [a, b]) {
        expect(s.violations, JSON.stringify({ t, scaling, size: s.fleetSize })).toEqual([]);
        expect(s.timings.heartbeatInterval).toBeGreaterThanOrEqual(t.heartbeatInterval);
        expect(s.timings.ttl % 1000).toBe(0);
        expect([s.timings.fenceWindow, s.timings.stopGrace, s.timings.killTimeout]).toEqual([t.fenceWindow, t.stopGrace, t.killTimeout]);
      }
      for (const k of Object.keys(t) as (keyof GcTimings)[]) expect(b.timings[k]).toBeGreaterThanOrEqual(a.timings[k]);
    }
  });
});

describe('chooseFleetSize', () => {
  const cases: [string, FleetSizeInputs, { size: number; source: string }][] = [
    ['the operator setting first', { configured: 300, learned: 9000, persisted: 100, pendingDeadline: false }, { size: 300, source: 'config' }],
    ["else the controller's count", { configured: 0, learned: 9000, persisted: 100, pendingDeadline: false }, { size: 9000, source: 'controller' }],
    ['else the last size used', { configured: 0, persisted: 100, pendingDeadline: false }, { size: 100, source: 'last-known' }],
    ['else none', { configured: 0, pendingDeadline: false }, { size: 0, source: 'none' }],
    ['a pending deadline: down is fine', { configured: 0, learned: 50, persisted: 100, pendingDeadline: true }, { size: 50, source: 'controller' }],
    ['a pending deadline: up is kept at the previous size', { configured: 0, learned: 9000, persisted: 100, pendingDeadline: true }, { size: 100, source: 'kept' }],
    ['a pending deadline: the operator setting cannot raise it either', { configured: 9000, persisted: 100, pendingDeadline: true }, { size: 100, source: 'kept' }],
    ['a pending deadline, previous size unknown: unscaled', { configured: 0, learned: 9000, pendingDeadline: true }, { size: 0, source: 'kept' }],
  ];
  for (const [name, input, want] of cases) it(name, () => expect(chooseFleetSize(input)).toEqual(want));

  it('under a pending deadline the chosen timings never exceed the previous run\'s, whatever is learned', () => {
    for (const persisted of [0, 10, 2500, 10_000]) {
      for (const learned of [0, 5, 2500, 9999, 50_000]) {
        const c = chooseFleetSize({ configured: 0, learned, persisted, pendingDeadline: true });
        const now = scaleTimings(DEFAULT_TIMINGS, c.size, ON).timings;
        const before = scaleTimings(DEFAULT_TIMINGS, persisted, ON).timings;
        expect(now.watchdogTimeout).toBeLessThanOrEqual(before.watchdogTimeout);
        expect(now.heartbeatInterval).toBeLessThanOrEqual(before.heartbeatInterval);
      }
    }
  });
});
