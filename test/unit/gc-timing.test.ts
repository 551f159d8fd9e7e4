import { describe, expect, it } from 'vitest';
import { checkTimings, DEFAULT_TIMINGS, describeViolations, selfFenceBound } from '../../src/domain/gc-timing.js';

describe('gc timings', () => {
  it('defaults are safe, ride out a 2 s election and stop every VM within 15 s of the last ack', () => {
    expect(checkTimings(DEFAULT_TIMINGS)).toEqual([]);
    expect(DEFAULT_TIMINGS.watchdogTimeout).toBeGreaterThan(2000 * 2);
    expect(selfFenceBound(DEFAULT_TIMINGS)).toBeLessThanOrEqual(15_000);
  });

  it('refuses a fence window shorter than the self-fence, naming the inequality and the numbers', () => {
    const v = checkTimings({ ...DEFAULT_TIMINGS, fenceWindow: 5000 });
    expect(v.map((x) => x.rule)).toEqual(['safety']);
    expect(describeViolations(v)).toBe(
      'watchdogTimeout + stopGrace + killTimeout + clockDriftMargin <= ttl + fenceWindow is violated (8000 + 4000 + 2000 + 1000 = 15000 > 6000 + 5000 = 11000)',
    );
  });

  it('accepts the most aggressive settings documented in docs/gc.md, and nothing tighter', () => {
    const aggressive = { ...DEFAULT_TIMINGS, ttl: 3000, heartbeatInterval: 1000, detachAfter: 2000, watchdogTimeout: 5000, stopGrace: 1000, killTimeout: 1000, clockDriftMargin: 1000, fenceWindow: 5000 };
    expect(checkTimings(aggressive)).toEqual([]);
    expect(checkTimings({ ...aggressive, fenceWindow: 4999 }).map((x) => x.rule)).toEqual(['safety']);
    expect(checkTimings({ ...aggressive, watchdogTimeout: 4999 }).map((x) => x.rule)).toEqual(['election-safe']);
  });

  it.each([
    [{ watchdogTimeout: 3000, detachAfter: 2000 }, 'election-safe'],
    [{ ttl: 6500 }, 'ttl-seconds'],
    [{ heartbeatInterval: 2500 }, 'heartbeat'],
    [{ detachAfter: 7000, watchdogTimeout: 8000 }, 'detach-within-ttl'],
    [{ detachAfter: 900 }, 'detach-after-heartbeat'],
    [{ electionTolerance: 1000 }, 'election-tolerance'],
    [{ stopGrace: -1 }, 'non-negative'],
  ])('refuses %j (%s)', (patch, rule) => {
    expect(checkTimings({ ...DEFAULT_TIMINGS, ...patch }).map((x) => x.rule)).toContain(rule);
  });
});
