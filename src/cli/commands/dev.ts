import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import type { Command } from 'commander';
import { EtcdControllerStore } from '../../adapters/etcd/etcd-controller-store.js';
import { specFromFlintlock } from '../../api/grpc/spec-mapping.js';
import { adminCall } from '../../api/http/admin-server.js';
import { agentClientEnv } from '../../dev/api-credentials.js';
import { DEV_CONTROL_ADDR, DevCluster } from '../../dev/dev-cluster.js';
import { argvOf, tetherSubcommand, type DevScope } from '../../dev/dev-scan.js';
import { parentIsNpm, resilientOutput, SignalPolicy, startDeathWatch, SUPERVISOR_SIGNALS, type DeathWatch, type SupervisorSignal } from '../../dev/dev-signals.js';
import { hostIdsFromDirs, readDevState, type DevState } from '../../dev/dev-state.js';
import { DevTeardown } from '../../dev/dev-teardown.js';
import { clusterCreate } from '../cluster-vms.js';
import { parseDuration } from '../../domain/duration.js';
import { InvalidArgumentError, TetherError, messageOf } from '../../domain/errors.js';

const DEFAULT_STATE_DIR = 'state/dev';

function controlAddress(o: { control?: string; stateDir?: string }): string {
  if (o.control) return o.control;
  try {
    return readDevState(resolve(o.stateDir ?? DEFAULT_STATE_DIR))?.control ?? DEV_CONTROL_ADDR;
  } catch {
    return DEV_CONTROL_ADDR;
  }
}

/** The dev cluster's token (the one its agents use), which its control endpoint asks for. */
function controlToken(o: { stateDir?: string }): string | undefined {
  try {
    return readFileSync(join(resolve(o.stateDir ?? DEFAULT_STATE_DIR), 'api-certs', 'api-token'), 'utf8').trim();
  } catch {
    return undefined;
  }
}

function control<T>(o: { control?: string; stateDir?: string }, method: 'GET' | 'POST', path: string, body?: unknown): Promise<T> {
  const token = controlToken(o);
  const target = { address: controlAddress(o), ...(token ? { credentials: { token } } : {}) };
  return adminCall<T>(target, method, path, body, 5000, 'a dev cluster (start one with `npm run dev` or `tether dev up`)');
}

function intOption(value: string, name: string, min: number, max: number): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < min || n > max) throw new InvalidArgumentError(name, `must be an integer ${min}..${max}, got "${value}"`);
  return n;
}

/** True when `state`'s supervisor is a live `tether dev up` process. */
function supervisorAlive(state: DevState): boolean {
  const argv = argvOf(state.supervisorPid);
  return argv !== undefined && state.supervisorPid !== process.pid && tetherSubcommand(argv) === 'dev' && argv.includes('up');
}

function scopeFromState(stateDir: string, state: DevState | undefined): DevScope {
  const hostIds = [...new Set([...(state?.hosts.map((h) => h.id) ?? []), ...hostIdsFromDirs(stateDir)])];
  return {
    stateDir,
    hostIds,
    agentPids: new Map((state?.hosts ?? []).flatMap((h) => (h.pid !== undefined ? [[h.id, h.pid] as const] : []))),
    ...(state?.controllerPid !== undefined ? { controllerPid: state.controllerPid } : {}),
    ...(state?.etcd ? { etcdMark: state.etcd.mark } : {}),
    ...(state?.lockDir ? { lockDir: state.lockDir } : {}),
  };
}

async function waitExit(pid: number, ms: number): Promise<boolean> {
  const t0 = Date.now();
  while (argvOf(pid) !== undefined) {
    if (Date.now() - t0 > ms) return false;
    await new Promise((r) => setTimeout(r, 200));
  }
  return true;
}

/**
 * Cleans what a dev cluster left in `stateDir` when its supervisor is gone (`dev down`, the death
 * watch, or `dev up` finding leftovers). With a live supervisor: `dev up` refuses; `dev down` asks it
 * to clean up (SIGTERM) and then verifies. Resolves with true when the host is clean.
 */
