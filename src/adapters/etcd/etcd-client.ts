import { readFileSync } from 'node:fs';
import { createSecureContext } from 'node:tls';
import { ExponentialBackoff, noop } from 'cockatiel';
import { Etcd3, type IOptions } from 'etcd3';
import { TetherError, messageOf } from '../../domain/errors.js';
import { ETCD_CLIENT_MAX_RECV_BYTES } from '../../domain/kv-read-limits.js';

/**
 * How Tether authenticates to etcd and verifies it: TLS files (PEM) and etcd's user/password auth.
 *
 * Invariants: `certFile` and `keyFile` come together; `username` and `password` come together; any
 * TLS file requires `https://` endpoints. Without `caFile`, an `https://` endpoint is verified
 * against the system trust store (Node's bundled roots). The password is a value here, never a
 * path: the CLI reads it from a file or the environment (see src/cli/etcd-options.ts) so that it
 * never appears on a command line.
 */
export interface EtcdSecurity {
  /** PEM bundle of the CA(s) that signed etcd's server certificate (`--etcd-ca`). */
  readonly caFile?: string;
  /** PEM client certificate for etcd's `--client-cert-auth` (`--etcd-cert`). */
  readonly certFile?: string;
  /** PEM private key of {@link certFile} (`--etcd-key`). */
  readonly keyFile?: string;
  /** etcd user for etcd's own auth (`--etcd-user`). */
  readonly username?: string;
  /** That user's password (from `--etcd-password-file` or `TETHER_ETCD_PASSWORD`). */
  readonly password?: string;
}

/** Which setting a file comes from, as a user would write it (flag / env / config key). */
const FIELDS = {
  caFile: { key: 'etcdCa', flag: '--etcd-ca', env: 'TETHER_ETCD_CA', what: 'etcd CA file' },
  certFile: { key: 'etcdCert', flag: '--etcd-cert', env: 'TETHER_ETCD_CERT', what: 'etcd client certificate' },
  keyFile: { key: 'etcdKey', flag: '--etcd-key', env: 'TETHER_ETCD_KEY', what: 'etcd client key' },
} as const;

function fieldError(field: keyof typeof FIELDS | 'username' | 'password' | 'endpoints', message: string, cause?: unknown, file?: string): TetherError {
  return new TetherError('INVALID_ARGUMENT', message, {
    ...(cause === undefined ? {} : { cause }),
    details: { field: field in FIELDS ? FIELDS[field as keyof typeof FIELDS].key : field === 'endpoints' ? 'etcdEndpoints' : field === 'username' ? 'etcdUser' : 'etcdPassword', ...(file ? { file } : {}) },
  });
}

/** Reads one PEM file; the error names the file and the setting it came from. */
function readPem(field: keyof typeof FIELDS, path: string, marker: RegExp): Buffer {
  const f = FIELDS[field];
  let data: Buffer;
  try {
    data = readFileSync(path);
  } catch (err) {
    throw fieldError(field, `cannot read the ${f.what} ${path} (${f.flag}, ${f.env}, config key ${f.key}): ${messageOf(err)}`, err, path);
  }
  if (!marker.test(data.toString('latin1'))) {
    throw fieldError(field, `the ${f.what} ${path} (${f.flag}) is not PEM: no ${marker.source.replace(/\\/g, '')} block found`, undefined, path);
  }
  return data;
}

