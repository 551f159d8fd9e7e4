import type { StopMethod } from '../../domain/vm.js';
import type { FenceReason } from '../../domain/host-lifecycle.js';

/** How one VM was stopped by the fencer. */
export interface VmStopReport {
  readonly uid: string;
  readonly vm: string;
  /** `forced-guardian`: the guardian's SIGKILL ended it (the agent was dead, frozen or too late). */
  readonly method: StopMethod | 'forced-guardian' | 'failed';
  /** Monotonic ms from fence start to this VM being gone. */
  readonly stoppedAfterMs: number;
  readonly tookMs: number;
  readonly error?: string;
}

/** What the audit found: owned but not expected (leaks), expected but missing. */
export interface AuditResult {
  readonly clean: boolean;
  readonly leaks: readonly string[];
  readonly missing: readonly string[];
  /** Wall-clock ms. */
  readonly at: number;
}

/** The last GC run, kept in the inventory and shown by `tether gc report`. */
export interface GcReport {
  readonly reason: FenceReason;
  /** Wall-clock ms of fence start. */
  readonly startedAt: number;
  /** Monotonic ms from lastAck to detection (no acknowledged heartbeat for detachAfter). */
  readonly detectedAfterAckMs?: number;
  /** Monotonic ms from lastAck to fence start. */
  readonly fenceStartAfterAckMs?: number;
  readonly stops: readonly VmStopReport[];
  /** Monotonic ms from fence start until every VM was gone. */
  readonly allStoppedAfterMs?: number;
  readonly removed: readonly string[];
  readonly cleanupFailures: readonly string[];
  readonly cleanAfterMs?: number;
  readonly audit?: AuditResult;
  /** Epoch the host rejoined with, once it did. */
  readonly rejoinedEpoch?: number;
  /** Monotonic ms from fence start to the rejoin. */
  readonly rejoinedAfterMs?: number;
}
