/**
 * The dev cluster's cleanup: what the supervisor does on Ctrl-C (SIGINT), SIGTERM or SIGHUP, and
 * what `tether dev down` does for a supervisor that is gone.
 *
 * Graceful (first signal, supervisor only): stop the controller (nothing is fenced or rescheduled
 * while the VMs go), heal every partition, mark the cluster's VM records `deleting` and delete every
 * VM through its agent's API, wait (bounded) until each agent lists no VM, the real host shows no
 * QEMU and no tap of that host, and the agent's own audit is clean; then stop the agents (SIGTERM:
 * each tells its guardian to exit), the proxies and etcd.
 *
 * Forced (a second signal, a step that failed or timed out, `dev down`): SIGKILL the children's
 * process groups, then every process that passes the ownership checks of dev-scan.ts (agent,
 * controller, guardian, QEMU, etcd), delete every tap whose alias is `tether:<devHostId>:…`.
 * It always runs after the graceful part too, as a sweep that normally finds nothing.
 *
 * Then the dev paths are removed (`hosts/<id>`, `etcd`, `controller.log`, `dev-cluster.json`, the
 * agents' host-id locks that name this state dir and no live agent, then the state dir and the
 * folders `dev up` created for it, when empty), and a last scan of the real
 * host decides the verdict: clean (nothing of the dev cluster is left: no marked process, no marked
 * device, no dev path) or not (what is left, and why).
 *
 * Invariants: nothing is signalled unless its ownership checks pass right before the signal (or it
 * is this process's own unreaped child); nothing outside the dev paths is deleted; a marked device
 * is deleted only when it is a tap carrying exactly its owner mark (Iproute2Network.deleteTap).
 */
