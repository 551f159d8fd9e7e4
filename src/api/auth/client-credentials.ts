/**
 * What a client (the CLI, tests, the dev cluster) presents to a secured agent, for both the gRPC API
 * and the admin HTTP server: the CA that signed the agent's certificate, an optional client
 * certificate and key (mutual TLS), and the token.
 *
 * Invariant: TLS is used when `tls` is true or any of `ca`, `cert` is given; a token is sent over
 * plaintext only when the caller chose plaintext (an agent started with --insecure on loopback).
 */
import { readFileSync } from 'node:fs';
import { InvalidArgumentError } from '../../domain/errors.js';
import { checkToken } from './token.js';

/** Loaded client credentials. */
export interface AgentCredentials {
  /** Use TLS (implied by `ca` or `cert`); with no `ca`, the system's CAs verify the agent. */
  readonly tls?: boolean;
  readonly ca?: Buffer;
  readonly cert?: Buffer;
  readonly key?: Buffer;
  readonly token?: string;
}

/** File names (or the token itself) as given by flags or the environment; '' or undefined = unset. */
export interface AgentCredentialFiles {
  readonly tls?: boolean;
  readonly caFile?: string;
  readonly certFile?: string;
  readonly keyFile?: string;
  readonly tokenFile?: string;
  readonly token?: string;
}

/** True when these credentials make the client use TLS. */
export function usesTls(c: AgentCredentials | undefined): boolean {
  return c !== undefined && (c.tls === true || c.ca !== undefined || c.cert !== undefined);
}

function read(path: string, flag: string): Buffer {
  try {
    return readFileSync(path);
  } catch (cause) {
    throw new InvalidArgumentError(flag, `cannot read ${path}: ${(cause as Error).message}`, { cause });
  }
}

/**
 * Reads the files. Errors are INVALID_ARGUMENT naming the flag (`--agent-ca`, ...). A client
 * certificate needs its key and the other way round; a token file wins over a token value.
 */
export function loadAgentCredentials(f: AgentCredentialFiles): AgentCredentials {
  if (Boolean(f.certFile) !== Boolean(f.keyFile)) throw new InvalidArgumentError(f.certFile ? '--agent-key' : '--agent-cert', 'a client certificate needs both --agent-cert and --agent-key');
  let token: string | undefined;
  if (f.tokenFile) token = checkToken(read(f.tokenFile, '--agent-token-file').toString('utf8').trim(), '--agent-token-file');
  else if (f.token) token = checkToken(f.token, 'TETHER_AGENT_TOKEN');
  return {
    ...(f.tls ? { tls: true } : {}),
    ...(f.caFile ? { ca: read(f.caFile, '--agent-ca') } : {}),
    ...(f.certFile ? { cert: read(f.certFile, '--agent-cert') } : {}),
    ...(f.keyFile ? { key: read(f.keyFile, '--agent-key') } : {}),
    ...(token ? { token } : {}),
  };
}

/**
 * A hint to append to a connection failure, from what the client used and what the error says:
 * plaintext against a TLS port, a missing or refused client certificate, an unverifiable server.
 * '' when there is nothing to add.
 */
export function connectionHint(message: string, c: AgentCredentials | undefined): string {
  if (/certificate required|alert handshake failure|alert bad certificate|unknown ca/i.test(message)) {
    return c?.cert ? ' (the agent refused this client certificate: is it signed by the agent\'s --tls-client-ca?)' : ' (the agent requires a client certificate: --agent-cert and --agent-key)';
  }
  if (/self[- ]signed|unable to verify|unable to get local issuer|altnames/i.test(message)) return " (cannot verify the agent's certificate: pass the CA that signed it with --agent-ca)";
  if (!usesTls(c) && /socket hang up|ECONNRESET|Failed to connect|Connection dropped|Parse Error/i.test(message)) return ' (the agent may serve TLS: pass --agent-ca, or TETHER_AGENT_CA)';
  return '';
}
