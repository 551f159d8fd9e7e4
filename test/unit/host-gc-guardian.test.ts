import { describe, expect, it } from 'vitest';
import { HostGc } from '../../src/agent/gc/host-gc.js';
import { DEFAULT_TIMINGS as T } from '../../src/domain/gc-timing.js';
import type { GuardianFiredRecord } from '../../src/domain/guardian.js';
import type { Guardian } from '../../src/ports/guardian.js';
import type { FakeClock } from '../support/fake-clock.js';
import { fakeHost } from '../support/host-harness.js';
import { ModelClusterStore } from '../support/model-cluster.js';

/**
 * Like GuardianFeed: concurrent `ensureRunning` calls share one start, and every caller sees
 * `started: true` for it; a start takes `startMs` on the clock.
 */
class SharedStartGuardian implements Guardian {
  running = false;
  private inflight: Promise<{ started: boolean; pid: number }> | undefined;
  constructor(
    private readonly clock: FakeClock,
    private readonly startMs: number,
  ) {}
  feed(): void {}
  shutdown(): void {}
  fired(): GuardianFiredRecord | undefined {
    return undefined;
  }
  acknowledgeFired(): void {}
  ensureRunning(): Promise<{ started: boolean; pid: number }> {
    this.inflight ??= new Promise<{ started: boolean; pid: number }>((resolve) => {
      if (this.running) return resolve({ started: false, pid: 42 });
      this.clock.setTimer(this.startMs, () => {
        this.running = true;
        resolve({ started: true, pid: 42 });
      });
    }).finally(() => {
      this.inflight = undefined;
    });
    return this.inflight;
  }
}

describe('HostGc guardian supervision', () => {
  it('a guardian start seen by two overlapping checks is one start, not a restart; a real restart is one guardian-restarted event', async () => {
    const h = fakeHost();
    const guardian = new SharedStartGuardian(h.clock, 2500);
    const gc = new HostGc(h.ctx, new ModelClusterStore(h.clock), { timings: T, bootId: 'b', capacity: { vcpu: 1, memoryMb: 1 }, agentVersion: 't', agentId: 'agent-1', holder: 't', guardian });
    const restarts = () => h.inventory.listEvents(500).filter((e) => e.kind === 'guardian-restarted').length;
    gc.start();
    await h.clock.advance(10);
    expect(gc.phase).toBe('attached');
    expect(gc.admission()).toMatch(/guardian/);
    await h.clock.advance(5 * T.heartbeatInterval);
    expect(gc.status().guardianRunning).toBe(true);
    expect(gc.admission()).toBeUndefined();
    expect(restarts()).toBe(0);
    guardian.running = false;
    await h.clock.advance(5 * T.heartbeatInterval);
    expect(restarts()).toBe(1);
    expect(gc.status().guardianRunning).toBe(true);
    gc.stop();
  });
});