async function cleanStateDir(stateDir: string, out: (l: string) => void, mode: 'up' | 'down' | 'watch'): Promise<boolean> {
  const state = readDevState(stateDir);
  if (state && supervisorAlive(state)) {
    if (mode === 'up') {
      throw new TetherError('FAILED_PRECONDITION', `a dev cluster is already running from ${stateDir} (pid ${state.supervisorPid}): stop it with Ctrl-C in its terminal or \`tether dev down --state-dir ${stateDir}\``);
    }
    out(`[dev] the dev cluster's supervisor (pid ${state.supervisorPid}) is running: sending it SIGTERM; it deletes its VMs and reports in its own terminal`);
    process.kill(state.supervisorPid, 'SIGTERM');
    if (!(await waitExit(state.supervisorPid, 90_000))) {
      out(`[dev] supervisor ${state.supervisorPid} did not exit within 90s: SIGKILL, then forced cleanup`);
      if (supervisorAlive(state)) process.kill(state.supervisorPid, 'SIGKILL');
      await waitExit(state.supervisorPid, 5000);
    }
  }
  const scope = scopeFromState(stateDir, state);
  if (!state && scope.hostIds.length === 0 && !existsSync(join(stateDir, 'etcd'))) {
    if (mode !== 'up') out(`[dev] nothing of a dev cluster in ${stateDir}`);
    return true;
  }
  if (mode === 'watch') out(`\n[dev] the dev cluster's supervisor (pid ${state?.supervisorPid ?? '?'}) died without cleaning up: cleaning up from ${stateDir}`);
  if (mode === 'up') out(`[dev] leftovers of an earlier dev cluster in ${stateDir} (its supervisor is gone): cleaning them up first`);
  const r = await new DevTeardown({ scope: () => scope, ...(state?.createdRoot ? { createdRoot: state.createdRoot } : {}), out, politeFirst: true }).run({ forced: true });
  return r.clean;
}

interface UpOptions {
  readonly stateDir: string;
  readonly hosts: string;
  readonly vms: string;
  readonly hostPrefix: string;
  readonly basePort: string;
  readonly control: string;
}

