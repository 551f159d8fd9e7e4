/**
 * The controller's pure core: its inputs, effects, configuration and state (issue 8, item 1).
 *
 * `step(state, input, now) -> { state, effects }` ({@link ./step.ts}) decides; a runner
 * (`src/controller/controller.ts`) executes the effects against the store and the clock and feeds their
 * outcomes back as inputs. Nothing here awaits, reads a clock or draws a random number: given the same
 * inputs and times the core gives the same effects.
 *
 * Request ids: every effect whose outcome matters carries `req` (a counter in the state); its outcome
 * comes back as a `reply` or `failed` input with the same `req`. An outcome whose `req` the core no
 * longer waits for (it stepped down meanwhile) is ignored. Timers carry `id` the same way: a firing
 * whose id is not the one last set under its key is ignored, so a cleared or re-armed timer never acts.
 */
import type { ClusterChange, Revision, TxnLimits, VmEntry } from '../cluster-change.js';
import type { ClusterEventBody } from '../cluster-event.js';
import type { TermChange } from '../fence-window.js';
import type { HostRecord } from '../host-record.js';
import type { FreezeContract } from '../freeze-contract.js';
import type { DetachedCount, FreezeState } from '../mass-freeze.js';
import type { CapacityIndex } from '../placement-index.js';
import type { AliveInfo, ControllerFailure, ControllerStatus, HostEntry, HostsSnapshot, HostWatchEvent, VmWatchBatch } from '../../ports/controller-store.js';

/** Both time bases at one instant: wall ms (records, display) and monotonic ms (every deadline). */
export interface Now {
  readonly wall: number;
  readonly mono: number;
}

/** The core's configuration (the runner's options with defaults applied). Durations in ms. */
export interface CoreConfig {
  readonly controllerId: string;
  readonly freezeShare: number;
  readonly hostRecordTtl: number;
  readonly retiredRemoveAfter: number;
  readonly fenceWindowOverride?: number;
  /** Whole seconds, in ms. */
  readonly leaderTtl: number;
  readonly campaignInterval: number;
  readonly callDeadline: number;
  readonly eventRetention: number;
  readonly gcInterval: number;
  readonly retryDelay: number;
  readonly maxRetryDelay: number;
  /** The store's txn limits (every change the core builds fits them). */
  readonly txnLimits: TxnLimits;
  /** Fences (pre-fence read + fence txn) in flight at once; the others wait their turn. */
  readonly maxFencesInFlight: number;
  /** Lost-marking runs (one txn in flight each) at once; the others wait their turn. */
  readonly maxMarkingsInFlight: number;
  /** Hosts fenced per second at most (token bucket of {@link evictionBurst}); `Infinity`: no limit. */
  readonly evictionRate: number;
  /** The slower rate while more than {@link slowEvictionShare} of a pool of at least {@link slowEvictionMinHosts} hosts is detached. */
  readonly slowEvictionRate: number;
  readonly slowEvictionShare: number;
  readonly slowEvictionMinHosts: number;
  /** Fences allowed at once by the rate limit (bucket size). */
  readonly evictionBurst: number;
  /** Work items (hosts, VMs) one step handles before yielding to other inputs through a zero-delay timer. */
  readonly chunkSize: number;
  /** The freeze's resume delay when longer than the pool's longest fence window (issue 11; ms). */
  readonly resumeDelay?: number;
  /** A change of the published contract's `poolSize` alone is written at most this often (ms). */
  readonly contractPoolInterval: number;
}

/**
 * `controller/freeze-contract` as the controller writes it: the contract hosts read
 * ({@link FreezeContract}) and `floor`, the tightest share and resume delay of every version ever
 * published (what the controller applies for a host whose acknowledged version it cannot map).
 */
export interface StoredContract extends FreezeContract {
  readonly floor: { readonly share: number; readonly resumeDelay: number };
}

/** A failed store call as the core sees it: the error's stable code, message and whether retrying may help. */
export interface CallError {
  readonly code: string;
  readonly message: string;
  readonly retryable: boolean;
}

