import { hostname } from 'node:os';
import type { Command } from 'commander';
import { SystemClock } from '../../adapters/clock/system-clock.js';
import { EtcdControllerStore } from '../../adapters/etcd/etcd-controller-store.js';
import { createLogger } from '../../adapters/log/pino-logger.js';
import { Controller } from '../../controller/controller.js';
import { TetherError } from '../../domain/errors.js';
import { DEFAULT_HOST_RECORD_TTL } from '../../domain/host-record-gc.js';
import { DEFAULT_FREEZE_SHARE } from '../../domain/mass-freeze.js';
import { addConfigOptions, resolveConfig, type ConfigKey, type ConfigValues } from '../config-schema.js';
import { ETCD_SECURITY_SCHEMA, reportEtcdSecurityOnce, toEtcdSecurity, type EtcdSecuritySettings } from '../etcd-options.js';
import type { EtcdSecurity } from '../../adapters/etcd/etcd-client.js';

/** The controller's settings, after parsing. Durations in ms. */
export interface ControllerConfig {
  readonly etcdEndpoints: string[];
  readonly etcdPrefix: string;
  /** TLS files and etcd user/password, the password already read. */
  readonly etcdSecurity: EtcdSecurity;
  readonly controllerId: string;
  /** Share (0..1) of detached hosts above which nothing is fenced. */
  readonly freezeShare: number;
  readonly hostRecordTtl: number;
  /** 0: each host's published window; more: lengthens every window (never shortens one). */
  readonly fenceWindowOverride: number;
  /** 0: the freeze resumes after the pool's longest fence window; more: after this, when longer (the freeze contract's resume delay, issue 11). */
  readonly resumeDelay: number;
  readonly leaderTtl: number;
  readonly eventRetention: number;
  /** Fences in flight at once (issue 9). */
  readonly maxFencesInFlight: number;
  /** Hosts fenced per second at most (`Infinity`: no limit, the default). */
  readonly evictionRate: number;
  /** The slower rate above `slowEvictionShare` of at least `slowEvictionMinHosts` hosts detached (`Infinity`: off, the default). */
  readonly slowEvictionRate: number;
  readonly slowEvictionShare: number;
  readonly slowEvictionMinHosts: number;
  readonly logLevel: string;
}

/** Every controller setting: flag `--<kebab>`, env `TETHER_<SNAKE>`, YAML key as written here. */
export const CONTROLLER_SCHEMA: readonly ConfigKey[] = [
  { key: 'etcdEndpoints', type: 'list', default: [], description: 'etcd client URLs, comma-separated (required)' },
  { key: 'etcdPrefix', type: 'string', default: '/tether/', description: 'key prefix in etcd' },
  ...ETCD_SECURITY_SCHEMA,
  { key: 'controllerId', type: 'string', default: `${hostname()}-${process.pid}`, description: 'this replica in controller/leader and logs' },
  { key: 'freezeShare', type: 'string', default: `${Math.round(DEFAULT_FREEZE_SHARE * 100)}%`, description: 'share of detached hosts above which nothing is fenced (e.g. 55% or 0.55)' },
  { key: 'hostRecordTtl', type: 'duration', default: DEFAULT_HOST_RECORD_TTL, description: 'fenced and absent this long: the host record is retired, then removed' },
  { key: 'fenceWindowOverride', type: 'duration', default: 0, description: "lengthen every host's published fence window to this (0: as published; never shortens)" },
  { key: 'resumeDelay', type: 'duration', default: 0, description: "after a freeze, fencing resumes this long after the share fell back, when longer than the pool's longest fence window (0: that window); published in the freeze contract" },
  { key: 'leaderTtl', type: 'duration', default: 5000, description: 'leader lease TTL (whole seconds); a crashed leader is replaced after it' },
  { key: 'eventRetention', type: 'int', default: 1000, description: 'events kept in etcd' },
  { key: 'maxFencesInFlight', type: 'int', default: 32, description: 'fences (a host read + the fence txn) in flight at once; the others wait their turn' },
  { key: 'evictionRate', type: 'string', default: 'off', description: 'hosts fenced per second at most (e.g. 10 or 0.5), or off' },
  { key: 'slowEvictionRate', type: 'string', default: 'off', description: 'the slower rate while more than slowEvictionShare of the hosts is detached (e.g. 0.1), or off' },
  { key: 'slowEvictionShare', type: 'string', default: '30%', description: 'detached share above which slowEvictionRate applies (below freezeShare, where nothing is fenced)' },
  { key: 'slowEvictionMinHosts', type: 'int', default: 50, description: 'clusters smaller than this never use slowEvictionRate' },
  { key: 'logLevel', type: { oneOf: ['debug', 'info', 'warn', 'error'] }, default: 'info', description: 'log level' },
];

/** Parses `off` (no limit: Infinity) or a positive number of hosts per second; refuses anything else, naming `field`. */
export function parseRate(text: string, field: string): number {
  const s = text.trim();
  if (s === 'off') return Infinity;
  const n = Number(s);
  if (s === '' || !Number.isFinite(n) || n <= 0) throw new TetherError('INVALID_ARGUMENT', `invalid ${field} "${text}": give hosts per second > 0 (e.g. 10 or 0.5), or off`, { details: { field } });
  return n;
}

/** Parses `55%`, `0.55` or `55` into 0.55; refuses values outside (0, 1]. */
export function parseShare(text: string, field = 'freezeShare'): number {
  const s = text.trim();
  const pct = s.endsWith('%');
  const n = Number(pct ? s.slice(0, -1) : s);
  const share = pct || n > 1 ? n / 100 : n;
  if (!Number.isFinite(share) || share <= 0 || share > 1) {
    throw new TetherError('INVALID_ARGUMENT', `invalid ${field} "${text}": give a share of hosts such as 55% or 0.55 (0 < share <= 100%)`, { details: { field } });
  }
  return share;
}

