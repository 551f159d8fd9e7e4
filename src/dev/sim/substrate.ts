/**
 * The fake host substrate of the simulator: one {@link SimMachine} per host with a VMM whose VM
 * processes outlive the agent (like daemonized QEMU), taps, overlays, files and an in-memory inventory, plus the {@link Incarnations} ledger of every VM process running
 * anywhere — the ground truth the "never two incarnations" invariant reads.
 *
 * Invariants:
 * - a VM process exists from `start` until a stop, a guest power-off or a kill removes it; nothing
 *   else (an agent crash, restart or hang) touches it;
 * - a graceful stop takes seeded time: the guest powers off after a delay drawn per stop, which may
 *   exceed the grace period (then the stop is forced after `graceMs`) — the power-off is an event
 *   of the machine, not of the agent, so it happens even if the agent dies meanwhile;
 * - the ledger records every start with the VM key (namespace/name, from the state dir layout) and
 *   reports a violation the moment a second incarnation of one key (or one uid twice) starts.
 */
import { NotFoundError, TetherError } from '../../domain/errors.js';
import type { Clock } from '../../ports/clock.js';
import type { Inventory } from '../../ports/inventory.js';
import type { Files } from '../../ports/files.js';
import type { ImageStore, ResolvedImage } from '../../ports/images.js';
import type { Network, TapInfo, TapOwner } from '../../ports/network.js';
import type { StopOptions, StopResult, VmLaunchSpec, Vmm, VmProcessStatus } from '../../ports/vmm.js';
import type { Volumes } from '../../ports/volumes.js';
import type { MachineClock } from './clock.js';
import type { Prng } from './prng.js';
import { MemoryInventory } from './inventory.js';
import type { Scheduler } from './scheduler.js';

/** One running VM process. */
export interface SimVmProcess {
  readonly uid: string;
  readonly hostId: string;
  readonly key: string;
  readonly stateDir: string;
  readonly pid: number;
  readonly since: number;
}

/** A double run found by the ledger. */
export interface DoubleRun {
  readonly at: number;
  readonly key: string;
  readonly running: readonly { readonly uid: string; readonly hostId: string }[];
}

/** Every VM process running in the simulated world (ground truth). */
export class Incarnations {
  private readonly byUid = new Map<string, SimVmProcess[]>();
  private readonly byKey = new Map<string, Set<SimVmProcess>>();
  readonly doubleRuns: DoubleRun[] = [];
  /** Starts so far. */
  starts = 0;

  constructor(private readonly sched: Scheduler) {}

  started(p: SimVmProcess): void {
    this.starts++;
    const list = this.byUid.get(p.uid) ?? [];
    list.push(p);
    this.byUid.set(p.uid, list);
    const set = this.byKey.get(p.key) ?? new Set();
    set.add(p);
    this.byKey.set(p.key, set);
    this.sched.trace.add(this.sched.now, `vm start ${p.hostId} ${p.key} ${p.uid.slice(0, 8)}`);
    if (set.size > 1) this.doubleRuns.push({ at: this.sched.now, key: p.key, running: [...set].map((x) => ({ uid: x.uid, hostId: x.hostId })) });
  }

  stopped(p: SimVmProcess, how: string): void {
    const list = (this.byUid.get(p.uid) ?? []).filter((x) => x !== p);
    if (list.length === 0) this.byUid.delete(p.uid);
    else this.byUid.set(p.uid, list);
    const set = this.byKey.get(p.key);
    set?.delete(p);
    if (set && set.size === 0) this.byKey.delete(p.key);
    this.sched.trace.add(this.sched.now, `vm gone ${p.hostId} ${p.key} ${p.uid.slice(0, 8)} ${how}`);
  }

  /** Keys running right now, with where. */
  running(): Map<string, SimVmProcess[]> {
    const out = new Map<string, SimVmProcess[]>();
    for (const [k, s] of this.byKey) out.set(k, [...s]);
    return out;
  }
}

/** `<root>/vm/<ns>/<name>/<uid>` → `ns/name` (the VM key), or the state dir itself when it does not fit. */
export function vmKeyOfStateDir(root: string, stateDir: string): string {
  const rest = stateDir.startsWith(`${root}/vm/`) ? stateDir.slice(root.length + 4).split('/') : [];
  return rest.length >= 3 ? `${rest[0]}/${rest[1]}` : stateDir;
}

