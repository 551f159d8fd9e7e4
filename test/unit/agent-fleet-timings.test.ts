/**
 * The agent's start-time choice of fleet-scaled timings (src/agent/fleet-timings.ts) and the config's
 * refusal of unsafe timings (src/cli/agent-config.ts): off reads nothing; the controller's count is
 * used and persisted; a read failure falls back to the last known size; a pending watchdog deadline
 * of this boot never lets the timings grow; unsafe results refuse to start naming the inequality.
 */
import { describe, expect, it } from 'vitest';
import { META_FLEET_SIZE, resolveFleetTimings, type FleetTimingsDeps } from '../../src/agent/fleet-timings.js';
import { saveHostState } from '../../src/agent/gc/persisted-state.js';
import { AGENT_SCHEMA, toAgentConfig } from '../../src/cli/agent-config.js';
import { resolveConfig } from '../../src/cli/config-schema.js';
import { TetherError } from '../../src/domain/errors.js';
import { DEFAULT_TIMINGS } from '../../src/domain/gc-timing.js';
import { initialHostState } from '../../src/domain/host-lifecycle.js';
import type { Inventory } from '../../src/ports/inventory.js';
import { silentLogger } from '../support/fake-ports.js';

function metaInventory(): Inventory & { meta: Map<string, string> } {
  const meta = new Map<string, string>();
  return { meta, getMeta: (k: string) => meta.get(k), setMeta: (k: string, v: string) => void meta.set(k, v) } as unknown as Inventory & { meta: Map<string, string> };
}

function deps(over: Partial<FleetTimingsDeps> & { reads?: number[] } = {}): FleetTimingsDeps & { log: string[]; readCount: () => number } {
  const log: string[] = [];
  let reads = 0;
  return {
    scaling: { fleetHeartbeatRate: 2000, maxHeartbeatInterval: 10_000 },
    configuredFleetSize: 0,
    inventory: metaInventory(),
    bootId: 'boot-1',
    logger: silentLogger(log),
    readFleetSize: async () => {
      reads++;
      return 10_000;
    },
    ...over,
    log,
    readCount: () => reads,
  };
}

describe('resolveFleetTimings (agent start)', () => {
  it('off: the configured timings, nothing read or persisted', async () => {
    const d = deps({ scaling: { fleetHeartbeatRate: 0, maxHeartbeatInterval: 10_000 } });
    const s = await resolveFleetTimings(DEFAULT_TIMINGS, d);
    expect(s.timings).toBe(DEFAULT_TIMINGS);
    expect(d.readCount()).toBe(0);
    expect((d.inventory as unknown as { meta: Map<string, string> }).meta.size).toBe(0);
  });

  it("on: the controller's count (10,000 hosts at 2,000/s) gives a 5 s heartbeat and 15 s ttl, persisted and logged with the numbers", async () => {
    const d = deps();
    const s = await resolveFleetTimings(DEFAULT_TIMINGS, d);
    expect(s.timings).toMatchObject({ heartbeatInterval: 5000, ttl: 15_000, detachAfter: 7000, watchdogTimeout: 12_000 });
    expect(d.inventory.getMeta(META_FLEET_SIZE)).toBe('10000');
    expect(d.log.some((l) => l.startsWith('info heartbeat timings for a fleet of 10000 hosts (controller): every 5000 ms, ttl 15000 ms'))).toBe(true);
  });

  it('the controller unreachable at start: the last known size, with a warning', async () => {
    const d = deps({
      readFleetSize: async () => {
        throw new TetherError('TIMEOUT', 'get controller/status: no answer', { retryable: true });
      },
    });
    d.inventory.setMeta(META_FLEET_SIZE, '4000');
    const s = await resolveFleetTimings(DEFAULT_TIMINGS, d);
    expect(s.fleetSize).toBe(4000);
    expect(s.timings.heartbeatInterval).toBe(2000);
    expect(d.log.some((l) => l.startsWith('warn could not read the fleet size'))).toBe(true);
  });

  it('a watchdog deadline of this boot pending: a larger fleet does not lengthen the timings before the next clean start', async () => {
    const d = deps();
    d.inventory.setMeta(META_FLEET_SIZE, '100');
    saveHostState(d.inventory, { ...initialHostState(), phase: 'attached', epoch: 3, lastAck: 12_345 }, 'boot-1');
    const s = await resolveFleetTimings(DEFAULT_TIMINGS, d);
    expect(s.fleetSize).toBe(100);
    expect(s.timings).toEqual(DEFAULT_TIMINGS);
    expect(d.log.some((l) => l.startsWith('warn a watchdog deadline of this boot is pending'))).toBe(true);
    // After a reboot the old deadline is gone (its VMs died with the boot): the new size applies.
    const after = await resolveFleetTimings(DEFAULT_TIMINGS, { ...d, bootId: 'boot-2' });
    expect(after.fleetSize).toBe(10_000);
  });

  it('unsafe scaled timings refuse to start: UNSAFE_CONFIG naming the inequality with the scaled numbers', async () => {
    const err = await resolveFleetTimings({ ...DEFAULT_TIMINGS, fenceWindow: 2000 }, deps()).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(TetherError);
    expect((err as TetherError).code).toBe('UNSAFE_CONFIG');
    expect((err as TetherError).message).toContain('(12000 + 4000 + 2000 + 1000 = 19000 > 15000 + 2000 = 17000)');
  });
});

describe('agent config: fleetHeartbeatRate, maxHeartbeatInterval, fleetSize', () => {
  it('parse: off by default; flags and env set them', () => {
    const off = toAgentConfig(resolveConfig(AGENT_SCHEMA, { hostId: 'h1' }, {}, undefined));
    expect(off.heartbeatScaling).toEqual({ fleetHeartbeatRate: 0, maxHeartbeatInterval: 10_000 });
    expect(off.fleetSize).toBe(0);
    const on = toAgentConfig(resolveConfig(AGENT_SCHEMA, { hostId: 'h1', fleetHeartbeatRate: '2000', maxHeartbeatInterval: '5s' }, { TETHER_FLEET_SIZE: '300' }, undefined));
    expect(on.heartbeatScaling).toEqual({ fleetHeartbeatRate: 2000, maxHeartbeatInterval: 5000 });
    expect(on.fleetSize).toBe(300);
    expect(on.timings).toEqual(DEFAULT_TIMINGS); // scaled at start, not here
  });

  it('unsafe configured timings are still refused with the inequality (scaling on or off)', () => {
    for (const rate of ['0', '2000']) {
      expect(() => toAgentConfig(resolveConfig(AGENT_SCHEMA, { hostId: 'h1', fenceWindow: '2s', fleetHeartbeatRate: rate }, {}, undefined))).toThrow(
        /watchdogTimeout \+ stopGrace \+ killTimeout \+ clockDriftMargin <= ttl \+ fenceWindow is violated \(8000 \+ 4000 \+ 2000 \+ 1000 = 15000 > 6000 \+ 2000 = 8000\)/,
      );
    }
  });
});
