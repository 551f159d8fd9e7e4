import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, existsSync, mkdirSync, openSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { AgentCredentials } from '../api/auth/client-credentials.js';
import { adminCall, type AdminTarget } from '../api/http/admin-server.js';
import type { GcStatus } from '../domain/agent-status.js';
import { MicroVmApiClient } from '../cli/microvm-client.js';
import { agentClientCredentials, agentSecurityArgs, devApiSecurity, type AgentApiSecurity } from './api-credentials.js';
import { findFreePorts } from './free-ports.js';
import { until } from './host-probe.js';

/** The repository root: the first folder above this file holding package.json and bin/tether.js. */
export function repoRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!(existsSync(join(dir, 'package.json')) && existsSync(join(dir, 'bin', 'tether.js')))) {
    const up = dirname(dir);
    if (up === dir) throw new Error('cannot find the tether repository root');
    dir = up;
  }
  return dir;
}

/** Options of {@link AgentProcess}. */
export interface AgentProcessOptions {
  /**
   * Run the agent in its own session and process group (`detached`), so a terminal's signal reaches
   * only the process that started it (the dev cluster's supervisor). Default false: a test's agents
   * share the test runner's group.
   */
  readonly ownProcessGroup?: boolean;
  /** The agent's environment. Default: this process's. */
  readonly env?: NodeJS.ProcessEnv;
  /**
   * API security: TLS, client certificates and token (default: a set made in
   * `<parent of stateDir>/api-certs` by `devApiSecurity`), or 'insecure' (plaintext on loopback).
   */
  readonly security?: AgentApiSecurity | 'insecure';
  /**
   * Run the agent's peer channel (issue 11) on a free loopback port, with the dev certificates of
   * {@link AgentProcess.security} (or, for an insecure agent, the set it would use): the server
   * certificate serves, the client certificate asks, their CA is the peer CA. Default: on when the
   * agent is clustered (`--etcd-endpoints` among its flags) and its flags do not set `--peer-listen`.
   */
  readonly peerChannel?: boolean;
}

/** A `tether agent` child process on its own state dir and ports. */
export class AgentProcess {
  proc: ChildProcess | undefined;
  readonly log: string;
  private client: MicroVmApiClient | undefined;

  constructor(
    readonly hostId: string,
    readonly stateDir: string,
    private readonly extraArgs: string[] = [],
    ports?: [number, number],
    private readonly options: AgentProcessOptions = {},
  ) {
    this.ports = ports;
    this.log = join(stateDir, 'agent.log');
  }

  private ports: [number, number] | undefined;

  /** gRPC address (valid after start). */
  get grpc(): string {
    return `127.0.0.1:${this.ports?.[0]}`;
  }

  private peerPort: number | undefined;

  /** Peer channel address (valid after start; undefined when the agent runs none). */
  get peer(): string | undefined {
    return this.peerPort === undefined ? undefined : `127.0.0.1:${this.peerPort}`;
  }

  /** `tether agent` flags of the peer channel (a port picked on first use, kept across restarts). */
  private async peerArgs(): Promise<string[]> {
    const clustered = this.extraArgs.includes('--etcd-endpoints') && !this.extraArgs.includes('--peer-listen');
    if (!(this.options.peerChannel ?? clustered)) return [];
    this.peerPort ??= (await findFreePorts(1))[0]!;
    const sec = this.security;
    const c = sec === 'insecure' ? devApiSecurity(join(dirname(this.stateDir), 'api-certs')).certs : sec.certs;
    return ['--peer-listen', `127.0.0.1:${this.peerPort}`, '--peer-tls-cert', c.serverCert, '--peer-tls-key', c.serverKey, '--peer-client-cert', c.clientCert, '--peer-client-key', c.clientKey, '--peer-tls-ca', c.ca];
  }

  /** Admin HTTP address (valid after start). */
  get http(): string {
    return `127.0.0.1:${this.ports?.[1]}`;
  }

