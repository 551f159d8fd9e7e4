import { TetherError, messageOf } from '../domain/errors.js';
import { chooseFleetSize, describeScaledViolations, scaleTimings, type HeartbeatScaling, type ScaledTimings } from '../domain/fleet-timings.js';
import type { GcTimings } from '../domain/gc-timing.js';
import type { Inventory } from '../ports/inventory.js';
import type { Logger } from '../ports/logger.js';
import { loadHostState } from './gc/persisted-state.js';

/** Inventory meta key of the fleet size this agent last scaled its timings for. */
export const META_FLEET_SIZE = 'gc.fleetSize';

/** What {@link resolveFleetTimings} needs. */
export interface FleetTimingsDeps {
  readonly scaling: HeartbeatScaling;
  /** The operator's `fleetSize` (0: learn it from the controller). */
  readonly configuredFleetSize: number;
  readonly inventory: Inventory;
  readonly bootId: string;
  readonly logger: Logger;
  /**
   * Hosts the active controller counts (`controller/status`, `freeze.total`: attached, ready and
   * detached hosts); undefined when no controller publishes a status. One single-key read, bounded.
   */
  readFleetSize(): Promise<number | undefined>;
}

/**
 * The GC timings this agent runs with for its whole life, decided once at start, before the first
 * registration publishes them in the host record (from which the controller takes this host's fence
 * window): the configured `base`, scaled for the fleet by {@link scaleTimings} when
 * `fleetHeartbeatRate` is set, the fleet size chosen by {@link chooseFleetSize} (never larger than
 * the previous run's while a watchdog deadline of this boot is pending) and persisted for the next
 * start. Scaling off: `base` untouched, nothing read or written.
 *
 * @throws TetherError `UNSAFE_CONFIG` naming each violated inequality with the scaled numbers.
 */
export async function resolveFleetTimings(base: GcTimings, d: FleetTimingsDeps): Promise<ScaledTimings> {
  if (!(d.scaling.fleetHeartbeatRate > 0)) return scaleTimings(base, 0, d.scaling);
  let pendingDeadline: boolean;
  try {
    pendingDeadline = loadHostState(d.inventory, d.bootId)?.lastAck !== undefined;
  } catch {
    pendingDeadline = true; // unreadable state: assume the strictest case (the GC reports it)
  }
  const raw = d.inventory.getMeta(META_FLEET_SIZE);
  const persisted = raw !== undefined && /^\d+$/.test(raw) ? Number(raw) : undefined;
  let learned: number | undefined;
  if (d.configuredFleetSize <= 0) {
    try {
      learned = await d.readFleetSize();
    } catch (err) {
      d.logger.warn({ err: messageOf(err) }, "could not read the fleet size from the controller's status at start; scaling heartbeats for the last known size");
    }
  }
  const choice = chooseFleetSize({ configured: d.configuredFleetSize, ...(learned !== undefined ? { learned } : {}), ...(persisted !== undefined ? { persisted } : {}), pendingDeadline });
  const scaled = scaleTimings(base, choice.size, d.scaling);
  if (scaled.violations.length > 0) {
    throw new TetherError('UNSAFE_CONFIG', describeScaledViolations(scaled), { details: { violations: scaled.violations, fleetSize: scaled.fleetSize } });
  }
  d.inventory.setMeta(META_FLEET_SIZE, String(choice.size));
  const t = scaled.timings;
  const fields = {
    fleetSize: choice.size,
    source: choice.source,
    fleetHeartbeatRate: d.scaling.fleetHeartbeatRate,
    fleetRate: Math.round(scaled.fleetRate),
    heartbeatInterval: t.heartbeatInterval,
    ttl: t.ttl,
    detachAfter: t.detachAfter,
    watchdogTimeout: t.watchdogTimeout,
  };
  d.logger.info(fields, `heartbeat timings for a fleet of ${choice.size} hosts (${choice.source}): every ${t.heartbeatInterval} ms, ttl ${t.ttl} ms (+${scaled.stretch} ms on heartbeatInterval, detachAfter, watchdogTimeout)`);
  if (scaled.capped) d.logger.warn(fields, `maxHeartbeatInterval caps the heartbeat interval: the fleet sends about ${Math.round(scaled.fleetRate)} keepalives/s, above the target of ${d.scaling.fleetHeartbeatRate}`);
  if (choice.source === 'kept') {
    d.logger.warn({ ...fields, learned, configured: d.configuredFleetSize }, 'a watchdog deadline of this boot is pending under the timings the cluster holds for this host: the fleet size is not raised before the next start without one');
  }
  return scaled;
}