import { removeHostCgroup } from './host-probe.js';
import type { ChildProcess } from 'node:child_process';
import { existsSync, readdirSync, rmdirSync, rmSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { EtcdControllerStore } from '../adapters/etcd/etcd-controller-store.js';
import { Iproute2Network } from '../adapters/iproute2/iproute2-network.js';
import { DEFAULT_QEMU_BINARY } from '../adapters/qemu/accel-probe.js';
import { parseOwnerFromArgv } from '../adapters/qemu/owner-mark.js';
import { VmOwnership } from '../adapters/qemu/process-owner.js';
import type { AuditResult } from '../agent/gc/gc-report.js';
import { adminCall } from '../api/http/admin-server.js';
import { clusterDelete } from '../cli/cluster-vms.js';
import { TetherError, messageOf } from '../domain/errors.js';
import type { DevCluster, DevHost } from './dev-cluster.js';
import { devHostDir } from './dev-state.js';
import { devHostLocks, devPaths, optionValue, reclassify, scanDev, type DevProcess, type DevProcessKind, type DevScan, type DevScope } from './dev-scan.js';

/** Options of {@link DevTeardown}. */
export interface DevTeardownOptions {
  /** What to look for (called again at each step: hosts may have been added). */
  readonly scope: () => DevScope;
  /** The live cluster (supervisor): enables the graceful part and the kill of its own children. */
  readonly cluster?: DevCluster;
  /** The topmost folder `dev up` created for the state dir: removed at the end when empty. */
  readonly createdRoot?: string;
  readonly out: (line: string) => void;
  /** Bound on waiting for the agents to delete the VMs. Default 30 s. */
  readonly vmWaitMs?: number;
  /** Without a live cluster: SIGTERM agents, controller and etcd first (5 s) before SIGKILL. */
  readonly politeFirst?: boolean;
}

/** Verdict of a teardown. */
export interface DevTeardownResult {
  readonly clean: boolean;
  /** The final line (also printed). */
  readonly summary: string;
  readonly tookMs: number;
  /** What was removed, by kind (VMs counted by uid). */
  readonly removed: Readonly<Record<'vms' | 'taps' | DevProcessKind, number>>;
  readonly left: DevScan;
}

const KILL_ORDER: readonly DevProcessKind[] = ['agent', 'controller', 'guardian', 'qemu', 'etcd'];
const PROGRESS_EVERY_MS = 2000;

class Forced extends Error {}

function alive(p: ChildProcess | undefined): p is ChildProcess {
  return p !== undefined && p.pid !== undefined && p.exitCode === null && p.signalCode === null;
}

/**
 * SIGKILLs `p`'s process group (it was spawned detached, so the group is its pid), or `p` alone
 * when it has no group of its own. Only while `p` is unreaped, so neither pid can have been reused.
 */
function killGroup(p: ChildProcess): void {
  if (!alive(p)) return;
  try {
    process.kill(-p.pid!, 'SIGKILL');
  } catch {
    try {
      p.kill('SIGKILL');
    } catch {
      /* gone */
    }
  }
}

function exited(p: ChildProcess): Promise<void> {
  return alive(p) ? new Promise((r) => p.once('exit', () => r())) : Promise.resolve();
}

function plural(n: number, one: string, many = `${one}s`): string {
  return `${n} ${n === 1 ? one : many}`;
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** One cleanup run; see the module comment. Create one per supervisor; {@link run} runs once. */
export class DevTeardown {
  private forced = false;
  private readonly abort = new AbortController();
  private t0 = performance.now();
  private readonly seenVms = new Map<string, string>();
  private readonly seenTaps = new Set<string>();
  private readonly seenProcs = new Map<number, DevProcessKind>();
  private deletedThroughAgents = 0;
  private removedPaths = 0;
  private readonly notes: string[] = [];
  private readonly net = new Iproute2Network();

  constructor(private readonly opts: DevTeardownOptions) {}

  private out(line: string): void {
    this.opts.out(line);
  }

  private elapsed(): string {
    return `${((performance.now() - this.t0) / 1000).toFixed(1)}s`;
  }

  /** Skip (the rest of) the graceful part: the forced sweep starts at once. Idempotent. */
  force(reason: string): void {
    if (this.forced) return;
    this.forced = true;
    this.out(`[dev] ${reason}: skipping the graceful stop; SIGKILL to the agents, the controller, etcd and every dev VM, then removing the taps and folders`);
    this.abort.abort();
  }

  /** True once {@link force} was called. */
  get isForced(): boolean {
    return this.forced;
  }

  /** Runs the cleanup (graceful part first unless `forced`) and resolves with the verdict. */
  async run(options: { forced?: boolean } = {}): Promise<DevTeardownResult> {
    this.t0 = performance.now();
    if (options.forced) this.forced = true;
    await this.scan();
    const c = this.opts.cluster;
    if (c && !this.forced) {
      try {
        await this.graceful(c);
      } catch (err) {
        if (!(err instanceof Forced) && !this.forced) this.out(`[dev] graceful stop failed (${messageOf(err)}); forcing the rest`);
      }
    }
    await this.sweep();
    this.removePaths();
    return this.verify();
  }

  /** Races `p` against {@link force}. */
  private guard<T>(p: Promise<T>): Promise<T> {
    if (this.forced) return Promise.reject(new Forced());
    return new Promise<T>((resolve, reject) => {
      const onAbort = () => reject(new Forced());
      this.abort.signal.addEventListener('abort', onAbort, { once: true });
      p.then(
        (v) => {
          this.abort.signal.removeEventListener('abort', onAbort);
          resolve(v);
        },
        (e: unknown) => {
          this.abort.signal.removeEventListener('abort', onAbort);
          reject(e);
        },
      );
    });
  }

  /** Scans the real host and remembers what it saw (for the "removed" count). */
  private async scan(): Promise<DevScan> {
    const s = await scanDev(this.opts.scope(), existsSync);
    for (const p of s.processes) {
      if (!this.seenProcs.has(p.pid)) this.seenProcs.set(p.pid, p.kind);
      if (p.kind === 'qemu') {
        const o = parseOwnerFromArgv(p.argv);
        if (o) this.seenVms.set(o.uid, o.hostId);
      }
    }
    for (const l of s.links) {
      this.seenTaps.add(l.name);
      this.seenVms.set(l.vmUid, l.hostId);
    }
    return s;
  }

  private async graceful(c: DevCluster): Promise<void> {
    c.abortStart();
    await this.guard(c.closeControl());
    if (alive(c.controller)) {
      this.out('[dev] stopping the controller (nothing is fenced or rescheduled while the VMs go)');
      await this.guard(this.stopChild(c.controller, 5000));
    }
    await this.guard(c.healAll());
    await this.deleteVms(c);
    const live = c.hosts.filter((h) => alive(h.agent.proc));
    if (live.length > 0) {
      this.out(`[dev] stopping ${plural(live.length, 'agent')}: ${live.map((h) => h.id).join(', ')}`);
      await this.guard(Promise.all(live.map(async (h) => {
        await this.stopChild(h.agent.proc!, 5000);
        await h.agent.kill().catch(() => undefined); // exited: only closes its API client
      })));
    }
    await this.guard(Promise.all(c.hosts.map((h) => h.proxies.close().catch(() => undefined))));
    this.out('[dev] stopping etcd');
    await this.guard(c.etcd.stop());
    const guardians = (await this.guard(this.scan())).processes.filter((p) => p.kind === 'guardian');
    if (guardians.length > 0) {
      this.out(`[dev] waiting for ${plural(guardians.length, 'guardian')} to exit (their agents told them to)`);
      await this.guard(this.waitGone(guardians.map((p) => p.pid), 5000));
    }
  }

  /** SIGTERM, then SIGKILL to the group after `graceMs`. */
  private async stopChild(p: ChildProcess, graceMs: number): Promise<void> {
    if (!alive(p)) return;
    const gone = exited(p);
    p.kill('SIGTERM');
    const inTime = await Promise.race([gone.then(() => true), sleep(graceMs).then(() => false)]);
    if (!inTime) {
      killGroup(p);
      await gone;
    }
  }

  private async deleteVms(c: DevCluster): Promise<void> {
    const hosts = c.hosts.filter((h) => alive(h.agent.proc));
    for (const h of c.hosts.filter((x) => !alive(x.agent.proc))) {
      const p = h.agent.proc;
      this.out(`[dev] ${h.id}: its agent is not running (${p?.signalCode ?? `exit ${p?.exitCode ?? '?'}`}); the forced sweep removes what it left`);
    }
    try {
      const store = new EtcdControllerStore({ endpoints: c.etcd.endpoints(), security: c.etcd.clientTls() });
      try {
        const records = await this.guard(store.listVms(5000));
        let marked = 0;
        for (const r of records) {
          if (r.record.phase === 'deleting') continue;
          await this.guard(clusterDelete(store, r.key)).then(() => marked++, (err: unknown) => {
            if (err instanceof Forced) throw err;
            this.out(`[dev] could not mark ${r.key} deleting: ${messageOf(err)}`);
          });
        }
        if (records.length > 0) this.out(`[dev] ${plural(marked, 'cluster VM record')} marked deleting`);
      } finally {
        void store.close().catch(() => undefined);
      }
    } catch (err) {
      if (err instanceof Forced) throw err;
      this.out(`[dev] could not mark the cluster's VM records deleting (${messageOf(err)}); deleting through the agents only`);
    }
    const before = new Map<string, number>();
    await this.guard(Promise.all(hosts.map(async (h) => {
      try {
        const vms = await h.agent.api().list();
        before.set(h.id, vms.length);
        for (const vm of vms) {
          await h.agent.api().delete(vm.spec.uid).catch((err: unknown) => {
            if (!(err instanceof TetherError && err.code === 'NOT_FOUND')) this.out(`[dev] ${h.id}: deleting VM ${vm.spec.uid}: ${messageOf(err)}`);
          });
        }
        if (vms.length > 0) this.out(`[dev] ${h.id}: deleting ${plural(vms.length, 'VM')} (${vms.map((v) => `${v.spec.namespace}/${v.spec.id}`).join(', ')})`);
      } catch (err) {
        this.out(`[dev] ${h.id}: its agent did not list its VMs (${messageOf(err)}); the forced sweep will remove them`);
      }
    })));
    const bound = this.opts.vmWaitMs ?? 30_000;
    const t0 = performance.now();
    let lastProgress = t0;
    for (;;) {
      const s = await this.guard(this.scan());
      const pending = await this.guard(Promise.all(hosts.map(async (h) => {
        const local = await h.agent.api().list().then((l) => l.length, () => undefined);
        const qemus = s.processes.filter((p) => p.kind === 'qemu' && p.hostId === h.id).length;
        const taps = s.links.filter((l) => l.hostId === h.id).length;
        return { h, local, qemus, taps };
      })));
      const waiting = pending.filter((p) => p.local !== 0 || p.qemus > 0 || p.taps > 0);
      if (waiting.length === 0) break;
      const now = performance.now();
      const describe = waiting.map((p) => `${p.h.id}: ${p.local === undefined ? 'agent not answering' : plural(p.local, 'VM')} listed, ${plural(p.qemus, 'QEMU')}, ${plural(p.taps, 'tap')}`).join('; ');
      if (now - t0 > bound) {
        this.out(`[dev] VMs still there after ${((now - t0) / 1000).toFixed(0)}s (${describe}); the forced sweep removes them`);
        this.notes.push('some VMs needed the forced sweep');
        return;
      }
      if (now - lastProgress >= PROGRESS_EVERY_MS) {
        lastProgress = now;
        this.out(`[dev] waiting for the agents to stop their VMs (${((now - t0) / 1000).toFixed(0)}s of at most ${bound / 1000}s): ${describe}`);
      }
      await this.guard(sleep(250));
    }
    for (const h of hosts) {
      const n = before.get(h.id) ?? 0;
      this.deletedThroughAgents += n;
      await this.confirm(h, n);
    }
  }

  /** The agent's own audit of its host: no VM process, tap or VM folder left. */
  private async confirm(h: DevHost, deleted: number): Promise<void> {
    try {
      const audit = await this.guard(adminCall<AuditResult>(h.agent.admin, 'GET', 'gc/audit', undefined, 5000));
      if (audit.clean) this.out(`[dev] ${h.id}: ${plural(deleted, 'VM')} deleted; its agent's audit finds no VM process, tap or VM folder left`);
      else this.out(`[dev] ${h.id}: ${plural(deleted, 'VM')} deleted, but its agent's audit still finds ${[...audit.leaks, ...audit.missing].join(', ')}; the forced sweep follows`);
    } catch (err) {
      if (err instanceof Forced) throw err;
      this.out(`[dev] ${h.id}: ${plural(deleted, 'VM')} deleted; its agent's audit did not answer (${messageOf(err)})`);
    }
  }

  /** Waits until none of `pids` is alive (argv readable), at most `ms`. */
  private async waitGone(pids: readonly number[], ms: number): Promise<boolean> {
    const t0 = performance.now();
    for (;;) {
      const scope = this.opts.scope();
      if (pids.every((pid) => reclassify(pid, scope) === undefined)) return true;
      if (performance.now() - t0 > ms) return false;
      await sleep(100);
    }
  }

  /**
   * Signals `p` if it still passes its ownership checks: dev-scan's, re-read now, and for a QEMU
   * the agent's own full check (VmOwnership: pid file under the host's state dir naming the pid,
   * mark, executable, start time).
   */
  private async signal(p: DevProcess, signal: NodeJS.Signals): Promise<boolean> {
    const again = reclassify(p.pid, this.opts.scope());
    if (!again?.owned || again.kind !== p.kind) return false;
    if (again.kind === 'qemu') {
      const owner = parseOwnerFromArgv(again.argv);
      const pidFile = optionValue(again.argv, '-pidfile');
      if (!owner || !pidFile) return false;
      const verdict = await new VmOwnership({ stateRoot: devHostDir(this.opts.scope().stateDir, owner.hostId), hostId: owner.hostId, qemuBinary: DEFAULT_QEMU_BINARY })
        .verify(pidFile, { pid: p.pid, uid: owner.uid, hostId: owner.hostId })
        .catch((err: unknown) => ({ owned: false as const, reason: messageOf(err) }));
      if (!verdict.owned) {
        this.notes.push(`QEMU ${p.pid} not touched: ${verdict.reason}`);
        return false;
      }
    }
    try {
      process.kill(p.pid, signal);
      return true;
    } catch {
      return false;
    }
  }

  /** The forced part; also the sweep after a graceful run (then it normally finds nothing). */
  private async sweep(): Promise<void> {
    const c = this.opts.cluster;
    if (c) {
      c.abortStart();
      await c.closeControl().catch(() => undefined);
      const kids = [...c.hosts.map((h) => h.agent.proc), c.controller].filter(alive);
      if (kids.length > 0) {
        this.out(`[dev] SIGKILL to ${plural(kids.length, 'child process group')} (agents, controller)`);
        for (const k of kids) killGroup(k);
        await Promise.race([Promise.all(kids.map(exited)), sleep(3000)]);
      }
      for (const h of c.hosts) await h.proxies.close().catch(() => undefined);
      const members = Array.from({ length: c.etcd.size }, (_, i) => i).filter((i) => c.etcd.isRunning(i));
      if (members.length > 0) this.out(`[dev] SIGKILL to ${plural(members.length, 'etcd member')}`);
      await Promise.all(members.map((i) => c.etcd.kill(i).catch(() => undefined)));
      await c.etcd.stop().catch(() => undefined);
    } else if (this.opts.politeFirst) {
      const s = await this.scan();
      const polite = s.processes.filter((p) => p.owned && (p.kind === 'agent' || p.kind === 'controller' || p.kind === 'etcd'));
      if (polite.length > 0) {
        this.out(`[dev] SIGTERM to ${polite.map((p) => `${p.kind} ${p.pid}`).join(', ')}`);
        for (const p of polite) await this.signal(p, 'SIGTERM');
        await this.waitGone(polite.map((p) => p.pid), 5000);
      }
    }
    let reported = false;
    for (let round = 0; round < 6; round++) {
      const s = await this.scan();
      const owned = s.processes.filter((p) => p.owned);
      const taps = s.links.filter((l) => l.isTap);
      if (owned.length === 0 && taps.length === 0 && s.processes.length === 0) return;
      if (owned.length > 0 || taps.length > 0) {
        const what = [...KILL_ORDER.map((k) => [k, owned.filter((p) => p.kind === k).length] as const).filter(([, n]) => n > 0).map(([k, n]) => `${n} ${k}`), ...(taps.length ? [plural(taps.length, 'tap')] : [])];
        this.out(`[dev] ${reported ? 'still found' : 'found'} ${what.join(', ')} on the host: removing`);
        reported = true;
      }
      const killed: number[] = [];
      for (const kind of KILL_ORDER) for (const p of owned.filter((x) => x.kind === kind)) if (await this.signal(p, 'SIGKILL')) killed.push(p.pid);
      if (killed.length > 0) await this.waitGone(killed, 3000);
      for (const t of taps) {
        await this.net.deleteTap(t.name, { hostId: t.hostId, vmUid: t.vmUid }).catch((err: unknown) => this.out(`[dev] tap ${t.name} (${t.alias}): ${messageOf(err)}`));
      }
      // Marked but not (yet) owned processes: a QEMU launcher that is still exiting, a guardian
      // whose pid file is being written. Give them a moment and look again.
      if (owned.length === 0 && taps.length === 0) await sleep(300);
    }
  }

  /** Removes the dev paths, then the state dir and the folders made for it when they are empty. */
  private removePaths(): void {
    const scope = this.opts.scope();
    // A host-id lock stays only while the agent that holds it lives (then it is listed as left).
    const heldLocks = new Set(devHostLocks(scope).filter((l) => l.pid !== undefined && reclassify(l.pid, scope)?.kind === 'agent').map((l) => l.path));
    // The dev hosts' per-host VM cgroups (empty once their QEMUs are gone).
    for (const id of scope.hostIds) removeHostCgroup(id);
    for (const p of devPaths(scope)) {
      if (heldLocks.has(p)) continue;
      try {
        if (existsSync(p)) this.removedPaths++;
        rmSync(p, { recursive: true, force: true });
      } catch (err) {
        this.out(`[dev] could not remove ${p}: ${messageOf(err)}`);
      }
    }
    const rmdirIfEmpty = (dir: string): boolean => {
      try {
        if (readdirSync(dir).length > 0) return false;
        rmdirSync(dir);
        return true;
      } catch {
        return !existsSync(dir);
      }
    };
    rmdirIfEmpty(join(scope.stateDir, 'hosts'));
    if (!rmdirIfEmpty(scope.stateDir)) {
      let rest: string[] = [];
      try {
        rest = readdirSync(scope.stateDir);
      } catch {
        /* gone */
      }
      if (rest.length > 0) this.notes.push(`kept ${scope.stateDir}: it also holds ${rest.join(', ')}, which this dev cluster did not make`);
      return;
    }
    const root = this.opts.createdRoot;
    if (root && scope.stateDir.startsWith(`${root}/`)) {
      for (let d = dirname(scope.stateDir); d.length >= root.length && (d === root || d.startsWith(`${root}/`)); d = dirname(d)) {
        if (!rmdirIfEmpty(d) || d === root) break;
      }
    }
  }

  private async verify(): Promise<DevTeardownResult> {
    let s = await this.scan();
    for (let i = 0; i < 30 && (s.processes.length > 0 || s.links.length > 0 || s.paths.length > 0); i++) {
      await sleep(100);
      s = await this.scan();
    }
    const leftPids = new Set(s.processes.map((p) => p.pid));
    const removedKind = (k: DevProcessKind) => [...this.seenProcs].filter(([pid, kind]) => kind === k && !leftPids.has(pid)).length;
    const leftVms = new Set([...s.processes.flatMap((p) => (p.kind === 'qemu' ? [parseOwnerFromArgv(p.argv)?.uid] : [])), ...s.links.map((l) => l.vmUid)]);
    const removed = {
      vms: [...this.seenVms.keys()].filter((u) => !leftVms.has(u)).length,
      taps: [...this.seenTaps].filter((t) => !s.links.some((l) => l.name === t)).length,
      qemu: removedKind('qemu'),
      guardian: removedKind('guardian'),
      agent: removedKind('agent'),
      controller: removedKind('controller'),
      etcd: removedKind('etcd'),
    };
    const clean = s.processes.length === 0 && s.links.length === 0 && s.paths.length === 0;
    const parts = [
      `${plural(removed.vms, 'VM')} (${plural(removed.qemu, 'QEMU process', 'QEMU processes')}, ${plural(removed.taps, 'tap')}${this.deletedThroughAgents > 0 ? `; ${this.deletedThroughAgents} deleted by their agents` : ''})`,
      plural(removed.agent, 'agent'),
      ...(removed.guardian > 0 ? [plural(removed.guardian, 'guardian')] : []),
      removed.controller > 0 ? 'the controller' : 'no controller',
      plural(removed.etcd, 'etcd member'),
      `the dev state in ${this.opts.scope().stateDir}`,
    ];
    const scope = this.opts.scope();
    const extra = [...this.notes, ...(s.foreign.length > 0 ? [`not Tether's, left alone: ${s.foreign.map((f) => `pid ${f.pid} (${f.argv.join(' ').slice(0, 80)})`).join(', ')}`] : [])];
    let summary: string;
    const removedAny = Object.values(removed).some((n) => n > 0) || this.removedPaths > 0;
    if (clean && !removedAny) {
      summary = `[dev] nothing left: a scan of the host finds no process, tap or folder of this dev cluster (hosts ${scope.hostIds.join(', ') || 'none'}, state dir ${scope.stateDir})${extra.length ? `. Note: ${extra.join('; ')}` : ''}`;
    } else if (clean) {
      summary = `[dev] clean after ${this.elapsed()}: removed ${parts.join(', ')}; a scan of the host finds no process, tap or folder of this dev cluster left (hosts ${scope.hostIds.join(', ')})${extra.length ? `. Note: ${extra.join('; ')}` : ''}`;
    } else {
      const left = [
        ...s.processes.map((p) => `pid ${p.pid} ${p.kind}${p.hostId ? ` of ${p.hostId}` : ''} (${p.why})`),
        ...s.links.map((l) => `${l.isTap ? 'tap' : 'device'} ${l.name} (alias ${l.alias}${l.isTap ? '' : ': not a tap, never deleted automatically'})`),
        ...s.paths.map((p) => `${p} (could not be removed)`),
      ];
      summary = `[dev] NOT clean after ${this.elapsed()}: removed ${parts.join(', ')}; LEFT: ${left.join('; ')}${extra.length ? `. Note: ${extra.join('; ')}` : ''}. Remove these by hand.`;
    }
    this.out(summary);
    return { clean, summary, tookMs: performance.now() - this.t0, removed, left: s };
  }
}