/** The endpoints' scheme: all `https://`, all `http://` (a bare `host:port` counts as http). */
export function endpointScheme(endpoints: readonly string[]): 'http' | 'https' {
  const https = endpoints.filter((e) => /^https:\/\//i.test(e));
  if (https.length > 0 && https.length < endpoints.length) {
    throw fieldError('endpoints', `etcd endpoints mix https:// and plaintext (${endpoints.join(', ')}): use https:// for every member`);
  }
  return https.length > 0 ? 'https' : 'http';
}

/** The plaintext `http://` (or scheme-less) endpoints among `endpoints`. */
export function plaintextEndpoints(endpoints: readonly string[]): string[] {
  return endpoints.filter((e) => !/^https:\/\//i.test(e));
}

/**
 * The etcd3 options that carry `security`: files read now, so a missing, unreadable or non-PEM file
 * (or a key that does not match its certificate) fails at start with an error naming the file and
 * its setting, not later as an opaque handshake failure.
 *
 * @throws TetherError `INVALID_ARGUMENT` (details.field = the config key) on any of those, on a
 *   certificate without its key (or the reverse), a user without a password (or the reverse), and
 *   TLS files given with plaintext `http://` endpoints.
 */
export function etcd3Security(endpoints: readonly string[], security: EtcdSecurity = {}): Pick<IOptions, 'credentials' | 'auth'> {
  const scheme = endpoints.length > 0 ? endpointScheme(endpoints) : 'https';
  const { caFile, certFile, keyFile, username, password } = security;
  if ((certFile === undefined) !== (keyFile === undefined)) {
    const missing = certFile === undefined ? 'certFile' : 'keyFile';
    throw fieldError(missing, `an etcd client certificate needs its key and the reverse: ${FIELDS[missing].flag} is missing (${FIELDS[missing].env})`);
  }
  if ((username === undefined) !== (password === undefined)) {
    throw username === undefined
      ? fieldError('username', 'an etcd password was given without --etcd-user (TETHER_ETCD_USER)')
      : fieldError('password', `etcd user ${JSON.stringify(username)} has no password: give --etcd-password-file (TETHER_ETCD_PASSWORD_FILE) or TETHER_ETCD_PASSWORD`);
  }
  if (username === '') throw fieldError('username', 'the etcd user name is empty');
  const tlsFiles = caFile !== undefined || certFile !== undefined;
  if (tlsFiles && scheme === 'http') {
    throw fieldError('endpoints', `TLS files were given (${caFile !== undefined ? '--etcd-ca' : '--etcd-cert'}) but the etcd endpoints are plaintext (${endpoints.join(', ')}): use https:// endpoints`);
  }
  const out: { credentials?: IOptions['credentials']; auth?: IOptions['auth'] } = {};
  if (tlsFiles) {
    const ca = caFile !== undefined ? readPem('caFile', caFile, /-----BEGIN CERTIFICATE-----/) : undefined;
    const cert = certFile !== undefined ? readPem('certFile', certFile, /-----BEGIN CERTIFICATE-----/) : undefined;
    const key = keyFile !== undefined ? readPem('keyFile', keyFile, /-----BEGIN [A-Z ]*PRIVATE KEY-----/) : undefined;
    try {
      createSecureContext({ ...(ca ? { ca } : {}), ...(cert ? { cert } : {}), ...(key ? { key } : {}) });
    } catch (err) {
      const field = /key/i.test(messageOf(err)) && key ? 'keyFile' : ca && !cert ? 'caFile' : 'certFile';
      throw fieldError(field, `the etcd TLS files do not load (${[caFile, certFile, keyFile].filter(Boolean).join(', ')}): ${messageOf(err)}`, err, security[field]);
    }
    // etcd3 types rootCertificate as required; grpc-js takes null as "the system trust store".
    out.credentials = { rootCertificate: ca ?? (null as unknown as Buffer), ...(key ? { privateKey: key } : {}), ...(cert ? { certChain: cert } : {}) };
  }
  if (username !== undefined && password !== undefined) out.auth = { username, password };
  return out;
}

/**
 * An etcd3 client with etcd3's own retry and circuit-breaker policies switched off: Tether owns
 * every deadline and every retry. (With the defaults, one missed deadline is retried at once and
 * opens the host's circuit breaker for 5 s — every call then fails fast even after the network is
 * back; measured in test/integration/tcp-proxy.test.ts.) A broken watch stream reconnects after at
 * most 1 s (etcd3's default backoff grows to 30 s: after an etcd member died, the controller then
 * went more than 10 s without seeing a lost lease).
 *
 * `security` adds TLS (CA, client certificate) and etcd user/password auth; see {@link etcd3Security}
 * for what is checked at construction. `https://` endpoints without a CA use the system trust store.
 * `maxRecvBytes` is the gRPC receive limit (default {@link ETCD_CLIENT_MAX_RECV_BYTES}, 64 MiB; a
 * reply over it fails RESOURCE_EXHAUSTED, which the pager answers with smaller pages).
 */
const WATCH_BACKOFF = new ExponentialBackoff({ initialDelay: 100, maxDelay: 1000 }).next();

export function createEtcdClient(endpoints: readonly string[], security: EtcdSecurity = {}, maxRecvBytes: number = ETCD_CLIENT_MAX_RECV_BYTES): Etcd3 {
  if (endpoints.length === 0) throw new TetherError('INVALID_ARGUMENT', 'no etcd endpoints given (--etcd-endpoints)');
  return new Etcd3({
    hosts: [...endpoints],
    dialTimeout: 1000,
    ...etcd3Security(endpoints, security),
    faultHandling: { host: () => noop, global: noop, watchBackoff: WATCH_BACKOFF },
    // Deliberate, not grpc-js's 4 MiB default: see ETCD_CLIENT_MAX_RECV_BYTES (src/domain/kv-read-limits.ts).
    grpcOptions: { 'grpc.max_receive_message_length': maxRecvBytes },
  });
}

/**
 * What a process should say at start about how it reaches etcd: a warning for plaintext endpoints
 * (naming them; with a password, that it crosses the network in clear) and a note when `https://`
 * endpoints are verified against the system trust store. Empty when the connection is TLS with a CA.
 */
export function etcdSecurityNotes(endpoints: readonly string[], security: EtcdSecurity = {}): { level: 'warn' | 'info'; message: string }[] {
  const notes: { level: 'warn' | 'info'; message: string }[] = [];
  const plain = plaintextEndpoints(endpoints);
  if (plain.length > 0) {
    notes.push({
      level: 'warn',
      message:
        `etcd endpoint(s) ${plain.join(', ')} are plaintext http://: anyone on the path can read and forge cluster state (fences, VM records)` +
        `${security.password !== undefined ? ' and read the etcd password' : ''}; use https:// with --etcd-ca, --etcd-cert and --etcd-key`,
    });
  } else if (endpoints.length > 0 && security.caFile === undefined) {
    notes.push({ level: 'info', message: `etcd endpoints ${endpoints.join(', ')} are verified against the system trust store (no --etcd-ca given)` });
  }
  return notes;
}