async function devUp(o: UpOptions): Promise<void> {
  const out = resilientOutput();
  const stateDir = resolve(o.stateDir);
  const hosts = intOption(o.hosts, '--hosts', 1, 26);
  const vmCount = intOption(o.vms, '--vms', 0, 100);
  const basePort = intOption(o.basePort, '--base-port', 0, 65_000);
  // A VM's QMP socket lives at <stateDir>/hosts/<id>/vm/<ns>/<name>/<uid>/qmp.sock: a unix socket
  // path holds at most 107 bytes. Say so now rather than as a failed VM later.
  const longestHost = hosts === 1 ? o.hostPrefix : `${o.hostPrefix}-a`;
  const qmp = join(stateDir, 'hosts', longestHost, 'vm', 'default', `demo-${Math.max(vmCount, 1)}`, 'f'.repeat(32), 'qmp.sock');
  if (Buffer.byteLength(qmp) > 107) {
    throw new InvalidArgumentError('--state-dir', `${stateDir} is too long: a VM's QMP socket (${qmp}) would exceed the 107-byte limit of unix socket paths by ${Buffer.byteLength(qmp) - 107}; use a shorter --state-dir or --host-prefix`);
  }
  // Set once the cluster exists; the signal handlers (installed first) read them.
  const live: { teardown?: DevTeardown; watch?: DeathWatch; finishing?: Promise<void> } = {};
  const policy = new SignalPolicy(parentIsNpm());
  const onSignal = (sig: SupervisorSignal) => {
    const action = policy.next(sig, performance.now());
    if (action === 'start') {
      if (!live.teardown) process.exit(130); // nothing started yet
      const what = sig === 'SIGINT' ? 'Ctrl-C (SIGINT)' : sig === 'SIGHUP' ? 'SIGHUP (terminal closed)' : sig;
      out(`\n[dev] ${what}: cleaning up: deleting the VMs through their agents, then stopping the agents, the controller and etcd, and removing ${stateDir}. Ctrl-C again to force.`);
      void finish();
    } else if (action === 'force') {
      live.teardown?.force(sig === 'SIGINT' ? 'Ctrl-C again' : `${sig} again`);
    }
  };
  for (const s of SUPERVISOR_SIGNALS) process.on(s, () => onSignal(s));
  const finish = (code?: number): Promise<void> => {
    live.finishing ??= (async () => {
      const r = await live.teardown!.run();
      await live.watch?.release();
      process.exit(code ?? (r.clean ? 0 : 1));
    })();
    return live.finishing;
  };
  process.on('uncaughtException', (err) => {
    out(`[dev] internal error: ${err.stack ?? messageOf(err)}; cleaning up`);
    if (live.teardown) void finish(1);
    else process.exit(1);
  });

  if (!(await cleanStateDir(stateDir, out, 'up'))) throw new TetherError('FAILED_PRECONDITION', `leftovers of an earlier dev cluster in ${stateDir} could not all be removed (see above)`);
  const createdRoot = mkdirSync(stateDir, { recursive: true });
  const c = new DevCluster({ stateDir, hosts, hostPrefix: o.hostPrefix, basePort, ...(createdRoot ? { createdRoot } : {}), log: out });
  live.watch = startDeathWatch(stateDir);
  live.teardown = new DevTeardown({ scope: () => c.scope(), cluster: c, ...(createdRoot ? { createdRoot } : {}), out });
  try {
    await c.start();
    const controlAt = await c.listenControl(o.control);
    const store = new EtcdControllerStore({ endpoints: c.etcd.endpoints(), security: c.etcd.clientTls() });
    try {
      for (let i = 0; i < vmCount && !live.finishing; i++) {
        const spec = specFromFlintlock({ id: `demo-${i + 1}`, namespace: 'default', vcpu: 1, memory_in_mb: 96, interfaces: [{ device_id: 'eth0', type: 'TAP', address: { address: `10.99.${i}.2/24` } }] });
        const created = await clusterCreate(store, spec);
        out(`[dev] ${created.key} placed on ${created.record.hostId ?? '(no host: ' + (created.record.reason ?? '') + ')'} as ${created.record.uid}`);
      }
      const t0 = Date.now();
      while (!live.finishing) {
        const vms = await store.listVms(5000);
        if (vms.every((v) => v.record.phase === 'running' || v.record.phase === 'failed')) {
          const failed = vms.filter((v) => v.record.phase === 'failed');
          out(`[dev] ${vms.length - failed.length} of ${vms.length} VM(s) running after ${((Date.now() - t0) / 1000).toFixed(1)}s${failed.map((v) => `; ${v.key} failed: ${v.record.reason ?? 'see its agent.log'}`).join('')}`);
          break;
        }
        if (Date.now() - t0 > 120_000) throw new TetherError('TIMEOUT', 'demo VMs not running after 2 minutes');
        await new Promise((r) => setTimeout(r, 500));
      }
    } finally {
      await store.close();
    }
    if (live.finishing) return;
    // etcd runs with TLS and client-certificate auth: the shell needs the CA and a client certificate too.
    const envLines = Object.entries({ ...c.etcd.clientEnv(), ...agentClientEnv(c.apiSecurity) }).map(([k, v]) => `  export ${k}=${v}`).join('\n');
    const b = c.hosts[1] ?? c.hosts[0]!;
    const ctl = controlAt === DEV_CONTROL_ADDR ? '' : ` --control ${controlAt}`;
    const sd = o.stateDir === DEFAULT_STATE_DIR ? '' : ` --state-dir ${stateDir}`;
    out(`
[dev] ready: ${c.hosts.map((h) => `${h.id} (gRPC ${h.agent.grpc}, HTTP ${h.agent.http})`).join(', ')}.
In another terminal:
${envLines}
  npx tether host list                                   # hosts: state, epoch, lease age, fence countdown
  npx tether vm list                                     # VMs cluster-wide: phase and host
  npx tether dev partition ${b.id} --for 60s${ctl}            # cut ${b.id} off from etcd (a cut cable)
  npx tether gc status --agent-http ${b.agent.http}      # on ${b.id}: detached, watchdog countdown, fencing, clean
  npx tether events --follow                             # the cluster's view: detached, fenced, rescheduled, rejoined
  npx tether gc report --agent-http ${b.agent.http}      # what ${b.id} did: stops, removals, audit, rejoin
Logs: ${stateDir}/hosts/<host>/agent.log and ${stateDir}/controller.log (removed with the rest on exit)
Ctrl-C here deletes the VMs, stops everything, removes ${stateDir} and checks that nothing is left
(Ctrl-C twice: forced). If this process is killed outright: npx tether dev down${sd}`);
  } catch (err) {
    if (live.finishing) return; // interrupted by a signal: the cleanup reports
    out(`[dev] start failed: ${messageOf(err)}; cleaning up`);
    await finish(1);
  }
}

