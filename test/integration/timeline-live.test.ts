/**
 * `tether timeline --live` on a REAL etcd (Debian etcd-server, TLS with a client certificate, as the
 * project runs it): cluster events written under `events/` with Debian's etcdctl (hostile and
 * malformed ones among them, and markup in the free text etcd's schema allows) plus a host's GC report file become one timeline; the margin is
 * computed from the real listing; the hostile strings come out escaped.
 */
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { writeFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { GcReport } from '../../src/agent/gc/gc-report.js';
import { timelineInputFor } from '../../src/cli/commands/timeline.js';
import { LocalEtcdCluster } from '../../src/dev/etcd-cluster.js';
import type { ClusterEvent } from '../../src/domain/cluster-event.js';
import { layoutTimeline } from '../../src/timeline/layout.js';
import { renderHtml } from '../../src/timeline/render-html.js';
import { renderText } from '../../src/timeline/render-text.js';
import { removeDir, requireRealParts, testDir } from '../support/real-host.js';

const PREFIX = '/tether/';
let dir = '';
let etcd: LocalEtcdCluster | undefined;

function etcdctlPut(key: string, value: string): void {
  const tls = etcd!.clientTls();
  execFileSync('etcdctl', ['--endpoints', etcd!.endpoints().join(','), '--cacert', String(tls.caFile), '--cert', String(tls.certFile), '--key', String(tls.keyFile), '--command-timeout=5s', 'put', key, value], {
    env: { ...process.env, ETCDCTL_API: '3' },
    stdio: ['ignore', 'ignore', 'pipe'],
    timeout: 20_000,
  });
}
const eventKey = (at: number, id: string) => `${PREFIX}events/${String(at).padStart(15, '0')}-${id}`;

beforeAll(async () => {
  requireRealParts(['etcd']);
  dir = testDir('timeline-live');
  etcd = new LocalEtcdCluster({ dataDir: join(dir, 'etcd'), tag: 'test', size: 1 });
  await etcd.start();
}, 60_000);

afterAll(async () => {
  await etcd?.stop();
  if (dir) removeDir(dir);
});

describe('tether timeline --live', () => {
  it('reads the events from etcd, joins the GC report, computes the margin, escapes what is hostile', async () => {
    const now = Date.now();
    const t = (s: number) => now - 60_000 + Math.round(s * 1000);
    // What etcd's schema lets through as free text (no control characters) can still be markup.
    const hostile = 'placed <script>alert(1)</script><img src=x onerror=alert(2)>';
    const events: ClusterEvent[] = [
      { kind: 'host-detached', at: t(11.2), detail: 'lease gone', hostId: 'h1', epoch: 3, fenceDeadline: t(21.2), heldAtDetach: false },
      { kind: 'host-fenced', at: t(21.2), detail: 'fenced', hostId: 'h1', epoch: 3, by: 'controller', lostVms: ['prod/web-1', 'prod/db-1'] },
      { kind: 'vm-rescheduled', at: t(21.5), detail: hostile, vm: 'prod/web-1', fromHost: 'h1', toHost: 'h2', uid: 'u-web-2' },
    ];
    events.forEach((e, i) => etcdctlPut(eventKey(e.at, `0000000${i}`), JSON.stringify(e)));
    // Malformed records: not JSON, and JSON without a time. Neither may break the timeline.
    etcdctlPut(eventKey(t(30), 'deadbeef'), 'not json {');
    etcdctlPut(eventKey(t(31), 'deadbee0'), JSON.stringify({ kind: 'host-detached', hostId: '<b>h9</b>' }));
    // An old event, cut by --since.
    etcdctlPut(eventKey(now - 3_600_000, '0000000a'), JSON.stringify({ kind: 'controller-elected', at: now - 3_600_000, detail: 'old', controllerId: 'c0' }));

    const report: GcReport = {
      reason: 'watchdog',
      startedAt: t(13),
      detectedAfterAckMs: 3000,
      fenceStartAfterAckMs: 8000,
      stops: [
        { uid: 'u1', vm: 'prod/web-1', method: 'graceful', stoppedAfterMs: 1100, tookMs: 1100 },
        { uid: 'u2', vm: 'prod/db-1', method: 'forced-quit', stoppedAfterMs: 5000, tookMs: 5 },
      ],
      removed: [],
      cleanupFailures: [],
      cleanAfterMs: 5500,
    };
    const reportFile = join(dir, 'h1-report.json');
    writeFileSync(reportFile, JSON.stringify({ hostId: 'h1', report }));
    const tls = etcd!.clientTls();
    const input = await timelineInputFor(
      { live: true, etcdEndpoints: etcd!.endpoints().join(','), etcdPrefix: PREFIX, etcdCa: tls.caFile, etcdCert: tls.certFile, etcdKey: tls.keyFile, hostReport: [reportFile], since: '10m', limit: '1000' },
      now,
    );
    expect(input.source).toBe('live');
    expect(input.cluster.map((e) => e.kind)).toEqual(['host-detached', 'host-fenced', 'vm-rescheduled']);
    expect(input.hosts.map((h) => h.hostId)).toEqual(['h1']);
    const l = layoutTimeline(input);
    expect(l.margins).toHaveLength(1);
    expect(l.margins[0]).toMatchObject({ hostId: 'h1', epoch: 3, marginMs: 3200, violation: false });
    const text = renderText(input);
    expect(text).toContain('margin +3.200s  ok');
    expect(text).toContain('vm prod/web-1 rescheduled from h1 to h2');
    const html = renderHtml(input);
    expect(html).not.toContain('<script>');
    expect(html).not.toMatch(/<[^>]*\sonerror=/);
    expect(html).toContain('placed &lt;script&gt;alert(1)&lt;/script&gt;&lt;img src=x onerror=alert(2)&gt;');
  }, 120_000);
});
