/**
 * The agent's API security settings (Flintlock's flag names and rules), loaded once at start and
 * shared by every listener: the gRPC API, the admin HTTP server and the metrics listener.
 *
 * Rules (checked before anything listens; each error names the setting):
 *  - TLS is on when `tlsCert` and `tlsKey` are set (both or neither). Without them the agent refuses
 *    to start unless `insecure` is set, as Flintlock does; `insecure` with a certificate is refused.
 *  - `tlsClientValidate` requires every client to present a certificate signed by `tlsClientCa`
 *    (mutual TLS); it needs `tlsClientCa` and TLS. `tlsClientCa` alone is ignored (as in Flintlock),
 *    with a warning.
 *  - The token comes from `basicAuthTokenFile` (preferred: not in the process list) or
 *    `basicAuthToken` (flag, environment `TETHER_BASIC_AUTH_TOKEN` or config file), never both.
 *  - See {@link checkListenerSecurity} for what each listener may bind.
 *
 * Who is authenticated (used for metadata redaction): a caller whose token matched, or, with no
 * token configured, a caller whose client certificate TLS verified (`tlsClientValidate`). With
 * neither configured nobody is authenticated: every call is anonymous.
 */
import { createSecureContext } from 'node:tls';
import { readFileSync, statSync } from 'node:fs';
import { InvalidArgumentError } from '../../domain/errors.js';
import { formatListenAddress, type ListenAddress } from '../listen-address.js';
import { checkToken, readTokenFile } from './token.js';

/** Security settings as configured (the agent's config keys of the same names). */
export interface ApiSecuritySettings {
  readonly tlsCert: string;
  readonly tlsKey: string;
  readonly tlsClientCa: string;
  readonly tlsClientValidate: boolean;
  readonly insecure: boolean;
  /** The token itself ('' = none). Prefer {@link basicAuthTokenFile}. */
  readonly basicAuthToken: string;
  /** A file holding the token ('' = none). */
  readonly basicAuthTokenFile: string;
}

/** TLS material every listener uses. */
export interface ApiTls {
  readonly cert: Buffer;
  readonly key: Buffer;
  /** CA that signs client certificates; set when {@link requireClientCert}. */
  readonly clientCa?: Buffer;
  /** Mutual TLS: a client without a certificate signed by {@link clientCa} is refused at the handshake. */
  readonly requireClientCert: boolean;
}

/** Loaded security: what the servers enforce. */
export interface ApiSecurity {
  /** Absent: plaintext (only with `insecure`, only on loopback or a unix socket). */
  readonly tls?: ApiTls;
  /** Absent: no token is asked for. */
  readonly token?: string;
}

/** Minimum TLS version of every listener (Flintlock's server uses TLS 1.3 as its minimum too). */
export const MIN_TLS_VERSION = 'TLSv1.3';

function readPem(path: string, key: string, what: string, warn: (m: string) => void, secret = false): Buffer {
  try {
    if (secret) {
      const mode = statSync(path).mode;
      if ((mode & 0o077) !== 0) warn(`${key}: ${path} is readable by other users or the group (mode ${(mode & 0o777).toString(8)}); chmod 600 ${path}`);
    }
    return readFileSync(path);
  } catch (cause) {
    throw new InvalidArgumentError(key, `cannot read the ${what} ${path}: ${(cause as Error).message}`, { cause });
  }
}

/**
 * Checks the settings and reads the files they name. `warn` receives one line per weakness that is
 * allowed but worth knowing (token on the command line is decided by the caller, see the agent).
 * Throws INVALID_ARGUMENT naming the setting.
 */
