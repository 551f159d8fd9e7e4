/**
 * Client-side flags of every command that talks to an agent (`tether vm ...` over gRPC,
 * `tether gc ...` over the admin HTTP port): how to reach a secured agent.
 *
 * | flag | environment | meaning |
 * |---|---|---|
 * | `--agent-ca <file>` | `TETHER_AGENT_CA` | CA that signed the agent's certificate; implies TLS |
 * | `--agent-cert <file>` / `--agent-key <file>` | `TETHER_AGENT_CERT` / `TETHER_AGENT_KEY` | client certificate (mutual TLS) |
 * | `--agent-token-file <file>` | `TETHER_AGENT_TOKEN_FILE` (or the token itself in `TETHER_AGENT_TOKEN`) | the API token |
 * | `--agent-tls` | `TETHER_AGENT_TLS=1` | TLS verified by the system's CAs |
 * The token is never a flag value: a flag shows in every user's process list.
 */
import type { Command } from 'commander';
import { loadAgentCredentials, type AgentCredentials } from '../api/auth/client-credentials.js';

/** The parsed flags of {@link addAgentCredentialOptions}. */
export interface AgentCredentialFlags {
  readonly agentCa?: string;
  readonly agentCert?: string;
  readonly agentKey?: string;
  readonly agentTokenFile?: string;
  readonly agentTls?: boolean;
}

/** Adds the flags above to `c`. */
export function addAgentCredentialOptions(c: Command): Command {
  return c
    .option('--agent-ca <file>', "CA that signed the agent's certificate; implies TLS (or TETHER_AGENT_CA)")
    .option('--agent-cert <file>', 'client certificate for mutual TLS (or TETHER_AGENT_CERT)')
    .option('--agent-key <file>', 'key of --agent-cert (or TETHER_AGENT_KEY)')
    .option('--agent-token-file <file>', "file holding the agent's API token (or TETHER_AGENT_TOKEN_FILE; TETHER_AGENT_TOKEN for the token itself)")
    .option('--agent-tls', 'use TLS verified by the system CAs (implied by --agent-ca/--agent-cert; or TETHER_AGENT_TLS=1)');
}

/** Credentials from the flags, else the environment; undefined when nothing is set (plaintext, no token). */
export function agentCredentialsFrom(o: AgentCredentialFlags, env: NodeJS.ProcessEnv = process.env): AgentCredentials | undefined {
  const pick = (flag: string | undefined, name: string) => flag || env[name] || undefined;
  const tlsEnv = (env.TETHER_AGENT_TLS ?? '').toLowerCase();
  const files = {
    tls: o.agentTls === true || ['1', 'true', 'yes'].includes(tlsEnv),
    caFile: pick(o.agentCa, 'TETHER_AGENT_CA'),
    certFile: pick(o.agentCert, 'TETHER_AGENT_CERT'),
    keyFile: pick(o.agentKey, 'TETHER_AGENT_KEY'),
    tokenFile: pick(o.agentTokenFile, 'TETHER_AGENT_TOKEN_FILE'),
    token: env.TETHER_AGENT_TOKEN || undefined,
  };
  if (!files.tls && !files.caFile && !files.certFile && !files.keyFile && !files.tokenFile && !files.token) return undefined;
  return loadAgentCredentials(files);
}
