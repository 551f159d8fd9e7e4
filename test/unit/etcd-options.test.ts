/**
 * The etcd security settings: CLI flags, environment and config keys (src/cli/etcd-options.ts), and
 * the checks the etcd client makes on them before it connects (src/adapters/etcd/etcd-client.ts).
 * Certificates are real ones from scripts/gen-certs.sh (Debian openssl).
 */
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { EtcdAuthenticationFailedError, EtcdPermissionDeniedError } from 'etcd3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { asRetryable } from '../../src/adapters/etcd/deadline.js';
import { createEtcdClient, etcd3Security, etcdSecurityNotes } from '../../src/adapters/etcd/etcd-client.js';
import { AGENT_SCHEMA, toAgentConfig } from '../../src/cli/agent-config.js';
import { CONTROLLER_SCHEMA, toControllerConfig } from '../../src/cli/commands/controller.js';
import { resolveConfig } from '../../src/cli/config-schema.js';
import { ETCD_SECURITY_SCHEMA, reportEtcdSecurityOnce, resetEtcdSecurityReport, resolveEtcdSecurity, toEtcdSecurity } from '../../src/cli/etcd-options.js';
import { buildProgram } from '../../src/cli/main.js';
import { devCerts, type DevCerts } from '../../src/dev/certs.js';
import { TetherError } from '../../src/domain/errors.js';

let dir: string;
let certs: DevCerts;
const TLS_EPS = ['https://127.0.0.1:1', 'https://127.0.0.1:2'];

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'tether-etcd-options-'));
  certs = devCerts(join(dir, 'certs'));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** The error `fn` throws (fails the test when it throws nothing). */
function thrown(fn: () => unknown): TetherError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(TetherError);
    return err as TetherError;
  }
  throw new Error('expected an error');
}

