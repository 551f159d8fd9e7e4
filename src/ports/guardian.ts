import type { GuardianFiredRecord } from '../domain/guardian.js';

/**
 * The out-of-process fence as the agent sees it (implemented by `GuardianFeed`,
 * src/agent/gc/guardian-feed.ts, which feeds the `tether guardian` process through a file).
 *
 * Invariant: the guardian kills every VM of this host by the last fed deadline plus `killTimeout`,
 * whatever happens to the agent (dead, frozen, crash-looping). The agent feeds only deadlines derived
 * from ACKNOWLEDGED heartbeats (`guardianDeadline` in src/domain/host-lifecycle.ts), so a deadline
 * only moves later when the cluster confirmed the host, and a suspension (null) only while the host
 * applies a hold that the cluster acknowledged.
 */
export interface Guardian {
  /** Arms (or re-arms) the guardian with a monotonic-ms deadline; null suspends it (acknowledged hold). */
  feed(deadlineMono: number | null, info: { epoch: number; reason: string }): void;
  /** Tells the guardian to exit: only on a graceful agent stop with no VM process left. */
  shutdown(): void;
  /** The guardian's fire record, when it fired and the agent has not acknowledged it yet. */
  fired(): GuardianFiredRecord | undefined;
  /** The agent finished the cleanup that followed a guardian fire: forget the marker. */
  acknowledgeFired(): void;
  /** Starts the guardian process unless it runs; `started` says whether it had to. */
  ensureRunning(): Promise<{ started: boolean; pid: number }>;
}
