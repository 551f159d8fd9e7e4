import type { ClusterEvent } from '../../src/domain/cluster-event.js';
import type { HostTimelineEvent, TimelineInput } from '../../src/domain/timeline.js';

/** t=0 of the samples (2027-01-15T08:00:00Z). */
export const ORIGIN = Date.UTC(2027, 0, 15, 8, 0, 0);
const at = (s: number) => ORIGIN + Math.round(s * 1000);

/**
 * A partition of host h1 with the default timings (ttl 6 s, detach after 3 s, watchdog 8 s, stop
 * grace 4 s, fence window 10 s): three VMs stopped (graceful, forced, by the guardian), fenced,
 * placed again on h2, h1 rejoins at epoch 4. Margin: 21.2 - 18.0 = +3.2 s.
 */
export function sampleTimeline(): TimelineInput {
  const acks: HostTimelineEvent[] = [0, 1, 2, 3, 4, 5].map((s) => ({ kind: 'heartbeat-acked', at: at(s) }));
  const h1: HostTimelineEvent[] = [
    ...acks,
    { kind: 'detached', at: at(8) },
    { kind: 'watchdog-armed', at: at(8), deadline: at(13) },
    { kind: 'watchdog-expired', at: at(13) },
    { kind: 'fence-started', at: at(13), reason: 'watchdog' },
    { kind: 'vm-stop', at: at(14.1), vm: 'web-1', uid: 'u-web-1', method: 'graceful' },
    { kind: 'vm-stop', at: at(17), vm: 'db-1', uid: 'u-db-1', method: 'forced' },
    { kind: 'vm-stop', at: at(18), vm: 'batch-1', uid: 'u-batch-1', method: 'forced-guardian' },
    { kind: 'cleaned', at: at(18.5), detail: '9 resource(s) removed, 0 failure(s)' },
    { kind: 'verified', at: at(18.7), leftovers: [] },
    { kind: 'rejoined', at: at(31), epoch: 4 },
  ];
  const cluster: ClusterEvent[] = [
    { kind: 'controller-elected', at: at(0), detail: 'controller c1 leads', controllerId: 'c1' },
    { kind: 'host-detached', at: at(11.2), detail: 'h1 lease expired', hostId: 'h1', epoch: 3, fenceDeadline: at(21.2), heldAtDetach: false },
    { kind: 'host-fenced', at: at(21.2), detail: 'h1 fenced', hostId: 'h1', epoch: 3, by: 'controller', lostVms: ['web-1', 'db-1', 'batch-1'] },
    { kind: 'vm-rescheduled', at: at(21.5), detail: 'web-1 to h2', vm: 'web-1', fromHost: 'h1', toHost: 'h2', uid: 'u-web-2' },
    { kind: 'vm-rescheduled', at: at(21.6), detail: 'db-1 to h2', vm: 'db-1', fromHost: 'h1', toHost: 'h2', uid: 'u-db-2' },
    { kind: 'vm-rescheduled', at: at(21.7), detail: 'batch-1 to h2', vm: 'batch-1', fromHost: 'h1', toHost: 'h2', uid: 'u-batch-2' },
  ];
  return {
    source: 'sim',
    title: 'sample: h1 partitioned',
    origin: ORIGIN,
    cluster,
    hosts: [
      { hostId: 'h1', events: h1 },
      { hostId: 'h2', events: [0, 5, 10, 15, 20, 25, 30].map((s) => ({ kind: 'heartbeat-acked' as const, at: at(s) })) },
    ],
    faults: [{ at: at(5.5), until: at(30), kind: 'partition', target: 'h1<->etcd' }],
    violations: [],
  };
}

/** The sample with h1's guardian killing batch-1 only at 23.0 s: after the deadline (margin -1.8 s), and the simulator's violation. */
export function violatingTimeline(): TimelineInput {
  const s = sampleTimeline();
  const h1 = s.hosts[0]!.events.map((e) => (e.kind === 'vm-stop' && e.vm === 'batch-1' ? { ...e, at: at(23) } : e));
  return {
    ...s,
    title: 'sample: h1 partitioned, guardian late',
    hosts: [{ hostId: 'h1', events: h1 }, s.hosts[1]!],
    violations: [{ at: at(23), invariant: 'no-double-run', detail: 'batch-1 ran on h1 (u-batch-1) and h2 (u-batch-2) at once' }],
  };
}
