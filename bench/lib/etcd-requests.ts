/**
 * etcd's request load over a window, from its own Prometheus counters (`GET <client URL>/metrics`):
 * `grpc_server_msg_received_total` per gRPC method, summed over the members. For a unary call
 * (Range, Txn, LeaseGrant, ...) one message is one request; for a stream (LeaseKeepAlive, Watch)
 * one message is one keepalive or one watch create/cancel request. A keepalive or a linearizable
 * read a follower receives is counted once, by that follower (it forwards it to the leader over the
 * peer connection, not over gRPC).
 */
import { httpText, type HttpTls } from '../../src/dev/etcd-http.js';

type Counters = Map<string, number>;

const RECEIVED = /^grpc_server_msg_received_total\{([^}]*)\}\s+(\S+)/;
const GAUGES = ['etcd_mvcc_db_total_size_in_bytes', 'etcd_debugging_mvcc_keys_total', 'etcd_debugging_mvcc_watcher_total'] as const;

async function scrape(url: string, tls: HttpTls | undefined): Promise<{ received: Counters; gauges: Record<string, number> } | undefined> {
  try {
    const text = await httpText(`${url}/metrics`, 'GET', undefined, 3000, tls);
    const received: Counters = new Map();
    const gauges: Record<string, number> = {};
    for (const line of text.split('\n')) {
      const m = RECEIVED.exec(line);
      if (m) {
        const method = /grpc_method="([^"]+)"/.exec(m[1]!)?.[1];
        if (method) received.set(method, (received.get(method) ?? 0) + Number(m[2]));
        continue;
      }
      for (const g of GAUGES) if (line.startsWith(`${g} `)) gauges[g] = Number(line.slice(g.length + 1));
    }
    return { received, gauges };
  } catch {
    return undefined;
  }
}

/** Requests per second by gRPC method over a window, summed over the members, and a few gauges at its end. */
export interface EtcdRequestRates {
  readonly windowMs: number;
  /** method → requests (messages received) per second, largest first; methods with none left out. */
  readonly perSecond: Record<string, number>;
  readonly totalPerSecond: number;
  /** Per member at the end: db size (MiB), keys, watchers. */
  readonly members: readonly ({ readonly dbMiB: number; readonly keys: number; readonly watchers: number } | undefined)[];
}

/** Scrapes every member at {@link start} and {@link stop}. */
export class EtcdRequestWindow {
  private before: (Counters | undefined)[] = [];
  private t0 = 0;

  constructor(
    private readonly urls: readonly string[],
    private readonly tls?: HttpTls,
  ) {}

  async start(): Promise<this> {
    this.before = (await Promise.all(this.urls.map((u) => scrape(u, this.tls)))).map((s) => s?.received);
    this.t0 = performance.now();
    return this;
  }

  async stop(): Promise<EtcdRequestRates> {
    const windowMs = performance.now() - this.t0;
    const after = await Promise.all(this.urls.map((u) => scrape(u, this.tls)));
    const sum = new Map<string, number>();
    after.forEach((a, i) => {
      const b = this.before[i];
      if (!a || !b) return;
      for (const [m, v] of a.received) sum.set(m, (sum.get(m) ?? 0) + v - (b.get(m) ?? 0));
    });
    const perSecond: Record<string, number> = {};
    let total = 0;
    for (const [m, v] of [...sum].sort((x, y) => y[1] - x[1])) {
      if (v <= 0) continue;
      const r = Math.round((v / windowMs) * 1000 * 10) / 10;
      perSecond[m] = r;
      total += r;
    }
    const members = after.map((a) =>
      a
        ? {
            dbMiB: Math.round(((a.gauges.etcd_mvcc_db_total_size_in_bytes ?? 0) / 2 ** 20) * 10) / 10,
            keys: a.gauges.etcd_debugging_mvcc_keys_total ?? 0,
            watchers: a.gauges.etcd_debugging_mvcc_watcher_total ?? 0,
          }
        : undefined,
    );
    return { windowMs: Math.round(windowMs), perSecond, totalPerSecond: Math.round(total * 10) / 10, members };
  }
}

/** `Range 812/s, LeaseKeepAlive 300/s, ...` */
export function fmtRates(r: EtcdRequestRates, max = 6): string {
  const e = Object.entries(r.perSecond);
  if (e.length === 0) return 'none';
  return e
    .slice(0, max)
    .map(([m, v]) => `${m} ${v >= 10 ? Math.round(v) : v}/s`)
    .join(', ');
}
