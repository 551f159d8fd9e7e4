import { readFileSync } from 'node:fs';
import { randomBytes, randomUUID } from 'node:crypto';
import { hostname, setPriority } from 'node:os';
import { join, resolve } from 'node:path';
import type { Command } from 'commander';
import { readMachineId } from '../../adapters/machine-id.js';
import { SystemClock } from '../../adapters/clock/system-clock.js';
import { QcowVolumes } from '../../adapters/disk/qcow-volumes.js';
import { EtcdClusterStore } from '../../adapters/etcd/etcd-cluster-store.js';
import { EtcdControllerStore } from '../../adapters/etcd/etcd-controller-store.js';
import { LocalFiles } from '../../adapters/fs/local-files.js';
import { acquirePidLock } from '../../adapters/fs/pid-lock.js';
import { secureStateDir } from '../../adapters/fs/private-files.js';
import { builtinGuestPaths, LocalImageStore } from '../../adapters/images/local-image-store.js';
import { Iproute2Network } from '../../adapters/iproute2/iproute2-network.js';
import { createLogger } from '../../adapters/log/pino-logger.js';
import type { ProbeGuest } from '../../adapters/qemu/accel-probe.js';
import { QemuVmm } from '../../adapters/qemu/qemu-vmm.js';
import { SqliteInventory } from '../../adapters/sqlite/sqlite-inventory.js';
import { Agent } from '../../agent/agent.js';
import { resolveFleetTimings } from '../../agent/fleet-timings.js';
import { auditHost } from '../../agent/gc/audit.js';
import { ClusterVmSync } from '../../agent/cluster-sync.js';
import { ClusterVmService } from '../../agent/cluster-vm-service.js';
import { GuardianFeed } from '../../agent/gc/guardian-feed.js';
import { HostGc } from '../../agent/gc/host-gc.js';
import { startPeerChannel, type PeerChannel } from '../../agent/peer/peer-channel.js';
import { SdNotifier, watchdogIntervalMs } from '../../adapters/systemd/sd-notify.js';
import type { HostContext } from '../../agent/host-context.js';
import { createMicroVmGrpcServer } from '../../api/grpc/index.js';
import { HEARTBEAT_PATH_PRIORITY } from '../../adapters/process-priority.js';
import { AdminHttpServer } from '../../api/http/admin-server.js';
import { checkListenerSecurity, loadApiSecurity } from '../../api/auth/api-security.js';
import { parseListenAddress } from '../../api/listen-address.js';
import { AgentMetrics } from '../../api/http/metrics.js';
import { TetherError } from '../../domain/errors.js';
import { describeEtcdAssumptions } from '../../domain/etcd-assumptions.js';
import type { MicroVmService } from '../../ports/microvm-service.js';
import { AGENT_SCHEMA, toAgentConfig, type AgentConfig } from '../agent-config.js';
import { addConfigOptions, resolveConfig } from '../config-schema.js';
import { reportEtcdSecurityOnce, toEtcdSecurity } from '../etcd-options.js';


/** Inventory meta key of this agent instance's persistent id (see `Registration.agentId`). */
const META_AGENT_ID = 'agent.id';

/** Package version, for the host record. */
export const VERSION = '0.1.0';

function bootId(): string {
  try {
    return readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
  } catch {
    return 'unknown';
  }
}

/**
 * What 'auto' acceleration must prove before KVM is used: the built-in guest boots to its ready marker
 * (a nested KVM can run firmware yet hang a kernel), the verdict kept per boot in the cache dir.
 */
export function accelProbe(cacheDir: string): { guest: ProbeGuest; cacheFile: string } {
  const g = builtinGuestPaths(cacheDir);
  return { guest: { kernelPath: g.kernel, initrdPath: g.initrd, kernelCmdline: 'console=ttyS0 quiet panic=-1' }, cacheFile: join(resolve(cacheDir), 'accel-probe.json') };
}

