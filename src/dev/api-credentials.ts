/**
 * The agent API security the dev cluster, the tests and the benchmarks run with: TLS with the
 * certificates of `scripts/gen-certs.sh`, mutual TLS (the client certificate signed by the same CA),
 * and a random token in a 0600 file. Used by {@link AgentProcess}; clients get the matching
 * {@link AgentCredentials}.
 */
import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { AgentCredentials } from '../api/auth/client-credentials.js';
import { devCerts, type DevCerts } from './certs.js';

/** Certificates and token of a secured agent. */
export interface AgentApiSecurity {
  readonly certs: DevCerts;
  /** File holding the token (0600), passed as `--basic-auth-token-file`. */
  readonly tokenFile: string;
  readonly token: string;
  /** Agents require client certificates (`--tls-client-validate`). */
  readonly mutualTls: boolean;
}

/**
 * Makes (or reuses) the certificates in `dir` and a token in `<dir>/api-token`. Synchronous, and
 * idempotent: agents built one after the other in one process share a set.
 */
export function devApiSecurity(dir: string, opts: { readonly mutualTls?: boolean } = {}): AgentApiSecurity {
  const certs = devCerts(dir);
  const tokenFile = join(dir, 'api-token');
  if (!existsSync(tokenFile)) writeFileSync(tokenFile, `${randomBytes(32).toString('hex')}\n`, { mode: 0o600, flag: 'wx' });
  return { certs, tokenFile, token: readFileSync(tokenFile, 'utf8').trim(), mutualTls: opts.mutualTls ?? true };
}

/** `tether agent` flags for `s`. */
export function agentSecurityArgs(s: AgentApiSecurity): string[] {
  return [
    '--tls-cert', s.certs.serverCert,
    '--tls-key', s.certs.serverKey,
    ...(s.mutualTls ? ['--tls-client-validate', '--tls-client-ca', s.certs.ca] : []),
    '--basic-auth-token-file', s.tokenFile,
  ];
}

/** What a client presents to an agent secured with `s`: the CA, the client certificate, the token. */
export function agentClientCredentials(s: AgentApiSecurity): AgentCredentials {
  return {
    ca: readFileSync(s.certs.ca),
    cert: readFileSync(s.certs.clientCert),
    key: readFileSync(s.certs.clientKey),
    token: s.token,
  };
}

/** The same as environment variables of the `tether vm|gc` commands (`--agent-*` flags). */
export function agentClientEnv(s: AgentApiSecurity): Record<string, string> {
  return {
    TETHER_AGENT_CA: s.certs.ca,
    TETHER_AGENT_CERT: s.certs.clientCert,
    TETHER_AGENT_KEY: s.certs.clientKey,
    TETHER_AGENT_TOKEN_FILE: s.tokenFile,
  };
}