  private sec: AgentApiSecurity | 'insecure' | undefined;
  private creds: AgentCredentials | undefined;

  /** The agent's API security (made on first use; see {@link AgentProcessOptions.security}). */
  get security(): AgentApiSecurity | 'insecure' {
    this.sec ??= this.options.security ?? devApiSecurity(join(dirname(this.stateDir), 'api-certs'));
    return this.sec;
  }

  /** What a client presents to this agent (undefined when it runs --insecure). */
  get credentials(): AgentCredentials | undefined {
    const s = this.security;
    if (s === 'insecure') return undefined;
    this.creds ??= agentClientCredentials(s);
    return this.creds;
  }

  /** The admin HTTP server with this agent's credentials, for `adminCall`/`adminText`. */
  get admin(): AdminTarget {
    const credentials = this.credentials;
    return credentials ? { address: this.http, credentials } : { address: this.http };
  }

  /** Starts the agent and waits until its API answers. */
  async start(): Promise<void> {
    await this.spawn();
    await this.waitReady();
  }

  /** Launches the agent process (ports picked first when not given); {@link proc} is set on return. */
  async spawn(): Promise<void> {
    this.ports ??= (await findFreePorts(2)) as [number, number];
    const args = [join(repoRoot(), 'bin/tether.js'), 'agent', '--host-id', this.hostId, '--state-dir', this.stateDir, '--listen', this.grpc, '--http-listen', this.http, '--log-level', 'debug', ...(this.security === 'insecure' ? ['--insecure'] : agentSecurityArgs(this.security)), ...(await this.peerArgs()), ...this.extraArgs];
    mkdirSync(this.stateDir, { recursive: true });
    const out = openSync(this.log, 'a');
    try {
      this.proc = spawn(process.execPath, args, {
        stdio: ['ignore', out, out],
        ...(this.options.ownProcessGroup ? { detached: true } : {}),
        ...(this.options.env ? { env: this.options.env } : {}),
      });
    } finally {
      closeSync(out);
    }
    this.proc.on('error', () => undefined);
  }

  /** True while the agent process has not exited (and not been reaped). */
  get running(): boolean {
    return this.proc !== undefined && this.proc.exitCode === null && this.proc.signalCode === null;
  }

  /** Waits until the spawned agent's API answers (20 s). */
  async waitReady(): Promise<void> {
    await until(`agent ${this.hostId} API`, async () => {
      if (!this.running) throw new Error(`agent exited (${this.proc?.signalCode ?? this.proc?.exitCode}): ${readFileSync(this.log, 'utf8').slice(-2000)}`);
      return this.api().list().then(() => true, () => false);
    }, 20_000, 100);
  }

  /**
   * Waits until the agent takes new VMs (`timeoutMs`, default 30 s): attached (at `minEpoch` or
   * later) and, when it has a guardian, the guardian confirmed running. Admission refuses VMs
   * before that, so a test that creates a VM as soon as the host says `attached` races the guardian.
   */
  async waitTakesVms(timeoutMs = 30_000, minEpoch = 0): Promise<GcStatus> {
    return until(`agent ${this.hostId} attached with its guardian running`, async () => {
      const s = await adminCall<GcStatus>(this.admin, 'GET', 'gc/status', undefined, 3000).catch(() => undefined);
      return s?.phase === 'attached' && s.epoch >= minEpoch && s.guardianRunning !== false ? s : undefined;
    }, timeoutMs, 50);
  }

  api(): MicroVmApiClient {
    this.client ??= new MicroVmApiClient(this.grpc, 5000, this.credentials);
    return this.client;
  }

  /** SIGKILLs the agent (a crash) and waits for it to be gone. */
  async kill(signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
    const p = this.proc;
    this.client?.close();
    this.client = undefined;
    if (!p || p.exitCode !== null || p.signalCode !== null) return;
    const gone = new Promise((r) => p.once('exit', r));
    p.kill(signal);
    await gone;
  }
}