/** Builds and runs the agent until SIGINT/SIGTERM. */
export async function runAgent(cfg: AgentConfig): Promise<void> {
  const logger = createLogger({ level: cfg.logLevel, base: { hostId: cfg.hostId } });
  process.on('unhandledRejection', (err) => logger.error({ err: String(err) }, 'unhandled rejection (please report)'));
  // API security first: a listener that would be exposed by accident stops the start before anything changes.
  const security = loadApiSecurity(cfg, (m) => logger.warn({}, m));
  if (process.argv.some((a) => a === '--basic-auth-token' || a.startsWith('--basic-auth-token='))) {
    logger.warn({}, '--basic-auth-token puts the token in the process list (ps) for every local user to read: use --basic-auth-token-file or TETHER_BASIC_AUTH_TOKEN');
  }
  checkListenerSecurity(security, [
    { key: 'listen', address: parseListenAddress(cfg.listen, 'listen') },
    { key: 'httpListen', address: parseListenAddress(cfg.httpListen, 'httpListen') },
    ...(cfg.metricsListen ? [{ key: 'metricsListen', address: parseListenAddress(cfg.metricsListen, 'metricsListen'), metricsOnly: true }] : []),
  ]);
  const clock = new SystemClock();
  const stateDir = resolve(cfg.stateDir);
  // Heartbeats must not starve behind busy guests (20 TCG VMs booting saturate 2 cores): run the
  // agent ahead of its QEMU children. Best effort; needs root.
  try {
    setPriority(HEARTBEAT_PATH_PRIORITY);
  } catch (err) {
    logger.warn({ err: String(err) }, `could not raise the agent's priority to ${HEARTBEAT_PATH_PRIORITY}`);
  }
  // One agent per host id on this machine, whatever its state dir (a second one started by hand during
  // an incident would otherwise register, be refused and fence the first one's VMs).
  const hostLock = acquirePidLock(`${resolve(cfg.lockDir)}/host-${cfg.hostId}.lock`, 'tether', {
    info: `state dir ${stateDir}`,
    what: `another tether agent already serves host id ${cfg.hostId} on this machine (one agent per host id); stop it first`,
  });
  secureStateDir(stateDir, logger); // 0700, tightened (with a warning) when found looser
  const lock = acquirePidLock(`${stateDir}/agent.lock`, 'tether', { info: `host id ${cfg.hostId}` });
  const inventory = new SqliteInventory(`${stateDir}/inventory.db`);
  let agentId = inventory.getMeta(META_AGENT_ID);
  if (!agentId) {
    agentId = randomUUID();
    inventory.setMeta(META_AGENT_ID, agentId);
  }
  const ctx: HostContext = {
    hostId: cfg.hostId,
    clock,
    inventory,
    vmm: new QemuVmm({ clock, accel: cfg.accel, hostId: cfg.hostId, stateRoot: stateDir, probe: accelProbe(cfg.cacheDir), serialLogMaxBytes: cfg.serialLogMaxBytes, logger: logger.child({ c: 'qemu' }) }),
    network: new Iproute2Network(),
    volumes: new QcowVolumes({ root: stateDir }),
    images: new LocalImageStore({ storeDir: cfg.imageDir, builtin: builtinGuestPaths(cfg.cacheDir) }),
    files: new LocalFiles(stateDir),
    logger,
    stop: { graceMs: cfg.timings.stopGrace, killTimeoutMs: cfg.timings.killTimeout },
    readyTimeoutMs: cfg.readyTimeout,
  };
  let gc: HostGc | undefined;
  const metrics = new AgentMetrics({
    phase: () => gc?.phase,
    lastAckAgeMs: () => gc?.status().lastAckAgeMs,
    watchdogRemainingMs: () => gc?.status().watchdogRemainingMs,
    vmCount: () => inventory.listVms().length,
    peerCheck: () => gc?.status().peerCheck,
  });
  const etcdSecurity = toEtcdSecurity(cfg);
  if (cfg.etcdEndpoints.length > 0) reportEtcdSecurityOnce(cfg.etcdEndpoints, etcdSecurity, (level, m) => logger[level]({ etcd: cfg.etcdEndpoints }, m));
  const store = cfg.etcdEndpoints.length > 0 ? new EtcdClusterStore({ endpoints: cfg.etcdEndpoints, prefix: cfg.etcdPrefix, security: etcdSecurity }) : undefined;
  const boot = bootId();
  if (store) {
    // Heartbeats that scale with the fleet: decided once, before the first registration publishes them.
    const scaled = await resolveFleetTimings(cfg.timings, {
      scaling: cfg.heartbeatScaling,
      configuredFleetSize: cfg.fleetSize,
      inventory,
      bootId: boot,
      logger,
      readFleetSize: async () => {
        const st = new EtcdControllerStore({ endpoints: cfg.etcdEndpoints, prefix: cfg.etcdPrefix, security: etcdSecurity });
        try {
          return (await st.getStatus(3000))?.freeze.total;
        } finally {
          await st.close();
        }
      },
    });
    cfg = { ...cfg, timings: scaled.timings };
  }
  // The fence that outlives this process: fed every acknowledged deadline, restarted when gone.
  const guardian = store
    ? new GuardianFeed(stateDir, cfg.hostId, boot, clock, logger, {
        killTimeoutMs: cfg.timings.killTimeout,
        ...(cfg.watchdogDevice ? { watchdogDevice: cfg.watchdogDevice } : {}),
      })
    : undefined;
  // The VM index sync's store (also followed by the peer list for the pool's host records).
  const vmStore = store ? new EtcdControllerStore({ endpoints: cfg.etcdEndpoints, prefix: cfg.etcdPrefix, security: etcdSecurity }) : undefined;
  // The peer channel (issue 11): listening before the first registration, which advertises it.
  const peer: PeerChannel | undefined =
    cfg.peerChannel && vmStore
      ? await startPeerChannel({
          hostId: cfg.hostId,
          stateDir,
          ...cfg.peerChannel,
          clock,
          logger,
          answer: () => (gc ? (q) => gc!.peerAnswer(q) : undefined),
          store: vmStore,
          attached: () => gc?.phase === 'attached' || gc?.phase === 'suspect',
          intervalMs: cfg.timings.heartbeatInterval * 2,
        })
      : undefined;
  if (store) {
    gc = new HostGc(ctx, store, {
      // Read by the registration (RegistrantInfo.peerAddress), which HostGc hands these options to.
      ...(peer ? { peerAddress: peer.advertise } : {}),
      ...(peer && cfg.peerChannel
        ? { peerCheck: { transport: peer.client, directory: peer.list, settings: cfg.peerChannel.check, nonce: () => randomBytes(16).toString('hex') } }
        : {}),
      timings: cfg.timings,
      bootId: boot,
      ...(guardian ? { guardian } : {}),
      capacity: { vcpu: cfg.capacityVcpu, memoryMb: cfg.capacityMemory },
      agentVersion: VERSION,
      agentId,
      machineId: readMachineId(),
      holder: `tether agent pid ${process.pid} on ${hostname()}, state dir ${stateDir}`,
      metrics: {
        vmStopped: (m) => metrics.vmsStopped.inc({ method: m }),
        cleanupFailed: (n) => metrics.cleanupFailures.inc(n),
        auditLeaks: (n) => metrics.auditLeaks.set(n),
        peerCheck: (e) => metrics.peerCheckEvents.inc({ event: e }),
      },
    });
  }
  const hostGc = gc;
  const agent = new Agent(ctx, hostGc ? () => hostGc.admission() : undefined);
  let service: MicroVmService = agent.service;
  let sync: ClusterVmSync | undefined;
  if (hostGc && vmStore) {
    // Clustered: VMs come from (and go back to) the cluster's vms/ records placed on this host.
    // Attached = the host's phase takes cluster work. Not `admission()`, which also refuses new VMs
    // while the guardian is down: deletes, drains and status writes must go on then.
    const standing = () => ({ attached: hostGc.phase === 'attached' || hostGc.phase === 'suspect', epoch: hostGc.status().epoch });
    sync = new ClusterVmSync(ctx, vmStore, agent.service, standing, cfg.timings.heartbeatInterval);
    service = new ClusterVmService(cfg.hostId, agent.service, vmStore, sync, standing, cfg.timings.heartbeatInterval * 2, () => clock.now());
  }
  const api = createMicroVmGrpcServer(service, {
    logger: logger.child({ c: 'grpc' }),
    security,
    createLimits: { maxConcurrentCreates: cfg.maxConcurrentCreates, createQueueLength: cfg.createQueueLength, maxStartingVms: cfg.maxStartingVms },
  });
  const noCluster = () => {
    throw new TetherError('FAILED_PRECONDITION', 'this agent runs standalone (no --etcd-endpoints): there is no detached-host GC');
  };
  const admin = new AdminHttpServer({
    metrics: () => metrics.text(),
    handlers: {
      'GET gc/status': async () => (hostGc ? hostGc.status() : noCluster()),
      'GET gc/report': async () => (hostGc ? (hostGc.lastReport() ?? null) : noCluster()),
      'GET gc/audit': async () => auditHost(ctx),
      'POST gc/hold': async (b) => {
        if (!hostGc) return noCluster();
        await hostGc.setHold(b.held === true, b.acceptSplitBrainRisk === true);
        return hostGc.status();
      },
      'GET events': async (b) => inventory.listEvents(Number(b.limit ?? 50)),
    },
  }, { security, allowedHosts: cfg.httpAllowedHosts });
  const metricsOnly = cfg.metricsListen
    ? new AdminHttpServer({ metrics: () => metrics.text(), handlers: {} }, { security, metricsOnly: true, addressKey: 'metricsListen', allowedHosts: cfg.httpAllowedHosts })
    : undefined;

  // Under systemd (Type=notify, WatchdogSec): READY=1 once serving, WATCHDOG=1 from the event loop,
  // so a frozen or stuck agent is restarted (meanwhile the guardian enforces the last fed deadline).
  const notifier = SdNotifier.fromEnv(process.env, { onError: (m) => logger.warn({}, m) });
  const petEvery = notifier ? watchdogIntervalMs() : undefined;
  const petTimer = petEvery !== undefined ? setInterval(() => notifier?.watchdog(), petEvery) : undefined;
  let stopping = false;
  const shutdown = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    if (petTimer) clearInterval(petTimer);
    notifier?.stopping();
    logger.info({ signal }, 'agent stopping (VMs keep running and are adopted by the next agent)');
    const noVmsLeft = inventory.listVms().length === 0 && (await ctx.vmm.listOwned(cfg.hostId).catch(() => [1])).length === 0;
    hostGc?.stop(noVmsLeft);
    sync?.stop();
    agent.stop();
    await peer?.close().catch(() => undefined);
    await Promise.allSettled([api.close(), admin.close(), metricsOnly?.close(), store?.close(), vmStore?.close()]);
    inventory.close();
    lock.release();
    hostLock.release();
    await notifier?.close();
    process.exit(0);
  };
  process.on('SIGINT', () => void shutdown('SIGINT'));
  process.on('SIGTERM', () => void shutdown('SIGTERM'));

  const grpcAddr = await api.listen(cfg.listen);
  const httpAddr = await admin.listen(cfg.httpListen);
  const metricsAddr = metricsOnly ? await metricsOnly.listen(cfg.metricsListen) : undefined;
  await agent.start();
  hostGc?.start();
  peer?.start();
  sync?.start();
  logger.info({ grpc: grpcAddr, http: httpAddr, ...(metricsAddr ? { metrics: metricsAddr } : {}), stateDir, cluster: cfg.etcdEndpoints, ...(peer ? { peer: peer.advertise } : {}), timings: cfg.timings }, 'agent ready');
  notifier?.ready(`serving ${grpcAddr}`);
  if (store) {
    store.serverVersion(cfg.timings.heartbeatInterval * 5).then(
      (version) => logger.info({ etcdVersion: version }, describeEtcdAssumptions(version)),
      (err: unknown) => logger.warn({ err: String(err) }, 'could not read the etcd version (the lease-anomaly mitigations are on regardless)'),
    );
  }
}

/** `tether agent`: flags are the config keys in kebab-case. */
export function registerAgentCommand(program: Command): void {
  const cmd = program
    .command('agent')
    .description('run the host agent: microVMs, Flintlock-compatible API, heartbeats and detached-host GC');
  addConfigOptions(cmd, AGENT_SCHEMA);
  cmd.action(async (o: Record<string, unknown>) => {
    const cfg = toAgentConfig(resolveConfig(AGENT_SCHEMA, o, process.env, o.config as string | undefined));
    await runAgent(cfg);
  });
}