describe('etcd security settings (flags, environment, config file)', () => {
  it('every etcd-using command takes --etcd-ca/--etcd-cert/--etcd-key/--etcd-user/--etcd-password-file, and none takes a password flag', () => {
    const program = buildProgram();
    const find = (path: string[]) => path.reduce((c, name) => c.commands.find((x) => x.name() === name)!, program);
    const commands = [['agent'], ['controller'], ['host', 'list'], ['host', 'hold'], ['host', 'release'], ['host', 'drain'], ['host', 'undrain'], ['host', 'fence'], ['events'], ['vm', 'create'], ['vm', 'get'], ['vm', 'list'], ['vm', 'delete']];
    for (const path of commands) {
      const longs = find(path).options.map((o) => o.long);
      for (const f of ['--etcd-endpoints', '--etcd-ca', '--etcd-cert', '--etcd-key', '--etcd-user', '--etcd-password-file']) expect(longs, `${path.join(' ')} ${f}`).toContain(f);
      expect(longs.filter((l) => /password(?!-file)/.test(l ?? '')), path.join(' ')).toEqual([]);
    }
  });

  it('agent and controller read the keys from flags, TETHER_ETCD_* and their config file', () => {
    const yaml = join(dir, 'agent.yaml');
    writeFileSync(yaml, `etcdEndpoints: https://127.0.0.1:2379\netcd-ca: ${certs.ca}\netcdCert: ${certs.clientCert}\netcdKey: ${certs.clientKey}\n`);
    const agent = toAgentConfig(resolveConfig(AGENT_SCHEMA, { etcdUser: 'host-a' }, { TETHER_ETCD_PASSWORD_FILE: '/run/secrets/p' }, yaml));
    expect(agent).toMatchObject({ etcdCa: certs.ca, etcdCert: certs.clientCert, etcdKey: certs.clientKey, etcdUser: 'host-a', etcdPasswordFile: '/run/secrets/p' });
    const pw = join(dir, 'pw');
    writeFileSync(pw, 'sesame\n', { mode: 0o600 });
    const ctl = toControllerConfig(resolveConfig(CONTROLLER_SCHEMA, { etcdEndpoints: 'https://127.0.0.1:2379', etcdPasswordFile: pw }, { TETHER_ETCD_CA: certs.ca, TETHER_ETCD_USER: 'controller' }));
    expect(ctl.etcdSecurity).toEqual({ caFile: certs.ca, username: 'controller', password: 'sesame' });
    // Unset = '' = not given.
    expect(toEtcdSecurity(resolveConfig(ETCD_SECURITY_SCHEMA, {}, {}), {})).toEqual({});
  });

  it('one-shot commands: flags win over the environment', () => {
    const s = resolveEtcdSecurity({ etcdCa: '/flag/ca.pem' }, { TETHER_ETCD_CA: '/env/ca.pem', TETHER_ETCD_CERT: '/env/c.pem', TETHER_ETCD_KEY: '/env/k.pem' });
    expect(s).toEqual({ caFile: '/flag/ca.pem', certFile: '/env/c.pem', keyFile: '/env/k.pem' });
  });

  it('the password comes from its file (first line, no newline) or TETHER_ETCD_PASSWORD, never both', () => {
    const pw = join(dir, 'pw2');
    writeFileSync(pw, 'p4ss word\r\nignored\n', { mode: 0o600 });
    expect(toEtcdSecurity({ etcdUser: 'tether', etcdPasswordFile: pw }, {})).toEqual({ username: 'tether', password: 'p4ss word' });
    expect(toEtcdSecurity({ etcdUser: 'tether' }, { TETHER_ETCD_PASSWORD: 'from-env' })).toEqual({ username: 'tether', password: 'from-env' });
    const both = thrown(() => toEtcdSecurity({ etcdUser: 'tether', etcdPasswordFile: pw }, { TETHER_ETCD_PASSWORD: 'x' }));
    expect(both.message).toMatch(/given twice/);
  });

  it('refuses a missing, unreadable or empty password file naming it, and a user without a password (and the reverse)', () => {
    const missing = join(dir, 'no-such-password');
    const e1 = thrown(() => toEtcdSecurity({ etcdUser: 'tether', etcdPasswordFile: missing }, {}));
    expect(e1.code).toBe('INVALID_ARGUMENT');
    expect(e1.message).toContain(missing);
    expect(e1.message).toMatch(/--etcd-password-file/);
    expect(e1.details).toMatchObject({ field: 'etcdPasswordFile', file: missing });
    const empty = join(dir, 'empty-password');
    writeFileSync(empty, '\n');
    expect(thrown(() => toEtcdSecurity({ etcdUser: 'tether', etcdPasswordFile: empty }, {})).message).toMatch(/is empty/);
    if (process.getuid?.() !== 0) {
      const locked = join(dir, 'locked-password');
      writeFileSync(locked, 'x');
      chmodSync(locked, 0o000);
      expect(thrown(() => toEtcdSecurity({ etcdUser: 'tether', etcdPasswordFile: locked }, {})).message).toContain(locked);
    }
    expect(thrown(() => toEtcdSecurity({ etcdUser: 'tether' }, {})).details).toMatchObject({ field: 'etcdPasswordFile' });
    expect(thrown(() => toEtcdSecurity({}, { TETHER_ETCD_PASSWORD: 'x' })).details).toMatchObject({ field: 'etcdUser' });
  });
});