/** Seeded behaviour of guests and the VMM. */
export interface GuestBehaviour {
  /** ms from the power button to the guest's power-off (may exceed the grace period). */
  powerOffDelay(): number;
  /** ms from process start to the ready line. */
  bootDelay(): number;
}

/** Guests drawn from a PRNG: most power off within 0.05-3 s, one in ten takes longer than any grace, one in 20 never does. */
export function seededGuests(rng: Prng): GuestBehaviour {
  return {
    powerOffDelay: () => (rng.chance(0.05) ? Number.POSITIVE_INFINITY : rng.chance(0.1) ? 3000 + rng.float() * 10_000 : 50 + rng.float() * 2950),
    bootDelay: () => 20 + rng.float() * 400,
  };
}

/** The VMM of one machine: VM processes that outlive the agent. */
export class SimVmm implements Vmm {
  readonly procs = new Map<string, SimVmProcess>();
  private nextPid = 1000;

  constructor(
    private readonly machine: SimMachine,
    private readonly ledger: Incarnations,
    private readonly guests: GuestBehaviour,
  ) {}

  async start(spec: VmLaunchSpec): Promise<{ pid: number }> {
    const existing = this.procs.get(spec.uid);
    if (existing) return { pid: existing.pid };
    const p: SimVmProcess = { uid: spec.uid, hostId: spec.hostId, key: vmKeyOfStateDir(this.machine.root, spec.stateDir), stateDir: spec.stateDir, pid: this.nextPid++, since: this.machine.sched.now };
    this.procs.set(spec.uid, p);
    this.ledger.started(p);
    return { pid: p.pid };
  }

  async waitReady(): Promise<void> {}

  async status(uid: string): Promise<VmProcessStatus> {
    const p = this.procs.get(uid);
    return p ? { running: true, pid: p.pid, ready: true } : { running: false, ready: false };
  }

  /** Removes a process at once (SIGKILL, guest power-off). */
  remove(uid: string, how: string): boolean {
    const p = this.procs.get(uid);
    if (!p) return false;
    this.procs.delete(uid);
    this.ledger.stopped(p, how);
    return true;
  }

  async stop(uid: string, _stateDir: string, opts: StopOptions): Promise<StopResult> {
    const clock = this.machine.agentClock();
    const t0 = clock.nowMono();
    const p = this.procs.get(uid);
    if (!p) return { method: 'already-stopped', tookMs: 0 };
    if (!opts.forceOnly) {
      const delay = this.guests.powerOffDelay();
      if (Number.isFinite(delay)) {
        // The guest's power-off belongs to the machine: it happens even if the agent dies now.
        this.machine.sched.after(delay / this.machine.clock.rate, `guest-poweroff ${this.machine.hostId} ${uid.slice(0, 8)}`, () => {
          if (this.procs.get(uid) === p) this.remove(uid, 'graceful');
        });
      }
      const waited = Math.min(delay, opts.graceMs);
      await clock.sleep(waited);
      if (this.procs.get(uid) !== p) return { method: 'graceful', tookMs: clock.nowMono() - t0 };
    }
    await clock.sleep(5);
    if (this.procs.get(uid) === p) this.remove(uid, 'forced');
    return { method: 'forced-kill', tookMs: clock.nowMono() - t0 };
  }

  async listOwned(hostId: string): Promise<{ uid: string; pid: number; stateDir?: string }[]> {
    return [...this.procs.values()].filter((p) => p.hostId === hostId).map((p) => ({ uid: p.uid, pid: p.pid, stateDir: p.stateDir }));
  }
}

/** Taps with owner marks. */
export class SimTaps implements Network {
  readonly taps = new Map<string, TapInfo>();
  async createTap(name: string, owner: TapOwner): Promise<void> {
    const t = this.taps.get(name);
    if (t && (t.owner?.hostId !== owner.hostId || t.owner.vmUid !== owner.vmUid)) throw new TetherError('NOT_OWNED', `${name} is not ours`);
    this.taps.set(name, { name, owner, up: true });
  }
  async getTap(name: string): Promise<TapInfo | undefined> {
    return this.taps.get(name);
  }
  async deleteTap(name: string, owner: TapOwner): Promise<void> {
    const t = this.taps.get(name);
    if (!t) return;
    if (t.owner?.hostId !== owner.hostId || t.owner.vmUid !== owner.vmUid) throw new TetherError('NOT_OWNED', `${name} is not ours`);
    this.taps.delete(name);
  }
  async listOwned(hostId: string): Promise<TapInfo[]> {
    return [...this.taps.values()].filter((t) => t.owner?.hostId === hostId);
  }
}

