/**
 * Attacks on the etcd connection, against a REAL etcd 3.4 (Debian etcd-server) run the way the dev
 * cluster and the tests run it: TLS, `--client-cert-auth`, peer mutual TLS, certificates from
 * scripts/gen-certs.sh. Each refused attempt must also leave nothing behind (its key is absent when
 * read with the right credentials).
 *
 * Then etcd's own user/password auth (root, `auth enable`) with least-privilege roles: a controller
 * user limited to the `/tether/` prefix and an agent user limited to its own `hosts/<id>/` keys and
 * `vms/`; a real `tether agent` attaches with its agent user, its password read from a 0600 file
 * (never on its command line).
 */
import { execFileSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { EtcdPermissionDeniedError, type Etcd3 } from 'etcd3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createEtcdClient, type EtcdSecurity } from '../../src/adapters/etcd/etcd-client.js';
import { EtcdControllerStore } from '../../src/adapters/etcd/etcd-controller-store.js';
import { LocalEtcdCluster } from '../../src/dev/etcd-cluster.js';
import { FaultProxyGroup } from '../../src/dev/tcp-proxy.js';
import { expectCode } from '../support/expect-code.js';
import { AgentProcess, killHostLeftovers, processesWith, removeDir, requireRealParts, testDir, testHostId, until } from '../support/real-host.js';

const TIMINGS = ['--ttl', '3s', '--heartbeat-interval', '1s', '--detach-after', '2s', '--watchdog-timeout', '6s', '--stop-grace', '2s', '--kill-timeout', '2s', '--fence-window', '8s'];
const PREFIX = '/tether/';
const ROOT_PASSWORD = 'root-pw-for-this-test-only';
const CTL_USER = 'tether-controller';
const CTL_PASSWORD = 'controller-pw';
const hostId = testHostId('secetcd');
const AGENT_USER = `tether-agent-${hostId}`;
const AGENT_PASSWORD = 'agent-pw-never-on-argv';

let dir = '';
let etcd: LocalEtcdCluster;
let good: EtcdControllerStore;
let agent: AgentProcess | undefined;
let authOn = false;

const deadline = (ms: number) => ({ deadline: new Date(Date.now() + ms) });

/** `etcdctl` over TLS with the cluster's client certificate (and root's password once auth is on, via the environment). */
function etcdctl(...args: string[]): string {
  const c = etcd.certs!;
  return execFileSync('timeout', ['10', 'etcdctl', ...args], {
    encoding: 'utf8',
    env: {
      ...process.env,
      ETCDCTL_API: '3',
      ETCDCTL_ENDPOINTS: etcd.endpoints().join(','),
      ETCDCTL_CACERT: c.ca,
      ETCDCTL_CERT: c.clientCert,
      ETCDCTL_KEY: c.clientKey,
      ...(authOn ? { ETCDCTL_USER: `root:${ROOT_PASSWORD}` } : {}),
    },
  });
}

/** A put through a fresh client: resolves 'ok' or rejects with what the client saw. */
async function tryPut(endpoints: readonly string[], security: EtcdSecurity, key: string): Promise<'ok'> {
  const client = createEtcdClient(endpoints, security);
  try {
    await client.put(key).value('attacker').options(deadline(3000)).exec();
    return 'ok';
  } finally {
    client.close();
  }
}

beforeAll(async () => {
  requireRealParts(['root', 'etcd', 'build']);
  dir = testDir('sec-etcd');
  etcd = new LocalEtcdCluster({ dataDir: join(dir, 'etcd'), tag: 'test', size: 1 });
  await etcd.start();
  good = new EtcdControllerStore({ endpoints: etcd.endpoints(), security: etcd.clientTls(), prefix: PREFIX });
}, 60_000);

afterAll(async () => {
  await agent?.kill();
  killHostLeftovers(hostId);
  await good?.close();
  await etcd?.stop();
  if (dir) removeDir(dir);
  await until('guardians gone', () => [...processesWith('guardian')].every(([, argv]) => !argv.some((a) => a.startsWith(dir))), 10_000, 100);
});

describe('etcd with TLS and client-certificate auth (real etcd)', () => {
  it('the right CA and client certificate read and write, directly and through the fault proxy (TLS passes through; 127.0.0.1 verifies)', async () => {
    await good.client.put(`${PREFIX}sec/direct`).value('1').options(deadline(3000)).exec();
    expect(await good.client.get(`${PREFIX}sec/direct`).options(deadline(3000)).string()).toBe('1');
    const proxies = await FaultProxyGroup.start(etcd.endpoints());
    try {
      expect(proxies.endpoints()[0]).toMatch(/^https:\/\/127\.0\.0\.1:/);
      expect(await tryPut(proxies.endpoints(), etcd.clientTls(), `${PREFIX}sec/proxied`)).toBe('ok');
    } finally {
      await proxies.close();
    }
    expect(await good.client.get(`${PREFIX}sec/proxied`).options(deadline(3000)).string()).toBe('attacker');
    expect(etcd.endpoints()[0]).toMatch(/^https:/);
  });

  it('refuses, and writes nothing for: no client certificate, another CA’s client certificate, plaintext to the TLS port, a client that does not trust our CA', async () => {
    const c = etcd.certs!;
    const tlsPort = new URL(etcd.endpoints()[0]!).port;
    const attacks: { name: string; endpoints: string[]; security: EtcdSecurity }[] = [
      { name: 'no-client-cert', endpoints: etcd.endpoints(), security: { caFile: c.ca } },
      { name: 'other-ca-client-cert', endpoints: etcd.endpoints(), security: { caFile: c.ca, certFile: c.otherClientCert, keyFile: c.otherClientKey } },
      { name: 'plaintext', endpoints: [`http://127.0.0.1:${tlsPort}`], security: {} },
      // Right client certificate, but the server is checked against the system store: our private CA is not in it.
      { name: 'server-not-trusted', endpoints: etcd.endpoints(), security: { certFile: c.clientCert, keyFile: c.clientKey } },
    ];
    for (const a of attacks) {
      const err = await tryPut(a.endpoints, a.security, `${PREFIX}sec/attack-${a.name}`).then(
        () => undefined,
        (e: unknown) => e as Error,
      );
      console.log(`[security-etcd] ${a.name}: refused: ${err ? err.message.split('\n')[0] : 'NOT REFUSED'}`);
      expect(err, a.name).toBeInstanceOf(Error);
    }
    const left = await good.client.getAll().prefix(`${PREFIX}sec/attack-`).options(deadline(3000)).keys();
    expect(left).toEqual([]);
    // The member saw and rejected the handshakes (not a timeout on our side).
    expect(readFileSync(etcd.logFile(0), 'utf8')).toMatch(/rejected connection/);
  }, 60_000);
});

describe('etcd user/password auth with least-privilege roles (real etcd, real agent)', () => {
  it('a wrong password is refused (UNAUTHENTICATED, not retried), the right one works, and the user cannot leave its prefix', async () => {
    etcdctl('user', 'add', `root:${ROOT_PASSWORD}`);
    etcdctl('user', 'grant-role', 'root', 'root');
    // Controller: the whole Tether prefix, nothing else.
    etcdctl('role', 'add', 'tether-controller');
    etcdctl('role', 'grant-permission', '--prefix=true', 'tether-controller', 'readwrite', PREFIX);
    etcdctl('user', 'add', `${CTL_USER}:${CTL_PASSWORD}`);
    etcdctl('user', 'grant-role', CTL_USER, 'tether-controller');
    // Agent: its own hosts/<id>/ keys, and vms/ (placements to read, status to write).
    etcdctl('role', 'add', AGENT_USER);
    etcdctl('role', 'grant-permission', '--prefix=true', AGENT_USER, 'readwrite', `${PREFIX}hosts/${hostId}/`);
    etcdctl('role', 'grant-permission', '--prefix=true', AGENT_USER, 'readwrite', `${PREFIX}vms/`);
    etcdctl('user', 'add', `${AGENT_USER}:${AGENT_PASSWORD}`);
    etcdctl('user', 'grant-role', AGENT_USER, AGENT_USER);
    etcdctl('auth', 'enable');
    authOn = true;

    const tls = etcd.clientTls();
    const wrong = new EtcdControllerStore({ endpoints: etcd.endpoints(), security: { ...tls, username: CTL_USER, password: 'not-the-password' }, prefix: PREFIX });
    try {
      const err = await expectCode(wrong.listHosts(3000), 'UNAUTHENTICATED');
      expect(err.retryable).toBe(false);
    } finally {
      await wrong.close();
    }
    // A valid certificate alone is not enough once auth is on: its CN ("tether") is no etcd user.
    await expectCode(good.listHosts(3000), 'PERMISSION_DENIED');

    const ctl = new EtcdControllerStore({ endpoints: etcd.endpoints(), security: { ...tls, username: CTL_USER, password: CTL_PASSWORD }, prefix: PREFIX });
    try {
      await ctl.listHosts(3000);
      await ctl.client.put(`${PREFIX}sec/ctl`).value('1').options(deadline(3000)).exec();
      await expect(ctl.client.put('/elsewhere/x').value('1').options(deadline(3000)).exec()).rejects.toBeInstanceOf(EtcdPermissionDeniedError);
    } finally {
      await ctl.close();
    }
  }, 60_000);

  it('a real agent attaches with its own least-privilege user (password from a 0600 file, not on argv); that user cannot touch another host', async () => {
    const pwFile = join(dir, 'agent-etcd-password');
    writeFileSync(pwFile, `${AGENT_PASSWORD}\n`, { mode: 0o600 });
    agent = new AgentProcess(hostId, join(dir, 'agent'), [...etcd.agentArgs(), '--etcd-user', AGENT_USER, '--etcd-password-file', pwFile, '--lock-dir', join(dir, 'locks'), '--accel', 'tcg', ...TIMINGS]);
    await agent.spawn();
    const ctl = new EtcdControllerStore({ endpoints: etcd.endpoints(), security: { ...etcd.clientTls(), username: CTL_USER, password: CTL_PASSWORD }, prefix: PREFIX });
    try {
      await until(
        'agent attached',
        async () => {
          if (!agent!.running) throw new Error(`agent exited: ${readFileSync(agent!.log, 'utf8').slice(-3000)}`);
          const snap = await ctl.listHosts(3000).catch(() => undefined);
          const h = snap?.hosts.find((x) => x.hostId === hostId);
          return h?.alive !== undefined && h.record?.state === 'attached';
        },
        30_000,
        200,
      );
      const argv = readFileSync(`/proc/${agent.proc!.pid}/cmdline`, 'utf8');
      expect(argv).toContain(pwFile);
      expect(argv).not.toContain(AGENT_PASSWORD);
      expect(readFileSync(agent.log, 'utf8')).not.toContain(AGENT_PASSWORD);

      const asAgent: Etcd3 = createEtcdClient(etcd.endpoints(), { ...etcd.clientTls(), username: AGENT_USER, password: AGENT_PASSWORD });
      try {
        await expect(asAgent.put(`${PREFIX}hosts/someone-else/record`).value('{}').options(deadline(3000)).exec()).rejects.toBeInstanceOf(EtcdPermissionDeniedError);
        await expect(asAgent.get(`${PREFIX}controller/status`).options(deadline(3000)).string()).rejects.toBeInstanceOf(EtcdPermissionDeniedError);
        // Still exposed (docs/security.md, "## etcd"): etcd roles are by prefix, so an agent may write any vms/ record.
        await asAgent.put(`${PREFIX}vms/sec/not-mine`).value('{}').options(deadline(3000)).exec();
        await asAgent.delete().key(`${PREFIX}vms/sec/not-mine`).options(deadline(3000)).exec();
      } finally {
        asAgent.close();
      }
    } finally {
      await ctl.close();
    }
  }, 60_000);
});