describe('etcd client security checks (before any connection)', () => {
  it('loads a CA, a client certificate and its key into etcd3 credentials, and the user into auth', () => {
    const o = etcd3Security(TLS_EPS, { caFile: certs.ca, certFile: certs.clientCert, keyFile: certs.clientKey, username: 'u', password: 'p' });
    expect(o.credentials?.rootCertificate.toString()).toMatch(/BEGIN CERTIFICATE/);
    expect(o.credentials?.certChain?.toString()).toMatch(/BEGIN CERTIFICATE/);
    expect(o.credentials?.privateKey?.toString()).toMatch(/PRIVATE KEY/);
    expect(o.auth).toEqual({ username: 'u', password: 'p' });
    // https without a CA: etcd3 itself uses the system trust store.
    expect(etcd3Security(TLS_EPS, {})).toEqual({});
    createEtcdClient(TLS_EPS, { caFile: certs.ca, certFile: certs.clientCert, keyFile: certs.clientKey }).close();
  });

  it('a missing or unreadable file is named with its flag, env and config key', () => {
    const missing = join(dir, 'nope', 'ca.pem');
    const e = thrown(() => etcd3Security(TLS_EPS, { caFile: missing }));
    expect(e.code).toBe('INVALID_ARGUMENT');
    expect(e.message).toContain(missing);
    expect(e.message).toMatch(/--etcd-ca.*TETHER_ETCD_CA.*etcdCa/);
    expect(e.details).toMatchObject({ field: 'etcdCa', file: missing });
    const k = thrown(() => etcd3Security(TLS_EPS, { caFile: certs.ca, certFile: certs.clientCert, keyFile: join(dir, 'missing-key.pem') }));
    expect(k.details).toMatchObject({ field: 'etcdKey' });
    expect(k.message).toMatch(/--etcd-key/);
  });

  it('refuses a non-PEM file, a key that does not match its certificate, and half a client identity', () => {
    const junk = join(dir, 'junk.pem');
    writeFileSync(junk, 'not a certificate\n');
    expect(thrown(() => etcd3Security(TLS_EPS, { caFile: junk })).message).toMatch(/junk\.pem.*not PEM/);
    const mismatch = thrown(() => etcd3Security(TLS_EPS, { caFile: certs.ca, certFile: certs.clientCert, keyFile: certs.otherClientKey }));
    expect(mismatch.code).toBe('INVALID_ARGUMENT');
    expect(mismatch.message).toMatch(/do not load/);
    expect(thrown(() => etcd3Security(TLS_EPS, { certFile: certs.clientCert })).details).toMatchObject({ field: 'etcdKey' });
    expect(thrown(() => etcd3Security(TLS_EPS, { keyFile: certs.clientKey })).details).toMatchObject({ field: 'etcdCert' });
    expect(thrown(() => etcd3Security(TLS_EPS, { username: 'u' })).message).toMatch(/no password/);
  });

  it('refuses TLS files with plaintext endpoints and endpoints that mix https and http', () => {
    const e = thrown(() => etcd3Security(['http://127.0.0.1:2379'], { caFile: certs.ca }));
    expect(e.message).toMatch(/plaintext.*use https:\/\//);
    expect(thrown(() => etcd3Security(['https://127.0.0.1:1', 'http://127.0.0.1:2'], {})).message).toMatch(/mix https/);
  });

  it('warns about plaintext endpoints by name (and about the password crossing in clear), notes the system trust store', () => {
    const plain = etcdSecurityNotes(['http://10.0.0.5:2379', 'http://10.0.0.6:2379'], { username: 'u', password: 'p' });
    expect(plain).toHaveLength(1);
    expect(plain[0]!.level).toBe('warn');
    expect(plain[0]!.message).toMatch(/http:\/\/10\.0\.0\.5:2379, http:\/\/10\.0\.0\.6:2379 are plaintext/);
    expect(plain[0]!.message).toMatch(/password/);
    expect(etcdSecurityNotes(TLS_EPS, {})).toEqual([{ level: 'info', message: expect.stringMatching(/system trust store/) }]);
    expect(etcdSecurityNotes(TLS_EPS, { caFile: certs.ca })).toEqual([]);
  });

  it('says it once per process', () => {
    resetEtcdSecurityReport();
    const said: string[] = [];
    expect(reportEtcdSecurityOnce(['http://127.0.0.1:2379'], {}, (l, m) => said.push(`${l}: ${m}`))).toBe(true);
    expect(reportEtcdSecurityOnce(['http://127.0.0.1:2379'], {}, (l, m) => said.push(`${l}: ${m}`))).toBe(false);
    expect(said).toHaveLength(1);
    expect(said[0]).toMatch(/^warn: .*http:\/\/127\.0\.0\.1:2379/);
    resetEtcdSecurityReport();
  });

  it('etcd refusing the credentials or a key is not retried: UNAUTHENTICATED / PERMISSION_DENIED', () => {
    const auth = asRetryable('lease grant', new EtcdAuthenticationFailedError('etcdserver: authentication failed, invalid user ID or password'));
    expect(auth).toMatchObject({ code: 'UNAUTHENTICATED', retryable: false });
    const perm = asRetryable('put', new EtcdPermissionDeniedError('etcdserver: permission denied'));
    expect(perm).toMatchObject({ code: 'PERMISSION_DENIED', retryable: false });
    expect(asRetryable('get', new Error('14 UNAVAILABLE: No connection established'))).toMatchObject({ code: 'UNAVAILABLE', retryable: true });
  });
});