/** The outcome of a store call, by the call's kind. */
export type Reply =
  | { readonly op: 'campaign'; readonly won: boolean; readonly ttlMs?: number }
  | { readonly op: 'keep-leadership'; readonly answer: 'alive' | 'lost' }
  | { readonly op: 'server-status'; readonly version: string; readonly raftTerm: number }
  /** `contract`: the raw value of `controller/freeze-contract` read with the listing (absent: none published). */
  | { readonly op: 'list-hosts'; readonly snapshot: HostsSnapshot; readonly contract?: unknown }
  | { readonly op: 'watch-hosts' }
  | { readonly op: 'list-vms'; readonly vms: readonly VmEntry[]; readonly revision: Revision }
  | { readonly op: 'watch-vms' }
  /** `revision`: the read's header revision (the store's revision when it was served). */
  | { readonly op: 'get-host'; readonly host: HostEntry; readonly revision: Revision }
  | { readonly op: 'commit'; readonly result: { readonly ok: true; readonly revision: Revision } | { readonly ok: false; readonly reason: 'conflict' | 'not-leader' } }
  | { readonly op: 'prune-events'; readonly deleted: number }
  | { readonly op: 'put-status' }
  | { readonly op: 'new-uids'; readonly uids: readonly string[] }
  | { readonly op: 'put-contract' }
  /** The barrier's commit revision (its watch event follows on the host watch). */
  | { readonly op: 'sync-hosts'; readonly revision: Revision };

/**
 * What the core reacts to. `raftTerm` on any input is the highest raft term the store had seen when
 * the input was made (a response header's term; used where the old code polled it).
 */
export type Input = (
  | { readonly kind: 'start' }
  | { readonly kind: 'timer'; readonly key: string; readonly id: number }
  | { readonly kind: 'reply'; readonly req: number; readonly reply: Reply }
  | { readonly kind: 'failed'; readonly req: number; readonly error: CallError }
  /** A change under `hosts/` from watch `watch`, observed at `at`. */
  | { readonly kind: 'host-event'; readonly watch: number; readonly event: HostWatchEvent; readonly at: Now }
  /** The changes under `vms/` of one watch response of watch `watch` (see {@link VmWatchBatch}). */
  | { readonly kind: 'vm-batch'; readonly watch: number; readonly batch: VmWatchBatch }
  | { readonly kind: 'watch-error'; readonly watch: number; readonly message: string }
  /** The host watch `watch` delivered the controller's barrier written at `revision`: every change under `hosts/` up to it was delivered before. */
  | { readonly kind: 'hosts-progress'; readonly watch: number; readonly revision: Revision }
  /** A response header showed a raft term never seen before, at `at`. */
  | { readonly kind: 'raft-term'; readonly term: number; readonly at: Now }
) & { readonly raftTerm?: number };

/** Store calls the runner makes; each answers with a `reply` or `failed` input carrying `req`. */
export type Call =
  | { readonly op: 'campaign'; readonly candidateId: string; readonly ttlMs: number }
  | { readonly op: 'keep-leadership' }
  | { readonly op: 'server-status' }
  | { readonly op: 'list-hosts' }
  /** Closes any previous host watch, then watches from `fromRevision`; its events carry `watch: req`. */
  | { readonly op: 'watch-hosts'; readonly fromRevision: Revision }
  /** Every VM record at one revision (the VM cache's listing). */
  | { readonly op: 'list-vms' }
  /** Closes any previous VM watch, then watches `vms/` from `fromRevision`; its batches carry `watch: req`. */
  | { readonly op: 'watch-vms'; readonly fromRevision: Revision }
  /** One host's record and `alive` key (constant size: the read before a fence, for its raft term). */
  | { readonly op: 'get-host'; readonly hostId: string }
  /** One txn, guarded by this replica's leadership (the runner adds it). */
  | { readonly op: 'commit'; readonly change: ClusterChange }
  | { readonly op: 'prune-events'; readonly keep: number }
  | { readonly op: 'put-status'; readonly status: ControllerStatus }
  /** `count` fresh VM uids from the runner's injected source. */
  | { readonly op: 'new-uids'; readonly count: number }
  /** Writes `controller/freeze-contract` (no lease: it outlives this replica), guarded by the leadership. */
  | { readonly op: 'put-contract'; readonly contract: StoredContract }
  /** Writes the host-view barrier (a key under `hosts/` no host owns), guarded by the leadership; see {@link Input} `hosts-progress`. */
  | { readonly op: 'sync-hosts' };

