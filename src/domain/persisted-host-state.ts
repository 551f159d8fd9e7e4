/**
 * What of the host lifecycle survives an agent restart, and how it is written, pure.
 *
 * Invariants:
 * - the phase, epoch, hold and fence reason always survive; `lastAck` and `fenceStartedAt` are
 *   monotonic times, trusted only on the same boot (same `bootId`): a restarted agent on the same
 *   boot keeps a pending watchdog deadline and resumes an interrupted fence or cleanup, while after a
 *   reboot it starts without a deadline (its VMs died with the boot);
 * - a persisted state that does not read back as one (corrupt, or written by something else) is an
 *   `INVENTORY_ERROR` naming what is wrong: the agent does not guess a lifecycle phase.
 */
import { TetherError } from './errors.js';
import type { FenceReason, HostPhase, HostState, initialHostState } from './host-lifecycle.js';

/** The persisted lifecycle state (one JSON text). */
export type PersistedHostState = Pick<HostState, 'phase' | 'epoch' | 'held' | 'lastAck' | 'fenceStartedAt' | 'fenceReason'> & { readonly bootId: string };

/** What {@link decodeHostState} gives to `initialHostState`. */
export type RestoredHostState = Parameters<typeof initialHostState>[0];

const PHASES: readonly HostPhase[] = ['starting', 'attached', 'suspect', 'detached', 'fencing', 'cleaning', 'clean', 'rejoining'];
const FENCE_REASONS: readonly FenceReason[] = ['watchdog', 'cluster-fenced', 'guardian'];

/** The text to persist for `s` on boot `bootId`. */
export function encodeHostState(s: HostState, bootId: string): string {
  const persisted: PersistedHostState = {
    bootId,
    phase: s.phase,
    epoch: s.epoch,
    held: s.held,
    ...(s.lastAck === undefined ? {} : { lastAck: s.lastAck }),
    ...(s.fenceStartedAt === undefined ? {} : { fenceStartedAt: s.fenceStartedAt }),
    ...(s.fenceReason === undefined ? {} : { fenceReason: s.fenceReason }),
  };
  return JSON.stringify(persisted);
}

function invalid(what: string, cause?: unknown): TetherError {
  return new TetherError('INVENTORY_ERROR', `the persisted GC state (inventory meta gc.state) ${what}: remove it only once this host's VMs are known to be stopped`, cause === undefined ? {} : { cause });
}

const isTime = (v: unknown) => v === undefined || (typeof v === 'number' && Number.isFinite(v));

/** Reads a persisted state back (undefined: none) for an agent on boot `bootId`; throws INVENTORY_ERROR when unreadable. */
export function decodeHostState(raw: string | undefined, bootId: string): RestoredHostState {
  if (!raw) return undefined;
  let v: Record<string, unknown>;
  try {
    v = JSON.parse(raw) as Record<string, unknown>;
  } catch (err) {
    throw invalid('is not JSON', err);
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw invalid('is not an object');
  if (!PHASES.includes(v.phase as HostPhase)) throw invalid(`has an unknown phase ${JSON.stringify(v.phase)}`);
  if (!(typeof v.epoch === 'number' && Number.isInteger(v.epoch) && v.epoch >= 0)) throw invalid(`has a bad epoch ${JSON.stringify(v.epoch)}`);
  if (typeof v.held !== 'boolean') throw invalid(`has a bad hold ${JSON.stringify(v.held)}`);
  if (!isTime(v.lastAck) || !isTime(v.fenceStartedAt)) throw invalid('has a bad monotonic time');
  if (v.fenceReason !== undefined && !FENCE_REASONS.includes(v.fenceReason as FenceReason)) throw invalid(`has an unknown fence reason ${JSON.stringify(v.fenceReason)}`);
  const sameBoot = v.bootId === bootId;
  return {
    phase: v.phase as HostPhase,
    epoch: v.epoch,
    held: v.held,
    ...(v.fenceReason ? { fenceReason: v.fenceReason as FenceReason } : {}),
    ...(sameBoot && v.lastAck !== undefined ? { lastAck: v.lastAck as number } : {}),
    ...(sameBoot && v.fenceStartedAt !== undefined ? { fenceStartedAt: v.fenceStartedAt as number } : {}),
  };
}