/** Files under the machine's state dir (a sorted map of paths). */
export class SimFiles implements Files {
  readonly paths = new Map<string, string>();
  constructor(readonly root: string) {}
  async ensureDir(path: string): Promise<void> {
    this.paths.set(path, 'dir');
  }
  async exists(path: string): Promise<boolean> {
    return this.paths.has(path);
  }
  async removeTree(path: string): Promise<void> {
    for (const p of [...this.paths.keys()]) if (p === path || p.startsWith(`${path}/`)) this.paths.delete(p);
  }
  async removeEmptyDir(path: string): Promise<void> {
    if (![...this.paths.keys()].some((p) => p.startsWith(`${path}/`))) this.paths.delete(path);
  }
  async list(path: string): Promise<string[]> {
    const out = new Set<string>();
    for (const p of this.paths.keys()) if (p.startsWith(`${path}/`)) out.add(p.slice(path.length + 1).split('/')[0]!);
    return [...out].sort();
  }
}

/** Overlays as entries of {@link SimFiles}. */
export class SimVolumes implements Volumes {
  constructor(private readonly files: SimFiles) {}
  async createOverlay(base: string, path: string): Promise<void> {
    this.files.paths.set(path, base);
  }
  async isOverlay(path: string, base: string): Promise<boolean> {
    return this.files.paths.get(path) === base;
  }
  async deleteOverlay(path: string): Promise<void> {
    this.files.paths.delete(path);
  }
}

/** Images: the built-ins only. */
export class SimImages implements ImageStore {
  async kernel(name: string): Promise<ResolvedImage> {
    return this.find('kernel', name);
  }
  async initrd(name: string): Promise<ResolvedImage> {
    return this.find('initrd', name);
  }
  async disk(name: string): Promise<ResolvedImage> {
    return this.find('disk', name);
  }
  private find(kind: string, name: string): ResolvedImage {
    if (name === '') return { name: 'builtin', path: `/images/${kind}/builtin` };
    throw new NotFoundError(`${kind} image "${name}"`);
  }
}

/**
 * One simulated host machine: what survives its agent (VM processes, taps, files, the inventory,
 * the guardian's feed and fire record) and its clock.
 */
export class SimMachine {
  readonly root: string;
  readonly vmm: SimVmm;
  readonly taps = new SimTaps();
  readonly files: SimFiles;
  readonly volumes: SimVolumes;
  readonly images = new SimImages();
  /** The inventory (kept across agent restarts and reboots, like the SQLite file). */
  inventory: Inventory;
  /** `guardian/feed.json` and `guardian/fired.json` (text, as the real files). */
  feedText: string | undefined;
  firedText: string | undefined;
  /** Highest feed seq written on this boot (the real feed keeps it in the file). */
  feedSeq = 0;
  /** The clock of the agent process running now (set by the world when it starts one). */
  agentClock: () => Clock;

  constructor(
    readonly hostId: string,
    readonly sched: Scheduler,
    readonly clock: MachineClock,
    ledger: Incarnations,
    guests: GuestBehaviour,
    /** The boot id (monotonic deadlines mean something only on one boot). */
    readonly bootId: string,
  ) {
    this.root = `/sim/${hostId}`;
    this.files = new SimFiles(this.root);
    this.volumes = new SimVolumes(this.files);
    this.vmm = new SimVmm(this, ledger, guests);
    this.inventory = new MemoryInventory();
    this.agentClock = () => {
      throw new Error(`no agent clock on ${hostId}`);
    };
  }

  /** What is left on the machine: VM processes, taps, VM folders, inventory rows (empty: clean). */
  leftovers(): string[] {
    const out: string[] = [];
    for (const p of this.vmm.procs.values()) out.push(`process:${p.key}/${p.uid.slice(0, 8)}`);
    for (const t of this.taps.taps.values()) out.push(`tap:${t.name}`);
    for (const p of this.files.paths.keys()) if (p.startsWith(`${this.root}/vm/`) && p.split('/').length >= 7) out.push(`file:${p}`);
    for (const v of this.inventory.listVms()) out.push(`inventory-vm:${v.spec.id.namespace}/${v.spec.id.name}`);
    return out;
  }
}
