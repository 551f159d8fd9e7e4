import { readdirSync, readFileSync } from 'node:fs';

/**
 * The "a VM never runs twice" check, from outside every Tether process: the process table read
 * every 100 ms. A QEMU of Tether carries `-name tether:<hostId>:<uid>,…` and `-pidfile
 * <stateDir>/vm/<namespace>/<name>/<uid>/qemu.pid` (src/adapters/qemu/), so each process names its
 * host, its incarnation (uid) and its VM (the cluster key `namespace/name`).
 *
 * Invariant checked: at no sample does one VM key have two distinct uids alive (two incarnations,
 * on one host or two). Processes are counted by uid, not by pid: `-daemonize` briefly shows a
 * launcher and its child for the same uid, which is one incarnation.
 */

/** One live QEMU incarnation seen in a sample. */
export interface QemuIncarnation {
  readonly key: string;
  readonly uid: string;
  readonly hostId: string;
}

const PIDFILE = /\/vm\/([^/]+)\/([^/]+)\/([0-9a-f]{32})\/qemu\.pid$/;
const NAME = /^tether:([^:,]+):([0-9a-f]{32})(?:,|$)/;

/** Parses one QEMU argv into its incarnation (undefined when it is not a marked Tether QEMU). */
export function incarnationOf(argv: readonly string[]): QemuIncarnation | undefined {
  if (!argv[0]?.includes('qemu-system')) return undefined;
  const name = NAME.exec(argv[argv.indexOf('-name') + 1] ?? '');
  const pid = PIDFILE.exec(argv[argv.indexOf('-pidfile') + 1] ?? '');
  if (!name || !pid || pid[3] !== name[2]) return undefined;
  return { key: `${pid[1]}/${pid[2]}`, uid: name[2]!, hostId: name[1]! };
}

/** The live incarnations of the given hosts' VMs, by VM key (one /proc scan). */
export function incarnationsByKey(hostIds: readonly string[]): Map<string, QemuIncarnation[]> {
  const hosts = new Set(hostIds);
  const out = new Map<string, QemuIncarnation[]>();
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    let raw: string;
    try {
      raw = readFileSync(`/proc/${name}/cmdline`, 'utf8');
    } catch {
      continue; // gone
    }
    if (!raw.includes('tether:')) continue;
    const inc = incarnationOf(raw.split('\0').filter(Boolean));
    if (!inc || !hosts.has(inc.hostId)) continue;
    const list = out.get(inc.key) ?? [];
    if (!list.some((x) => x.uid === inc.uid)) list.push(inc);
    out.set(inc.key, list);
  }
  return out;
}

/** When an incarnation was first and last seen alive (wall ms). */
export interface IncarnationSeen extends QemuIncarnation {
  readonly firstSeen: number;
  lastSeen: number;
}

/** A moment when one VM key had two (or more) incarnations alive. */
export interface DoubleRun {
  readonly at: number;
  readonly key: string;
  readonly incarnations: readonly { readonly uid: string; readonly hostId: string }[];
}

/**
 * Samples the process table every `everyMs` (default 100) until {@link stop}. Records every double
 * run (consecutive samples of the same pair collapse into one entry with `until`), and when each
 * incarnation was first and last seen.
 */
export class DoubleRunSampler {
  /** Double runs, one per (key, set of uids) episode. */
  readonly doubles: (DoubleRun & { until: number; samples: number })[] = [];
  readonly seen = new Map<string, IncarnationSeen>();
  samples = 0;
  /** Longest gap between two samples (ms): how blind the sampler was at worst. */
  maxGapMs = 0;
  private running = true;
  private readonly loop: Promise<void>;
  private readonly open = new Map<string, DoubleRun & { until: number; samples: number }>();

  constructor(
    private readonly hostIds: readonly string[],
    private readonly everyMs = 100,
    private readonly onDouble?: (d: DoubleRun) => void,
  ) {
    this.loop = this.run();
  }

  /** One sample now (also used by the loop). */
  sample(): Map<string, QemuIncarnation[]> {
    const now = Date.now();
    const byKey = incarnationsByKey(this.hostIds);
    this.samples++;
    const stillOpen = new Set<string>();
    for (const [key, incs] of byKey) {
      for (const i of incs) {
        const s = this.seen.get(i.uid);
        if (s) s.lastSeen = now;
        else this.seen.set(i.uid, { ...i, firstSeen: now, lastSeen: now });
      }
      if (incs.length > 1) {
        const id = `${key} ${incs.map((i) => i.uid).sort().join(',')}`;
        stillOpen.add(id);
        const o = this.open.get(id);
        if (o) {
          o.until = now;
          o.samples++;
        } else {
          const d = { at: now, until: now, samples: 1, key, incarnations: incs.map((i) => ({ uid: i.uid, hostId: i.hostId })) };
          this.open.set(id, d);
          this.doubles.push(d);
          this.onDouble?.(d);
        }
      }
    }
    for (const id of [...this.open.keys()]) if (!stillOpen.has(id)) this.open.delete(id);
    return byKey;
  }

  private async run(): Promise<void> {
    let last = Date.now();
    while (this.running) {
      try {
        this.sample();
      } catch {
        /* a transient /proc read error: the next sample retries */
      }
      const now = Date.now();
      this.maxGapMs = Math.max(this.maxGapMs, now - last);
      last = now;
      await new Promise((r) => setTimeout(r, this.everyMs));
    }
  }

  /** Stops sampling (resolves after the last sample). */
  async stop(): Promise<void> {
    this.running = false;
    await this.loop;
  }
}
