import { peerCheckBudgetProblem } from '../domain/peer-check.js';
import { availableParallelism, homedir, hostname, totalmem } from 'node:os';
import type { ApiSecuritySettings } from '../api/auth/api-security.js';
import { DEFAULT_CREATE_LIMITS } from '../api/grpc/create-admission.js';
import { checkTimings, describeViolations, DEFAULT_TIMINGS, type GcTimings } from '../domain/gc-timing.js';
import { describeScaledViolations, scaleTimings, type HeartbeatScaling } from '../domain/fleet-timings.js';
import { TetherError } from '../domain/errors.js';
import { join } from 'node:path';
import type { ConfigKey, ConfigValues } from './config-schema.js';
import { ETCD_SECURITY_SCHEMA, type EtcdSecuritySettings } from './etcd-options.js';
import { PEER_CHANNEL_SCHEMA, resolvePeerChannel, type PeerChannelConfig, type PeerChannelSettings } from './peer-options.js';

/** The agent's settings, after parsing. Durations in ms. API security: Flintlock's flags (api/auth/api-security.ts). */
export interface AgentConfig extends EtcdSecuritySettings, ApiSecuritySettings, PeerChannelConfig {
  /** The peer channel (issue 11), resolved from the peer* settings and their defaults; undefined: off. */
  readonly peerChannel: PeerChannelSettings | undefined;
  readonly hostId: string;
  readonly stateDir: string;
  /** Folder of the per-host-id locks (one agent per host id on a machine, whatever its state dir). */
  readonly lockDir: string;
  /** Linux watchdog device the guardian pets while the host's deadline holds ('' = none). */
  readonly watchdogDevice: string;
  readonly listen: string;
  readonly httpListen: string;
  /** Metrics-only listener for Prometheus ('' = none): `GET /metrics`, no token. */
  readonly metricsListen: string;
  /** Extra Host names the HTTP listeners accept (besides IP literals and localhost). */
  readonly httpAllowedHosts: string[];
  /** Create admission (api/grpc/create-admission.ts). */
  readonly maxConcurrentCreates: number;
  readonly createQueueLength: number;
  readonly maxStartingVms: number;
  readonly etcdEndpoints: string[];
  readonly etcdPrefix: string;
  readonly capacityVcpu: number;
  readonly capacityMemory: number;
  readonly cacheDir: string;
  readonly imageDir: string;
  readonly accel: 'auto' | 'kvm' | 'tcg';
  /** The configured timings; with {@link heartbeatScaling} on, the agent scales them at start (src/agent/fleet-timings.ts). */
  readonly timings: GcTimings;
  /** Heartbeats that scale with the fleet (src/domain/fleet-timings.ts); `fleetHeartbeatRate` 0: off. */
  readonly heartbeatScaling: HeartbeatScaling;
  /** Fleet size to scale for; 0: the active controller's count, read at start. */
  readonly fleetSize: number;
  readonly readyTimeout: number;
  /** Most bytes one VM's console log takes on disk (serial.log + serial.log.1). */
  readonly serialLogMaxBytes: number;
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
  { key: 'lockDir', type: 'string', default: '/run/tether', description: 'folder of the host-id locks: one agent per host id on this machine, whatever its state dir' },
  { key: 'watchdogDevice', type: 'string', default: '', description: "Linux watchdog device (e.g. /dev/watchdog) the guardian pets only while the host's deadline holds; '' = none" },
  { key: 'listen', type: 'string', default: '127.0.0.1:9090', description: 'gRPC listen address (Flintlock-compatible MicroVM API)' },
  { key: 'cacheDir', type: 'string', default: defaultCache(), description: 'cache of the built-in guest image' },
  { key: 'imageDir', type: 'string', default: join(defaultCache(), 'images'), description: 'local image store (kernels/, initrds/, disks/)' },
  { key: 'accel', type: { oneOf: ['auto', 'kvm', 'tcg'] }, default: 'auto', description: 'QEMU accelerator; auto probes KVM and falls back to TCG' },
  { key: 'httpListen', type: 'string', default: '127.0.0.1:9091', description: 'HTTP address for /metrics and the gc admin endpoints (a port alone means loopback)' },
  { key: 'metricsListen', type: 'string', default: '', description: "extra listener serving only GET /metrics, without token, for Prometheus ('' = none)" },
  { key: 'httpAllowedHosts', type: 'list', default: [], description: 'DNS names the HTTP listeners accept in the Host header (IP literals and localhost always work)' },
  { key: 'tlsCert', type: 'string', default: '', description: 'TLS certificate of the gRPC and HTTP listeners (PEM); required unless --insecure' },
  { key: 'tlsKey', type: 'string', default: '', description: 'private key of --tls-cert (PEM)' },
  { key: 'tlsClientValidate', type: 'bool', default: false, description: 'mutual TLS: refuse clients without a certificate signed by --tls-client-ca' },
  { key: 'tlsClientCa', type: 'string', default: '', description: 'CA that signs client certificates (with --tls-client-validate)' },
  { key: 'insecure', type: 'bool', default: false, description: 'serve plaintext (no TLS), on loopback or a unix socket only' },
  { key: 'basicAuthTokenFile', type: 'string', default: '', description: 'file holding the API token (gRPC "authorization: basic <base64>", HTTP "Bearer")' },
  { key: 'basicAuthToken', type: 'string', default: '', description: 'the API token itself (Flintlock compatibility; visible in the process list as a flag: prefer --basic-auth-token-file or TETHER_BASIC_AUTH_TOKEN)' },
  { key: 'maxConcurrentCreates', type: 'int', default: DEFAULT_CREATE_LIMITS.maxConcurrentCreates, description: 'CreateMicroVM calls worked on at once' },
  { key: 'createQueueLength', type: 'int', default: DEFAULT_CREATE_LIMITS.createQueueLength, description: 'CreateMicroVM calls waiting their turn; beyond: RESOURCE_EXHAUSTED' },
  { key: 'maxStartingVms', type: 'int', default: DEFAULT_CREATE_LIMITS.maxStartingVms, description: 'VMs still starting (pending/creating) above which a create is refused with RESOURCE_EXHAUSTED' },
  { key: 'etcdEndpoints', type: 'list', default: [], description: 'etcd client URLs, comma-separated; empty = standalone (no cluster, no GC)' },
  { key: 'etcdPrefix', type: 'string', default: '/tether/', description: 'key prefix in etcd' },
  ...ETCD_SECURITY_SCHEMA,
  ...PEER_CHANNEL_SCHEMA,
  { key: 'ttl', type: 'duration', default: DEFAULT_TIMINGS.ttl, description: 'lease TTL (whole seconds)' },
  { key: 'heartbeatInterval', type: 'duration', default: DEFAULT_TIMINGS.heartbeatInterval, description: 'keepalive period and per-keepalive deadline' },
  { key: 'detachAfter', type: 'duration', default: DEFAULT_TIMINGS.detachAfter, description: 'no acknowledged heartbeat for this long: detached' },
  { key: 'watchdogTimeout', type: 'duration', default: DEFAULT_TIMINGS.watchdogTimeout, description: 'from the last acknowledged heartbeat to the self-fence' },
  { key: 'stopGrace', type: 'duration', default: DEFAULT_TIMINGS.stopGrace, description: 'time a guest gets to power off before it is forced' },
  { key: 'killTimeout', type: 'duration', default: DEFAULT_TIMINGS.killTimeout, description: 'time the forced stop may take' },
  { key: 'fenceWindow', type: 'duration', default: DEFAULT_TIMINGS.fenceWindow, description: 'cluster side: lease expiry to VMs treated as gone (checked here too)' },
  { key: 'clockDriftMargin', type: 'duration', default: DEFAULT_TIMINGS.clockDriftMargin, description: 'allowance for clock-rate differences' },
  { key: 'electionTolerance', type: 'duration', default: DEFAULT_TIMINGS.electionTolerance, description: 'longest etcd leader election to ride out without fencing' },
  {
    key: 'fleetHeartbeatRate',
    type: 'int',
    default: 0,
    description:
      'keepalives per second the whole fleet should send at most (Nomad-style heartbeat target); 0 = off. On: heartbeatInterval grows to fleet size / rate (detachAfter and watchdogTimeout by the same amount, ttl to at least 3 heartbeats), decided at start',
  },
  { key: 'maxHeartbeatInterval', type: 'duration', default: 10_000, description: 'longest heartbeat interval fleetHeartbeatRate may choose (bounds detection latency)' },
  { key: 'fleetSize', type: 'int', default: 0, description: "fleet size to scale heartbeats for; 0 = the active controller's host count, read at start (only with fleetHeartbeatRate)" },
  { key: 'capacityVcpu', type: 'int', default: availableParallelism(), description: 'vCPUs this host offers to VMs' },
  { key: 'capacityMemory', type: 'int', default: Math.floor(totalmem() / 2 ** 20 / 2), description: 'MiB of memory this host offers to VMs' },
  { key: 'readyTimeout', type: 'duration', default: 60_000, description: 'time from VM start to its ready marker' },
  { key: 'serialLogMaxBytes', type: 'int', default: 1024 * 1024, description: 'most bytes one VM console log takes on disk (serial.log + serial.log.1, rotated); at least 4096' },
  { key: 'logLevel', type: { oneOf: ['debug', 'info', 'warn', 'error'] }, default: 'info', description: 'log level' },
];

