import { homedir, hostname } from 'node:os';
import { join } from 'node:path';
import type { ConfigKey, ConfigValues } from './config-schema.js';

/** The agent's settings, after parsing. Durations in ms. */
export interface AgentConfig {
  readonly hostId: string;
  readonly stateDir: string;
  readonly listen: string;
  readonly cacheDir: string;
  readonly imageDir: string;
  readonly accel: 'auto' | 'kvm' | 'tcg';
  readonly stopGrace: number;
  readonly killTimeout: number;
  readonly readyTimeout: number;
  readonly logLevel: string;
}

/** Default cache of the built-in guest and images: `$TETHER_CACHE_DIR` or `~/.cache/tether`. */
export function defaultCache(): string {
  return process.env.TETHER_CACHE_DIR || join(homedir(), '.cache', 'tether');
}

/** Every agent setting: flag `--<kebab>`, env `TETHER_<SNAKE>`, YAML key as written here. */
export const AGENT_SCHEMA: readonly ConfigKey[] = [
  { key: 'hostId', type: 'string', default: hostname().toLowerCase().replace(/[^a-z0-9.-]/g, '-'), description: 'this host id (letters, digits, . _ -)' },
  { key: 'stateDir', type: 'string', default: '/var/lib/tether', description: 'state folder: inventory, VM folders, locks' },
  { key: 'listen', type: 'string', default: '127.0.0.1:9090', description: 'gRPC listen address (Flintlock-compatible MicroVM API)' },
  { key: 'cacheDir', type: 'string', default: defaultCache(), description: 'cache of the built-in guest image' },
  { key: 'imageDir', type: 'string', default: join(defaultCache(), 'images'), description: 'local image store (kernels/, initrds/, disks/)' },
  { key: 'accel', type: { oneOf: ['auto', 'kvm', 'tcg'] }, default: 'auto', description: 'QEMU accelerator; auto probes KVM and falls back to TCG' },
  { key: 'stopGrace', type: 'duration', default: 8000, description: 'time a guest gets to power off before it is forced' },
  { key: 'killTimeout', type: 'duration', default: 2000, description: 'time the forced stop may take' },
  { key: 'readyTimeout', type: 'duration', default: 60_000, description: 'time from VM start to its ready marker' },
  { key: 'logLevel', type: { oneOf: ['debug', 'info', 'warn', 'error'] }, default: 'info', description: 'log level' },
];

/** Typed view of resolved values; checks the host id. */
export function toAgentConfig(v: ConfigValues): AgentConfig {
  const hostId = String(v.hostId);
  if (!/^[A-Za-z0-9._-]{1,63}$/.test(hostId)) {
    throw new Error(`invalid hostId "${hostId}": use 1-63 letters, digits, '.', '_' or '-'`);
  }
  return v as unknown as AgentConfig;
}