/** Log levels of {@link Effect} `log`. */
export type LogLevel = 'debug' | 'info' | 'warn' | 'error';

/** What the core asks the runner to do, in order. */
export type Effect =
  | ({ readonly kind: 'call'; readonly req: number; readonly deadlineMs: number } & { readonly call: Call })
  | { readonly kind: 'set-timer'; readonly key: string; readonly id: number; readonly delayMs: number }
  | { readonly kind: 'clear-timer'; readonly key: string }
  /** Stops the host watch, or the VM watch (its later events are ignored anyway: they carry an old watch id). */
  | { readonly kind: 'close-watch'; readonly which?: 'hosts' | 'vms' }
  /** This replica no longer leads: forget the leadership token (never resign with it). */
  | { readonly kind: 'leadership-dropped' }
  | { readonly kind: 'log'; readonly level: LogLevel; readonly fields: Readonly<Record<string, unknown>>; readonly msg: string };

/** The lost-marking of one fenced host's VMs in progress: batches committed one after the other. */
export interface MarkLostRun {
  /** Waiting for a free slot ({@link CoreConfig.maxMarkingsInFlight}); no batch planned yet. */
  queued: boolean;
  changes: readonly ClusterChange[];
  next: number;
  marked: number;
  conflicts: number;
  readonly startedMono: number;
  /** Started by this replica's fence (a sweep follows it). */
  readonly fromFence: boolean;
}

/** What the controller tracks per host. */
export interface HostTrack {
  readonly hostId: string;
  record?: HostRecord;
  /** `mod_revision` of `record`: what txns compare. */
  revision?: Revision;
  /** Newest revision applied for the record key and the alive key (older watch events are ignored). */
  recordSeen: bigint;
  aliveSeen: bigint;
  alive?: AliveInfo;
  /** When the `alive` key was seen deleted (the observed lease expiry). */
  goneWall?: number;
  goneMono?: number;
  /**
   * C7 (docs/peer-check.md): when its record left the pool (fenced or retired), controller monotonic
   * ms; it keeps counting as detached for the freeze's leave grace after that. Cleared on return.
   */
  leftPoolMono?: number;
  /** The loss this replica's fence deadline counts from. */
  lossWall?: number;
  lossMono?: number;
  /** The window of the current detachment already includes the TTL for a raft term change. */
  termExtended?: boolean;
  /** Consecutive failed or conflicting writes (retry backoff). */
  attempts?: number;
  /** Record revision at which a write failed for good: nothing more is tried until the record changes. */
  stuckAt?: Revision;
  /** Some VMs of this fenced host may still need marking lost. */
  lostPending?: boolean;
  /** VM keys reported as too large to mark lost (reported once). */
  oversizedReported?: Set<string>;
  /** `<epoch>:<detachedAt>` of the detachment the fence deadline belongs to. */
  incarnation?: string;
  fenceAtMono?: number;
  fenceAtWall?: number;
  /** Epoch for which unsafe timings were reported / incarnation+blockers for which a blocked fence was. */
  unsafeReported?: number;
  blockedReported?: string;
  /** A detach txn for this host is in flight. */
  detaching?: boolean;
  /** A fence (the pre-fence read, then the fence txn) for this incarnation is in flight. */
  fencing?: string;
  /** Lost-marking of its VMs in progress. */
  marking?: MarkLostRun;
}

/** A write queued by the reschedule sweep (committed one after the other, like the old loop did). */
export interface SweepWrite {
  readonly action: 'mark-lost' | 'keep-lost' | 'reschedule' | 'pending';
  /** The change (all but placements). */
  readonly change?: ClusterChange;
  /** Host whose current revision replaces the change's guard when the write is issued. */
  readonly guardHost?: string;
  /** Placements, batched into one txn when issued (each target's current revision, fresh uids). */
  readonly place?: readonly { readonly vm: VmEntry; readonly placement: { readonly key: string; readonly hostId: string; readonly hostEpoch: number }; readonly uidIndex: number }[];
}

