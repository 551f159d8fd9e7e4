/**
 * etcd's disk latency over a window, from its Prometheus histograms (`GET <client URL>/metrics`):
 * a commit waits for a WAL fsync on a quorum of members, so a slow disk (shared with other work)
 * shows up here rather than in the process that waits for the commit.
 */
import { httpText, type HttpTls } from '../../src/dev/etcd-http.js';

/** Cumulative bucket counts of one histogram, by upper bound in seconds (`+Inf` = Infinity). */
type Buckets = Map<number, number>;

const HISTOGRAMS = {
  walFsync: 'etcd_disk_wal_fsync_duration_seconds',
  backendCommit: 'etcd_disk_backend_commit_duration_seconds',
} as const;
type HistogramName = keyof typeof HISTOGRAMS;

async function scrape(url: string, tls: HttpTls | undefined, timeoutMs = 2000): Promise<Record<HistogramName, Buckets> | undefined> {
  try {
    const text = await httpText(`${url}/metrics`, 'GET', undefined, timeoutMs, tls);
    const out = { walFsync: new Map(), backendCommit: new Map() } as Record<HistogramName, Buckets>;
    for (const line of text.split('\n')) {
      for (const [key, metric] of Object.entries(HISTOGRAMS) as [HistogramName, string][]) {
        if (!line.startsWith(`${metric}_bucket{`)) continue;
        const m = /le="([^"]+)"\}\s+(\S+)/.exec(line);
        if (m) out[key].set(m[1] === '+Inf' ? Infinity : Number(m[1]), Number(m[2]));
      }
    }
    return out;
  } catch {
    return undefined;
  }
}

/** What one histogram did in a window: count, and upper bounds of the bucket holding p50 / p99 / the slowest. */
export interface DiskLatency {
  readonly count: number;
  /** Bucket upper bounds in ms (etcd's buckets double from 1 ms); undefined when there was nothing. */
  readonly p50LeMs?: number;
  readonly p99LeMs?: number;
  readonly maxLeMs?: number;
}

function delta(a: Buckets, b: Buckets): DiskLatency {
  const bounds = [...b.keys()].sort((x, y) => x - y);
  const cum = bounds.map((le) => (b.get(le) ?? 0) - (a.get(le) ?? 0));
  const count = cum[cum.length - 1] ?? 0;
  if (count <= 0) return { count: 0 };
  const le = (q: number) => {
    const i = cum.findIndex((c) => c >= q * count);
    const v = bounds[i]!;
    return Number.isFinite(v) ? Math.round(v * 1000 * 1000) / 1000 : Infinity;
  };
  const firstFull = cum.findIndex((c) => c >= count);
  return { count, p50LeMs: le(0.5), p99LeMs: le(0.99), maxLeMs: Number.isFinite(bounds[firstFull]!) ? Math.round(bounds[firstFull]! * 1e6) / 1000 : Infinity };
}

/** Scrapes every member at {@link start} and {@link stop}; per member, the WAL fsync and backend commit latency in between. */
export class EtcdDiskWindow {
  private before: (Record<HistogramName, Buckets> | undefined)[] = [];

  /** `tls`: the cluster's `httpTls()` when it runs TLS with client certificates. */
  constructor(
    private readonly urls: readonly string[],
    private readonly tls?: HttpTls,
  ) {}

  async start(): Promise<this> {
    this.before = await Promise.all(this.urls.map((u) => scrape(u, this.tls)));
    return this;
  }

  async stop(): Promise<{ walFsync: (DiskLatency | undefined)[]; backendCommit: (DiskLatency | undefined)[] }> {
    const after = await Promise.all(this.urls.map((u) => scrape(u, this.tls)));
    const per = (k: HistogramName) => after.map((b, i) => (b && this.before[i] ? delta(this.before[i]![k], b[k]) : undefined));
    return { walFsync: per('walFsync'), backendCommit: per('backendCommit') };
  }
}

/** `p99 <= X ms, slowest <= Y ms` over the members (the worst member). */
export function fmtDisk(per: readonly (DiskLatency | undefined)[]): string {
  const known = per.filter((d): d is DiskLatency => d !== undefined);
  if (known.length === 0) return '—';
  const ok = known.filter((d) => d.count > 0);
  if (ok.length === 0) return 'no writes';
  const p99 = Math.max(...ok.map((d) => d.p99LeMs ?? 0));
  const max = Math.max(...ok.map((d) => d.maxLeMs ?? 0));
  return `<= ${p99} / <= ${max} ms`;
}