/** `tether dev up|down|partition|heal|status`: a local cluster to watch detached-host GC happen. */
export function registerDevCommands(program: Command): void {
  const dev = program.command('dev').description('local dev cluster: 3-member etcd, agents behind fault proxies, a controller, demo VMs');
  dev
    .command('up')
    .description('start etcd, agents, a controller and demo VMs, and wait (Ctrl-C deletes the VMs, stops everything, removes the dev state and checks nothing is left; twice: forced)')
    .option('--state-dir <dir>', 'where the dev cluster keeps its state (removed on exit)', DEFAULT_STATE_DIR)
    .option('--hosts <n>', 'hosts (agents) to start', '3')
    .option('--vms <n>', 'demo VMs to create, spread over the hosts by capacity', '3')
    .option('--host-prefix <id>', 'host ids are <prefix>-a, <prefix>-b, ... (one host: <prefix>)', 'dev-host')
    .option('--base-port <port>', "first agent's gRPC port (its HTTP port +1, next host +2); 0 picks free ports", '9090')
    .option('--control <addr>', 'address of the control endpoint (dev partition|heal|status); port 0 picks one', DEV_CONTROL_ADDR)
    .action(devUp);
  dev
    .command('down')
    .description("clean up after a dev cluster whose `dev up` was killed outright: its VMs, taps, agents, guardians, controller, etcd and dev state; a running `dev up` is asked to stop (SIGTERM)")
    .option('--state-dir <dir>', 'the dev cluster state dir', DEFAULT_STATE_DIR)
    .option('--from-watch', 'internal: started by the death watch of a `dev up` that died')
    .action(async (o: { stateDir: string; fromWatch?: boolean }) => {
      const out = resilientOutput();
      const clean = await cleanStateDir(resolve(o.stateDir), out, o.fromWatch ? 'watch' : 'down');
      process.exitCode = clean ? 0 : 1;
    });
  const where = (c: Command) => c.option('--control <addr>', `the dev cluster's control endpoint (default: from the state dir, else ${DEV_CONTROL_ADDR})`).option('--state-dir <dir>', 'the dev cluster state dir', DEFAULT_STATE_DIR);
  where(dev.command('partition [host]'))
    .description('cut a host off from etcd: connections stay open, bytes vanish')
    .option('--for <duration>', 'heal by itself after this long (default: until `tether dev heal`)')
    .action(async (host: string | undefined, o: { for?: string; control?: string; stateDir: string }) => {
      const forMs = o.for ? parseDuration(o.for) : undefined;
      await control(o, 'POST', 'partition', { host, forMs });
      console.log(`${host ?? 'the host'} is cut off from etcd${forMs ? ` for ${o.for}` : ''}; watch: npx tether gc status`);
    });
  where(dev.command('heal [host]'))
    .description('reconnect a host to etcd')
    .action(async (host: string | undefined, o: { control?: string; stateDir: string }) => {
      await control(o, 'POST', 'heal', { host });
      console.log(`${host ?? 'the host'} reconnected`);
    });
  where(dev.command('status'))
    .description('the dev cluster: etcd endpoints, hosts, partitions')
    .option('--json', 'machine-readable output')
    .action(async (o: { json?: boolean; control?: string; stateDir: string }) => {
      const s = await control<{ etcd: string[]; hosts: { id: string; grpc: string; http: string; partitioned: boolean }[] }>(o, 'GET', 'status');
      if (o.json) return console.log(JSON.stringify(s, null, 2));
      console.log(`etcd: ${s.etcd.join(', ')}`);
      for (const h of s.hosts) console.log(`${h.id}  gRPC ${h.grpc}  HTTP ${h.http}  ${h.partitioned ? 'PARTITIONED' : 'connected'}`);
    });
}