/** Typed view of resolved values; checks the host id and refuses unsafe GC timings, naming the inequality. */
export function toAgentConfig(v: ConfigValues): AgentConfig {
  const hostId = String(v.hostId);
  if (!/^[A-Za-z0-9._-]{1,63}$/.test(hostId) || hostId === '.' || hostId === '..') {
    throw new TetherError('INVALID_ARGUMENT', `invalid hostId "${hostId}": use 1-63 letters, digits, '.', '_' or '-' (not '.' or '..')`);
  }
  for (const k of ['maxConcurrentCreates', 'maxStartingVms'] as const) {
    if (Number(v[k]) < 1) throw new TetherError('INVALID_ARGUMENT', `${k} must be at least 1 (got ${String(v[k])}): 0 would refuse every create`, { details: { field: k } });
  }
  const timings: GcTimings = {
    ttl: Number(v.ttl),
    heartbeatInterval: Number(v.heartbeatInterval),
    detachAfter: Number(v.detachAfter),
    watchdogTimeout: Number(v.watchdogTimeout),
    stopGrace: Number(v.stopGrace),
    killTimeout: Number(v.killTimeout),
    fenceWindow: Number(v.fenceWindow),
    clockDriftMargin: Number(v.clockDriftMargin),
    electionTolerance: Number(v.electionTolerance),
  };
  const violations = checkTimings(timings);
  if (violations.length > 0) {
    throw new TetherError('UNSAFE_CONFIG', `unsafe GC timings: ${describeViolations(violations)}`, { details: { violations } });
  }
  const heartbeatScaling: HeartbeatScaling = { fleetHeartbeatRate: Number(v.fleetHeartbeatRate ?? 0), maxHeartbeatInterval: Number(v.maxHeartbeatInterval ?? 10_000) };
  if (heartbeatScaling.fleetHeartbeatRate > 0) {
    // The longest timings scaling can reach (any fleet size): refused now rather than when the fleet grows.
    const worst = scaleTimings(timings, Number.MAX_SAFE_INTEGER, heartbeatScaling);
    if (worst.violations.length > 0) {
      throw new TetherError('UNSAFE_CONFIG', describeScaledViolations(worst).replace(/a fleet of \d+ hosts/, 'any fleet size (up to maxHeartbeatInterval)'), { details: { violations: worst.violations } });
    }
  }
  const peerChannel = resolvePeerChannel(v as Parameters<typeof resolvePeerChannel>[0]);
  // The peer check must notice a lapse and stop every VM within the freeze's resume delay, which is
  // at least this host's fence window (docs/peer-check.md "The host's rule", budget).
  const budget = peerChannel ? peerCheckBudgetProblem(timings, peerChannel.check, timings.fenceWindow) : undefined;
  if (budget !== undefined) throw new TetherError('UNSAFE_CONFIG', `the peer check could never hold a fence back: ${budget} (resumeDelay is at least fenceWindow)`);
  return { ...(v as unknown as AgentConfig), timings, heartbeatScaling, fleetSize: Number(v.fleetSize ?? 0), peerChannel };
}
