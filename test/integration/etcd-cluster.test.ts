/**
 * LocalEtcdCluster against the real Debian etcd 3.4. Without the `etcd` binary this file FAILS (it
 * never skips) with a message naming scripts/install-system.sh: the agent's fencing tests rely on it.
 *
 * One 3-member cluster is shared by the file (members are killed, restarted and paused in order).
 * afterAll stops it and asserts that no process carries its mark and its data dir is gone.
 */
import { createServer, type Server } from 'node:net';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { performance } from 'node:perf_hooks';
import { noop } from 'cockatiel';
import { Etcd3 } from 'etcd3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { etcd3Security, type EtcdSecurity } from '../../src/adapters/etcd/etcd-client.js';
import { TetherError } from '../../src/domain/errors.js';
import { findEtcdBinary, findProcessesByMark, LocalEtcdCluster } from '../../src/dev/etcd-cluster.js';

/** A deadline `ms` from now, in the form grpc-js takes (wall-clock ms since the epoch). */
function deadline(ms: number): { deadline: number } {
  return { deadline: Date.now() + ms };
}

/**
 * An etcd3 client without etcd3's retry and circuit breaker: a call that misses its deadline fails
 * once, visibly, and does not make the next calls fail fast (see tcp-proxy.test.ts).
 */
function plainClient(hosts: string[], security: EtcdSecurity): Etcd3 {
  return new Etcd3({ hosts, ...etcd3Security(hosts, security), faultHandling: { host: () => noop, global: noop } });
}