/** The reschedule sweep in progress. */
export interface SweepRun {
  phase: 'completing' | 'stale' | 'uids' | 'writes' | 'yield';
  /** Where a yielded sweep goes on (see {@link CoreConfig.chunkSize}). */
  resume?: 'stale' | 'place';
  /** Progress of a chunked pass (index into its list). */
  cursor: number;
  /** Keys of the VMs to place or note, taken when the placement pass starts. */
  todo: string[];
  /** Some write of this sweep lost a race or failed: another sweep follows after `retryDelay`. */
  failed: boolean;
  /** What the placement pass decided so far (batched into writes when the pass ends). */
  acc?: { readonly keep: ClusterChange[]; readonly pending: ClusterChange[]; readonly placed: { readonly item: NonNullable<SweepWrite['place']>[number]; readonly size: ClusterChange }[] };
  /** Hosts whose lost-marking the sweep waits for (phase `completing`). */
  waiting: Set<string>;
  writes: SweepWrite[];
  next: number;
  marked: number;
  uids: readonly string[];
}

/** What a request id stands for: how its outcome continues. Plain data (no closures). */
export type Pending =
  | { readonly for: 'campaign'; readonly startedMono: number }
  | { readonly for: 'keepalive'; readonly sentMono: number }
  | { readonly for: 'server-status' }
  | { readonly for: 'list-hosts' }
  | { readonly for: 'watch' }
  | { readonly for: 'event'; readonly event: string }
  | { readonly for: 'status'; readonly sig: string }
  | { readonly for: 'prune' }
  | { readonly for: 'detach'; readonly hostId: string; readonly next: HostRecord; readonly obsWall: number; readonly obsMono: number; readonly termExtended: boolean }
  | { readonly for: 'fence-read'; readonly hostId: string; readonly incarnation: string }
  | { readonly for: 'list-vms' }
  | { readonly for: 'watch-vms' }
  | { readonly for: 'sweep-uids' }
  | { readonly for: 'put-contract'; readonly contract: StoredContract }
  | { readonly for: 'sync-hosts' }
  | { readonly for: 'write'; readonly hostId?: string; readonly action: string; readonly retry: boolean; readonly change: ClusterChange; readonly then: Then };

/** How a write's outcome continues (see `writes.ts`). */
export type Then =
  | { readonly k: 'none' }
  | { readonly k: 'fence'; readonly hostId: string; readonly pending: number; readonly lateMs: number; readonly epoch: number }
  | { readonly k: 'mark-lost'; readonly hostId: string }
  | { readonly k: 'sweep' }
  | { readonly k: 'gc'; readonly hostId: string; readonly action: 'retire' | 'remove' };

/**
 * The controller's whole state. `step` takes it over and returns the next one (it may update it in
 * place: a controller of 5,000 hosts cannot copy its host map per input); a caller keeps only the
 * returned state.
 */
export interface ControllerState {
  readonly cfg: CoreConfig;
  /** Next request / timer id. */
  seq: number;
  /** Request ids awaited, and what each stands for. */
  readonly pending: Map<number, Pending>;
  /** Timers set, by key, with the id of the last set. */
  readonly timers: Map<string, number>;

  /** Leadership term of this replica (bumped at election and at step-down). */
  term: number;
  leader: boolean;
  leaderTtlMs: number;
  leaderSinceWall: number;
  /** Send time of the last acknowledged leader keepalive (monotonic). */
  lastAckMono: number;

  /** The host view is listed and its watch (`watch`) started. */
  synced: boolean;
  watch?: number;
  readonly hosts: Map<string, HostTrack>;

  /** Hosts of a fresh listing still to reconcile (chunked, see host-view.ts). */
  reconcileQueue?: string[];