function positiveInt(v: unknown, field: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1) throw new TetherError('INVALID_ARGUMENT', `invalid ${field} ${String(v)}: a whole number >= 1`, { details: { field } });
  return n;
}

/** Typed view of resolved values; requires etcd endpoints and a whole-second leader TTL. */
export function toControllerConfig(v: ConfigValues): ControllerConfig {
  const endpoints = v.etcdEndpoints as string[];
  if (endpoints.length === 0) throw new TetherError('INVALID_ARGUMENT', 'the controller needs --etcd-endpoints (or TETHER_ETCD_ENDPOINTS)', { details: { field: 'etcdEndpoints' } });
  const leaderTtl = Number(v.leaderTtl);
  if (leaderTtl < 1000 || leaderTtl % 1000 !== 0) throw new TetherError('INVALID_ARGUMENT', `invalid leaderTtl ${leaderTtl}ms: a whole number of seconds >= 1s`, { details: { field: 'leaderTtl' } });
  return {
    etcdEndpoints: endpoints,
    etcdPrefix: String(v.etcdPrefix),
    etcdSecurity: toEtcdSecurity(v as Partial<EtcdSecuritySettings>),
    controllerId: String(v.controllerId),
    freezeShare: parseShare(String(v.freezeShare)),
    hostRecordTtl: Number(v.hostRecordTtl),
    fenceWindowOverride: Number(v.fenceWindowOverride),
    resumeDelay: Number(v.resumeDelay),
    leaderTtl,
    eventRetention: Number(v.eventRetention),
    maxFencesInFlight: positiveInt(v.maxFencesInFlight, 'maxFencesInFlight'),
    evictionRate: parseRate(String(v.evictionRate), 'evictionRate'),
    slowEvictionRate: parseRate(String(v.slowEvictionRate), 'slowEvictionRate'),
    slowEvictionShare: parseShare(String(v.slowEvictionShare), 'slowEvictionShare'),
    slowEvictionMinHosts: positiveInt(v.slowEvictionMinHosts, 'slowEvictionMinHosts'),
    logLevel: String(v.logLevel),
  };
}

/** Runs a controller replica until SIGINT/SIGTERM (then resigns, so a standby takes over at once). */
export async function runController(cfg: ControllerConfig): Promise<void> {
  const logger = createLogger({ level: cfg.logLevel, base: { controllerId: cfg.controllerId } });
  process.on('unhandledRejection', (err) => logger.error({ err: String(err) }, 'unhandled rejection (please report)'));
  reportEtcdSecurityOnce(cfg.etcdEndpoints, cfg.etcdSecurity, (level, m) => logger[level]({ etcd: cfg.etcdEndpoints }, m));
  const store = new EtcdControllerStore({ endpoints: cfg.etcdEndpoints, prefix: cfg.etcdPrefix, security: cfg.etcdSecurity });
  // Records that fail the codec are skipped by the store; say so once per key and revision (invalidRecordsTotal: the metric).
  store.invalidRecords.subscribe((r) =>
    logger.error({ key: r.key, field: r.error.field, revision: r.revision, err: r.error.message, invalidRecordsTotal: store.invalidRecords.total }, 'record read from etcd is invalid: skipped'),
  );
  const controller = new Controller(store, new SystemClock(), logger, {
    controllerId: cfg.controllerId,
    freezeShare: cfg.freezeShare,
    hostRecordTtl: cfg.hostRecordTtl,
    fenceWindowOverride: cfg.fenceWindowOverride > 0 ? cfg.fenceWindowOverride : undefined,
    ...(cfg.resumeDelay > 0 ? { resumeDelay: cfg.resumeDelay } : {}),
    leaderTtl: cfg.leaderTtl,
    eventRetention: cfg.eventRetention,
    maxFencesInFlight: cfg.maxFencesInFlight,
    evictionRate: cfg.evictionRate,
    slowEvictionRate: cfg.slowEvictionRate,
    slowEvictionShare: cfg.slowEvictionShare,
    slowEvictionMinHosts: cfg.slowEvictionMinHosts,
  });
  let stopping = false;
  const shutdown = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    logger.info({ signal }, 'controller stopping (resigning leadership)');
    await controller.stop({ resign: true });
    await store.close();
    process.exit(0);
  };
  process.on('SIGINT', () => void shutdown('SIGINT'));
  process.on('SIGTERM', () => void shutdown('SIGTERM'));
  controller.start();
  logger.info({ cluster: cfg.etcdEndpoints, prefix: cfg.etcdPrefix, freezeShare: cfg.freezeShare, hostRecordTtl: cfg.hostRecordTtl }, 'controller replica started (campaigning)');
  await new Promise<void>(() => undefined); // runs until a signal
}

/** `tether controller`: flags are the config keys in kebab-case. */
export function registerControllerCommand(program: Command): void {
  const cmd = program
    .command('controller')
    .description('run a cluster controller replica: watches host leases, fences after the window, reschedules lost VMs (one active via etcd election)');
  addConfigOptions(cmd, CONTROLLER_SCHEMA);
  cmd.action(async (o: Record<string, unknown>) => {
    const cfg = toControllerConfig(resolveConfig(CONTROLLER_SCHEMA, o, process.env, o.config as string | undefined));
    await runController(cfg);
  });
}