/** Retries `fn` (each try bounded by its own deadline) until it succeeds or `timeoutMs` passes. */
async function eventually<T>(fn: () => Promise<T>, timeoutMs: number): Promise<T> {
  const end = performance.now() + timeoutMs;
  for (;;) {
    try {
      return await fn();
    } catch (err) {
      if (performance.now() > end) throw err;
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}

describe('LocalEtcdCluster (real etcd, 3 members)', () => {
  let dataDir: string;
  let cluster: LocalEtcdCluster | undefined;
  let client: Etcd3 | undefined;
  let killed: number | undefined;

  beforeAll(async () => {
    findEtcdBinary(); // throws, naming scripts/install-system.sh, when etcd is missing
    dataDir = mkdtempSync('/tmp/tether-test-etcd-');
    cluster = new LocalEtcdCluster({ dataDir, tag: 'test' });
    const t0 = performance.now();
    await cluster.start();
    console.log(`[etcd-cluster] 3 members healthy in ${Math.round(performance.now() - t0)} ms (${cluster.endpoints().join(' ')})`);
    client = plainClient(cluster.endpoints(), cluster.clientTls());
  });

  afterAll(async () => {
    client?.close();
    if (cluster === undefined) {
      if (dataDir !== undefined) rmSync(dataDir, { recursive: true, force: true });
      return;
    }
    const t0 = performance.now();
    await cluster.stop();
    console.log(`[etcd-cluster] stopped in ${Math.round(performance.now() - t0)} ms`);
    expect(findProcessesByMark(cluster.mark)).toEqual([]);
    expect(findProcessesByMark(cluster.clusterId)).toEqual([]);
    expect(existsSync(dataDir)).toBe(false);
  });

  it('runs 3 members on distinct free loopback ports, recognisable by their command line', async () => {
    const c = cluster!;
    const ports = c.endpoints().map((e) => Number(new URL(e).port));
    expect(ports).toHaveLength(3);
    expect(new Set(ports).size).toBe(3);
    for (const e of c.endpoints()) expect(e).toMatch(/^https:\/\/127\.0\.0\.1:\d+$/);
    expect(c.mark).toMatch(/^tether:test-[0-9a-f]{8}$/);
    for (let i = 0; i < 3; i++) {
      const cmdline = readFileSync(`/proc/${c.pid(i)}/cmdline`, 'utf8').split('\0');
      expect(cmdline).toContain(c.mark);
      expect(cmdline).toContain('--client-cert-auth'); // TLS with client certificates by default
      expect(cmdline).toContain('--peer-client-cert-auth');
      expect(cmdline.join(' ')).toContain(`${dataDir}/tether-etcd-${c.clusterId}-m${i}`);
    }
    expect(findProcessesByMark(c.mark).sort()).toEqual([0, 1, 2].map((i) => c.pid(i)).sort());
    expect(await c.leaderIndex()).toBeTypeOf('number');
  });

  it('serves put and get through the etcd3 client', async () => {
    await client!.put('tether/test/a').value('1').options(deadline(2_000));
    expect(await client!.get('tether/test/a').options(deadline(2_000)).string()).toBe('1');
  });

  it('elects a new leader after the leader is SIGKILLed, and keeps serving writes', async () => {
    const c = cluster!;
    const old = await c.waitForLeader(5_000);
    const t0 = performance.now();
    await c.kill(old);
    killed = old;
    const next = await c.waitForLeader(10_000);
    const failoverMs = Math.round(performance.now() - t0);
    console.log(`[etcd-cluster] leader m${old} killed: m${next} leads after ${failoverMs} ms`);
    expect(next).not.toBe(old);
    expect(c.isRunning(old)).toBe(false);
    expect(failoverMs).toBeLessThan(10_000);
    // The client still lists the dead member: each try has its own short deadline.
    await eventually(() => client!.put('tether/test/b').value('written-while-down').options(deadline(1_000)).exec(), 10_000);
  });

  it('restarts the killed member with its data dir; it rejoins and catches up', async () => {
    const c = cluster!;
    const i = killed!;
    const t0 = performance.now();
    await c.restart(i);
    console.log(`[etcd-cluster] m${i} rejoined in ${Math.round(performance.now() - t0)} ms`);
    expect(c.isRunning(i)).toBe(true);
    const only = plainClient([c.clientUrl(i)], c.clientTls());
    try {
      // A serializable read is answered from the member's own store: it has the write it missed.
      const v = await eventually(async () => {
        const got = await only.get('tether/test/b').serializable(true).options(deadline(1_000)).string();
        if (got === null) throw new Error('not caught up yet');
        return got;
      }, 10_000);
      expect(v).toBe('written-while-down');
    } finally {
      only.close();
    }
    await c.waitForHealthy(10_000);
  });

  it('pauses a follower (SIGSTOP): it stops answering, the majority still commits; resume brings it back', async () => {
    const c = cluster!;
    const leader = await c.waitForLeader(5_000);
    const follower = [0, 1, 2].find((i) => i !== leader)!;
    c.pause(follower);
    try {
      expect(c.isPaused(follower)).toBe(true);
      expect(c.isRunning(follower)).toBe(true);
      await expect(c.memberStatus(follower, 300)).rejects.toThrow(/no answer within 300 ms/);
      const leaderOnly = plainClient([c.clientUrl(leader)], c.clientTls());
      try {
        await leaderOnly.put('tether/test/c').value('2').options(deadline(3_000));
      } finally {
        leaderOnly.close();
      }
    } finally {
      c.resume(follower);
    }
    expect(c.isPaused(follower)).toBe(false);
    await c.waitForHealthy(10_000);
    expect((await c.memberStatus(follower)).leaderId).not.toBe('0');
  });
});

describe('LocalEtcdCluster start failure', () => {
  it('fails start() with the member log tail when a port is taken, and leaves nothing behind', async () => {
    findEtcdBinary();
    const blocker: Server = createServer((s) => s.destroy()); // holds the port, answers nothing
    await new Promise<void>((resolve) => blocker.listen({ host: '127.0.0.1', port: 0 }, resolve));
    const taken = (blocker.address() as { port: number }).port;
    const dataDir = mkdtempSync('/tmp/tether-test-etcd-fail-');
    const c = new LocalEtcdCluster({ dataDir, tag: 'test', size: 1, clientBasePort: taken, peerBasePort: taken === 65_535 ? 1 : taken + 1, startTimeoutMs: 10_000 });
    try {
      const err = await c.start().then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(TetherError);
      expect((err as TetherError).message).toMatch(/exited[\s\S]*address already in use/);
      expect(findProcessesByMark(c.mark)).toEqual([]);
      expect(existsSync(dataDir)).toBe(false);
    } finally {
      await c.stop();
      await new Promise<void>((resolve) => blocker.close(() => resolve()));
      rmSync(dataDir, { recursive: true, force: true });
    }
  });
});
