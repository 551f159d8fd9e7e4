import { NotFoundError, TetherError } from '../../src/domain/errors.js';
import { SimFiles as FakeFiles } from '../../src/dev/sim/substrate.js';
import type { ImageStore, ResolvedImage } from '../../src/ports/images.js';
import type { Logger } from '../../src/ports/logger.js';
import type { Network, TapInfo, TapOwner } from '../../src/ports/network.js';
import type { StopOptions, StopResult, VmLaunchSpec, Vmm, VmProcessStatus } from '../../src/ports/vmm.js';
import type { Volumes } from '../../src/ports/volumes.js';

/** Records every mutating call, in order, as `port.method:arg`. */
export type CallLog = string[];

/** In-memory VMM: a "process" per uid. `failStart` makes start throw. */
export class FakeVmm implements Vmm {
  readonly procs = new Map<string, { dir: string; ready: boolean }>();
  failStart = false;
  constructor(private readonly calls: CallLog) {}
  async start(spec: VmLaunchSpec): Promise<{ pid: number }> {
    this.calls.push(`vmm.start:${spec.uid}`);
    if (this.failStart) throw new TetherError('VMM_ERROR', 'qemu exploded');
    this.procs.set(spec.uid, { dir: spec.stateDir, ready: true });
    return { pid: 4242 };
  }
  async waitReady(): Promise<void> {}
  async status(uid: string): Promise<VmProcessStatus> {
    const p = this.procs.get(uid);
    return p ? { running: true, pid: 4242, ready: p.ready } : { running: false, ready: false };
  }
  async stop(uid: string, _dir: string, _opts: StopOptions): Promise<StopResult> {
    const had = this.procs.delete(uid);
    this.calls.push(had ? `vmm.stop:${uid}` : `vmm.stop-noop:${uid}`);
    return { method: had ? 'graceful' : 'already-stopped', tookMs: 1 };
  }
  async listOwned(): Promise<{ uid: string; pid: number }[]> {
    return [...this.procs.keys()].map((uid) => ({ uid, pid: 4242 }));
  }
}

/** In-memory taps with owner marks. */
export class FakeNetwork implements Network {
  readonly taps = new Map<string, TapInfo>();
  constructor(private readonly calls: CallLog) {}
  async createTap(name: string, owner: TapOwner): Promise<void> {
    this.calls.push(`net.createTap:${name}`);
    const t = this.taps.get(name);
    if (t && (t.owner?.hostId !== owner.hostId || t.owner.vmUid !== owner.vmUid)) throw new TetherError('NOT_OWNED', `${name} is not ours`);
    this.taps.set(name, { name, owner, up: true });
  }
  async getTap(name: string): Promise<TapInfo | undefined> {
    return this.taps.get(name);
  }
  async deleteTap(name: string, owner: TapOwner): Promise<void> {
    this.calls.push(`net.deleteTap:${name}`);
    const t = this.taps.get(name);
    if (!t) return;
    if (t.owner?.hostId !== owner.hostId || t.owner.vmUid !== owner.vmUid) throw new TetherError('NOT_OWNED', `${name} is not ours`);
    this.taps.delete(name);
  }
  async listOwned(hostId: string): Promise<TapInfo[]> {
    return [...this.taps.values()].filter((t) => t.owner?.hostId === hostId);
  }
}

/** In-memory overlays; shares the file set with {@link FakeFiles}. */
export class FakeVolumes implements Volumes {
  constructor(
    private readonly calls: CallLog,
    private readonly files: FakeFiles,
  ) {}
  async createOverlay(base: string, path: string): Promise<void> {
    this.calls.push(`vol.create:${path}`);
    this.files.paths.set(path, base);
  }
  async isOverlay(path: string, base: string): Promise<boolean> {
    return this.files.paths.get(path) === base;
  }
  async deleteOverlay(path: string): Promise<void> {
    this.calls.push(`vol.delete:${path}`);
    this.files.paths.delete(path);
  }
}

/** In-memory files under a root: the simulator's (one implementation for tests and the simulator). */
export { FakeFiles };

/** Image store that knows the built-ins and the names given. */
export class FakeImages implements ImageStore {
  constructor(private readonly disks: string[] = []) {}
  async kernel(name: string): Promise<ResolvedImage> {
    return this.find('kernel', name, []);
  }
  async initrd(name: string): Promise<ResolvedImage> {
    return this.find('initrd', name, []);
  }
  async disk(name: string): Promise<ResolvedImage> {
    return this.find('disk', name, this.disks);
  }
  private find(kind: string, name: string, known: string[]): ResolvedImage {
    if (name === '' || known.includes(name)) return { name: name || 'builtin', path: `/images/${kind}/${name || 'builtin'}` };
    throw new NotFoundError(`${kind} image "${name}"`);
  }
}

/** Logger that drops everything (or collects, when a sink is given). */
export function silentLogger(sink?: string[]): Logger {
  const log = (level: string) => (fields: Record<string, unknown>, msg: string) => sink?.push(`${level} ${msg} ${JSON.stringify(fields)}`);
  const l: Logger = { debug: log('debug'), info: log('info'), warn: log('warn'), error: log('error'), child: () => l };
  return l;
}