  /** The VM cache (listed at one revision, then watched): every VM record that passes the codec, by key. */
  vmsSynced: boolean;
  vmWatch?: number;
  readonly vms: Map<string, VmEntry>;
  /** Keys of the cached VMs by `hostId`. */
  readonly vmsByHost: Map<string, Set<string>>;
  /** A listing being loaded into the cache, a chunk per step. */
  vmLoad?: { readonly vms: readonly VmEntry[]; readonly revision: Revision; next: number };
  /** Hosts whose VMs or record changed since the sweep last found no stale incarnation on them. */
  readonly staleDirty: Set<string>;
  /** Keys of cached VMs the sweep acts on: `lost`, or `pending` without a host. */
  readonly unplaced: Set<string>;
  /** VM keys this replica deleted, with the delete's revision (older watch events for them are ignored). */
  readonly vmTombs: Map<string, bigint>;
  /** The cache holds every change under `vms/` up to this revision (the listing's, then each watch batch's). */
  vmsRev: bigint;
  /** Used capacity per host and the schedulable hosts in placement order (kept with the caches). */
  capacity: CapacityIndex;
  /** Per host: this replica's own capacity-guarded placement onto it committed at this revision. */
  readonly capSeen: Map<string, bigint>;
  /** Capacity reserved by placements decided but not yet seen committed, by VM key. */
  readonly reserved: Map<string, { readonly hostId: string; readonly vcpu: number; readonly memoryMb: number }>;

  fencesInFlight: number;
  readonly fenceQueue: Set<string>;
  markingsInFlight: number;
  readonly markQueue: Set<string>;
  /** Eviction rate limit: tokens in the bucket at `evictAtMono`. */
  evictTokens: number;
  evictAtMono: number;

  freeze: FreezeState;
  /** Detached hosts out of the pool at the last freeze evaluation (also what the slower eviction rate looks at). */
  detachedCount: DetachedCount;
  freezeResumeAtWall?: number;
  /** Host states changed since the freeze was last evaluated. */
  freezeDirty: boolean;
  /**
   * C6 (docs/peer-check.md): a host event raised the detached share since the last evaluation; an
   * event that may lower it is then preceded by an evaluation, so that no peak is missed.
   */
  freezeRose: boolean;
  /** C3: the pool when the freeze began (while frozen or resuming): only these hosts count. */
  freezePool?: Set<string>;
  /** The rule applied at the last evaluation: tightest(published, acknowledged by pool hosts, configured). */
  freezeRule?: { readonly share: number; readonly resumeDelay: number };
  /** C4: the pool's largest published ttl and electionTolerance, and its size, at the last evaluation. */
  poolTimings?: { readonly ttl: number; readonly electionTolerance: number; readonly pool: number };
  /** `hostsRev` at the last freeze evaluation. */
  freezeRev: bigint;

  /** The contract as published (read with the host listing, then as written by this replica). */
  contract?: StoredContract;
  /** The listing said what is published (possibly nothing): a contract may be written. */
  contractKnown: boolean;
  /** What this replica wants published (from the last freeze evaluation). */
  contractWanted?: { readonly share: number; readonly resumeDelay: number; readonly poolSize: number };
  /** A contract write is in flight. */
  contractWriting: boolean;
  /** When this replica last wrote the contract (monotonic). */
  contractWrittenMono?: number;

  /** C2: the host view holds every change under `hosts/` up to this revision (listing, watch, barrier). */
  hostsRev: bigint;
  /** C2: fences whose pre-fence read is newer than the host view, waiting for it (slot kept). */
  readonly fenceParked: Map<string, { readonly incarnation: string; readonly readRev: bigint }>;
  /** A barrier write is in flight. */
  barrierInFlight: boolean;

  sweep?: SweepRun;
  sweepQueued: boolean;

  detachesInFlight: number;
  readonly detachQueue: Set<string>;

  /** Highest raft term seen, and when this replica first saw it. */
  termChange?: TermChange;
  /** The store's highest raft term as the last input reported it. */
  raftTermHint?: number;

  lastStatus: string;
  /** Non-retryable failures (newest last, bounded). */
  readonly failures: ControllerFailure[];
  /** Failures already reported. */
  readonly reported: Set<string>;
  storeInfo?: { readonly version: string; readonly assumption: string };
}

/** One step's working context: the state, the time, and the effects emitted so far. */
export interface Ctx {
  readonly s: ControllerState;
  readonly now: Now;
  readonly fx: Effect[];
}

/** An event body as the core writes it (the time is added when it is emitted). */
export type EventBody = ClusterEventBody & { readonly detail: string };