export function loadApiSecurity(s: ApiSecuritySettings, warn: (m: string) => void): ApiSecurity {
  if (s.insecure && (s.tlsCert || s.tlsKey)) throw new InvalidArgumentError('insecure', 'cannot be combined with tlsCert/tlsKey: choose TLS or plaintext');
  if (s.insecure && s.tlsClientValidate) throw new InvalidArgumentError('tlsClientValidate', 'needs TLS; it cannot be combined with insecure');
  if (!s.insecure && !s.tlsCert && !s.tlsKey) {
    throw new InvalidArgumentError(
      'tlsCert',
      'no TLS certificate configured: set --tls-cert and --tls-key (see docs/security.md), or --insecure to serve plaintext on loopback or a unix socket only',
    );
  }
  if (s.tlsCert && !s.tlsKey) throw new InvalidArgumentError('tlsKey', 'required with tlsCert');
  if (s.tlsKey && !s.tlsCert) throw new InvalidArgumentError('tlsCert', 'required with tlsKey');
  if (s.tlsClientValidate && !s.tlsClientCa) throw new InvalidArgumentError('tlsClientCa', 'required with tlsClientValidate: the CA that signs client certificates');
  if (s.tlsClientCa && !s.tlsClientValidate) warn('tlsClientCa is set without tlsClientValidate: client certificates are not asked for (as in Flintlock)');
  if (s.basicAuthToken && s.basicAuthTokenFile) throw new InvalidArgumentError('basicAuthTokenFile', 'set basicAuthToken or basicAuthTokenFile, not both');

  let tls: ApiTls | undefined;
  if (s.tlsCert) {
    const cert = readPem(s.tlsCert, 'tlsCert', 'certificate', warn);
    const key = readPem(s.tlsKey, 'tlsKey', 'private key', warn, true);
    const clientCa = s.tlsClientValidate ? readPem(s.tlsClientCa, 'tlsClientCa', 'client CA', warn) : undefined;
    try {
      createSecureContext({ cert, key, ...(clientCa ? { ca: clientCa } : {}) });
    } catch (cause) {
      throw new InvalidArgumentError('tlsCert', `${s.tlsCert} with ${s.tlsKey}${clientCa ? ` and ${s.tlsClientCa}` : ''}: ${(cause as Error).message}`, { cause });
    }
    tls = { cert, key, ...(clientCa ? { clientCa } : {}), requireClientCert: s.tlsClientValidate };
  }

  let token: string | undefined;
  if (s.basicAuthTokenFile) {
    const r = readTokenFile(s.basicAuthTokenFile, 'basicAuthTokenFile');
    if (r.warning) warn(`basicAuthTokenFile: ${r.warning}`);
    token = r.token;
  } else if (s.basicAuthToken) {
    token = checkToken(s.basicAuthToken, 'basicAuthToken');
  }
  if (!token && !tls?.requireClientCert) {
    warn(
      tls
        ? 'authentication is DISABLED (no token, no client certificates): anyone who reaches a loopback listener can create and delete VMs and hold the watchdog'
        : 'TLS and authentication are DISABLED (--insecure, no token): any local process can create and delete VMs and hold the watchdog',
    );
  } else if (!tls) {
    warn('TLS is DISABLED (--insecure): the token travels in clear on loopback');
  }
  return { ...(tls ? { tls } : {}), ...(token ? { token } : {}) };
}

/** True when callers must prove who they are (token or client certificate). */
export function authenticationRequired(sec: ApiSecurity): boolean {
  return sec.token !== undefined || sec.tls?.requireClientCert === true;
}

/** One listener to check: its setting, address, and whether it serves only `/metrics`. */
export interface ListenerToCheck {
  readonly key: string;
  readonly address: ListenAddress;
  readonly metricsOnly?: boolean;
}

/**
 * Refuses a configuration that would expose the API by accident:
 *  - plaintext (no TLS) on anything but loopback or a unix socket, for every listener;
 *  - an API listener (gRPC, admin HTTP) reachable from the network with no authentication at all
 *    (no token and no client certificates). The metrics-only listener is read-only and exempt.
 * Throws INVALID_ARGUMENT naming the key and the address.
 */
export function checkListenerSecurity(sec: ApiSecurity, listeners: readonly ListenerToCheck[]): void {
  for (const l of listeners) {
    const where = formatListenAddress(l.address);
    if (!sec.tls && !l.address.loopback) {
      throw new InvalidArgumentError(
        l.key,
        `${where} is not a loopback address: a plaintext listener (--insecure) may only bind loopback (127.0.0.1, [::1]) or a unix socket; configure --tls-cert/--tls-key to listen on the network`,
      );
    }
    if (!l.metricsOnly && !l.address.loopback && !authenticationRequired(sec)) {
      throw new InvalidArgumentError(l.key, `${where} is reachable from the network but no authentication is configured: set basicAuthTokenFile and/or tlsClientValidate`);
    }
  }
}
