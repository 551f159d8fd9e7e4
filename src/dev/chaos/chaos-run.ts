import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { AuditResult } from '../../agent/gc/gc-report.js';
import type { GcStatus } from '../../agent/gc/host-gc.js';
import { specFromFlintlock } from '../../api/grpc/spec-mapping.js';
import { adminCall } from '../../api/http/admin-server.js';
import { clusterCreate } from '../../cli/cluster-vms.js';
import type { ClusterEvent } from '../../domain/cluster-event.js';
import { messageOf } from '../../domain/errors.js';
import { guardianFiles } from '../../domain/guardian.js';
import { clusterEventsFrom, type TimelineInput, type TimelineViolation } from '../../domain/timeline.js';
import { scanDev } from '../dev-scan.js';
import { devHostDir } from '../dev-state.js';
import { DevTeardown } from '../dev-teardown.js';
import { ChaosCluster, CHAOS_AGENT_TIMINGS, CHAOS_CONTROLLER_ARGS } from './chaos-cluster.js';
import { DoubleRunSampler, incarnationsByKey } from './double-run.js';
import { applyFault, type AppliedFault } from './faults.js';
import { faultGroup, planFaults, type PlannedFault } from './nemesis.js';
import { HostObserver } from './observe.js';

/** Options of {@link ChaosRun}. */
export interface ChaosOptions {
  /** Length of the fault phase. */
  readonly minutes: number;
  readonly seed: number;
  /** Where the report, the timeline and the logs go (created). */
  readonly outDir: string;
  /** Number of VMs (default 4). */
  readonly vms?: number;
  /** Bound on the wait for convergence after healing (default 120 000 ms). */
  readonly convergeTimeoutMs?: number;
  readonly log: (line: string) => void;
}

/** The JSON report (`chaos-report.json`). */
export interface ChaosReport {
  readonly version: 1;
  readonly seed: number;
  readonly minutes: number;
  readonly startedAt: string;
  /** Wall ms of t=0 (the start of the fault phase). */
  readonly origin: number;
  readonly hosts: readonly string[];
  readonly controllers: readonly string[];
  readonly vms: readonly string[];
  readonly agentTimings: readonly string[];
  readonly controllerArgs: readonly string[];
  readonly setupMs: number;
  readonly faultPhaseMs: number;
  readonly plan: readonly PlannedFault[];
  readonly faults: readonly Omit<AppliedFault, 'heal' | 'planned'>[];
  readonly perFault: readonly Record<string, unknown>[];
  /** Per fault kind: how many were applied, and min / median / max of every measured number (seconds or ms as named). */
  readonly summary: Record<string, { readonly applied: number; readonly numbers: Record<string, { min: number; median: number; max: number; n: number }> }>;
  /** Every QEMU incarnation the sampler saw: first and last seen alive, seconds from t=0. */
  readonly sampler: { readonly samples: number; readonly maxGapMs: number; readonly incarnations: readonly { key: string; uid: string; hostId: string; firstSeenS: number; lastSeenS: number }[] };
  readonly convergence: { readonly converged: boolean; readonly afterHealMs: number | null; readonly lastProblems: readonly string[] };
  readonly audit: Record<string, unknown>;
  readonly violations: readonly TimelineViolation[];
  readonly ok: boolean;
  readonly timeline: string;
  readonly logs: string;
}

/** Per kind: count, and min / median / max of each numeric field (those of `vms[]` as `vm.<field>`). */
export function summarize(perFault: readonly Record<string, unknown>[]): ChaosReport['summary'] {
  const out: Record<string, { applied: number; values: Map<string, number[]> }> = {};
  const add = (kind: string, k: string, v: unknown) => {
    if (typeof v !== 'number' || !Number.isFinite(v) || k === 'n' || k === 'atS') return;
    const m = out[kind]!.values;
    m.set(k, [...(m.get(k) ?? []), v]);
  };
  for (const p of perFault) {
    const kind = String(p.kind);
    out[kind] ??= { applied: 0, values: new Map() };
    out[kind].applied++;
    for (const [k, v] of Object.entries(p)) add(kind, k, v);
    for (const vm of Array.isArray(p.vms) ? (p.vms as Record<string, unknown>[]) : []) for (const [k, v] of Object.entries(vm)) add(kind, `vm.${k}`, v);
  }
  return Object.fromEntries(Object.entries(out).map(([kind, { applied, values }]) => [kind, {
    applied,
    numbers: Object.fromEntries([...values].map(([k, vs]) => {
      const sorted = [...vs].sort((a, b) => a - b);
      return [k, { min: sorted[0]!, median: sorted[Math.floor(sorted.length / 2)]!, max: sorted.at(-1)!, n: sorted.length }];
    })),
  }]));
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/**
 * One chaos run on real parts; see docs/chaos.md. {@link run} starts the cluster, creates the VMs,
 * runs the seeded nemesis for `minutes` with the double-run sampler on, heals everything, waits
 * (bounded) for convergence, audits every host, writes the report and the timeline, and cleans up.
 * {@link interrupt} (Ctrl-C) makes it heal and clean up at its next step.
 *
 * Violations (each makes `ok` false): `double-run` (one VM key with two live QEMU incarnations in one
 * sample), `not-converged` (within the bound after healing: every host attached with its guardian,
 * every VM record running on a host, exactly one QEMU incarnation per VM, that of the record, on the
 * record's host, and no QEMU of a VM without a record), `audit` (an agent's own audit or the dev scan
 * finds a leftover or an unowned marked process), `setup` (the cluster or the VMs never came up).
 */
export class ChaosRun {
  readonly c: ChaosCluster;
  private readonly stateDir: string;
  private readonly logDir: string;
  private interrupted = false;
  private readonly faults: AppliedFault[] = [];
  private readonly violations: TimelineViolation[] = [];
  private sampler: DoubleRunSampler | undefined;
  private observer: HostObserver | undefined;
  readonly teardown: DevTeardown;

  constructor(private readonly o: ChaosOptions) {
    mkdirSync(o.outDir, { recursive: true });
    this.logDir = join(o.outDir, 'logs');
    this.stateDir = mkdtempSync('/tmp/tether-test-chx-');
    this.c = new ChaosCluster(this.stateDir, this.logDir, o.log);
    this.teardown = new DevTeardown({ scope: () => this.c.dev.scope(), cluster: this.c.dev, out: o.log, vmWaitMs: 40_000 });
  }

  /** The state dir of the cluster (for the death watch). */
  get clusterStateDir(): string {
    return this.stateDir;
  }

  /** Stop injecting, heal and clean up at the next step. */
  interrupt(): void {
    this.interrupted = true;
  }

  private log(line: string): void {
    this.o.log(line);
  }

  private violation(invariant: string, detail: string, at = Date.now()): void {
    this.violations.push({ at, invariant, detail });
    this.log(`[chaos] VIOLATION ${invariant}: ${detail}`);
  }

  /** Runs everything; resolves with the report (already written). Always cleans up. */
  async run(): Promise<ChaosReport> {
    const startedAt = Date.now();
    const vmKeys = Array.from({ length: this.o.vms ?? 4 }, (_, i) => `chaos/v${i + 1}`);
    const runMs = Math.round(this.o.minutes * 60_000);
    const plan = planFaults({ seed: this.o.seed, runMs, hostIds: this.c.hostIds, controllers: 2, etcdMembers: 3 });
    let origin = startedAt;
    let setupMs = 0;
    let faultPhaseMs = 0;
    let convergence: ChaosReport['convergence'] = { converged: false, afterHealMs: null, lastProblems: ['not reached'] };
    let audit: Record<string, unknown> = {};
    let events: ClusterEvent[] = [];
    const journals = new Map<string, string>();
    try {
      this.log(`[chaos] seed ${this.o.seed}, ${this.o.minutes} min of faults, ${plan.length} planned; cluster state in ${this.stateDir}, report in ${this.o.outDir}`);
      await this.c.start();
      await this.createVms(vmKeys);
      setupMs = Date.now() - startedAt;
      this.sampler = new DoubleRunSampler(this.c.hostIds, 100, (d) => this.violation('double-run', `${d.key} has ${d.incarnations.length} live QEMU incarnations: ${d.incarnations.map((i) => `${i.uid} on ${i.hostId}`).join(', ')}`, d.at));
      this.observer = new HostObserver(this.c);
      origin = Date.now();
      this.log(`[chaos] cluster up in ${(setupMs / 1000).toFixed(1)}s; fault phase starts (t=0)`);
      await this.faultPhase(plan, origin, runMs);
      faultPhaseMs = Date.now() - origin;
      const healedAt = Date.now();
      await this.healAll();
      this.log(`[chaos] everything healed at t+${((Date.now() - origin) / 1000).toFixed(1)}s; waiting for convergence`);
      convergence = await this.converge(vmKeys, healedAt);
      audit = await this.audit();
    } catch (err) {
      this.violation('setup', `the run stopped early: ${messageOf(err)}`);
    } finally {
      await this.healAll().catch(() => undefined);
      await this.observer?.stop().catch(() => undefined);
      await this.sampler?.stop();
      events = await this.c.store?.listEvents(1000, 5000).then((r) => clusterEventsFrom(r.events), () => []) ?? [];
      for (const id of this.c.hostIds) journals.set(id, guardianFiles(devHostDir(this.stateDir, id)).journal);
      this.copyLogs();
    }
    const timeline = this.timelineInput(origin, events, journals);
    const perFault = this.perFault(events, origin);
    const report: ChaosReport = {
      version: 1,
      seed: this.o.seed,
      minutes: this.o.minutes,
      startedAt: new Date(startedAt).toISOString(),
      origin,
      hosts: this.c.hostIds,
      controllers: this.c.controllers.map((c) => c.id),
      vms: vmKeys,
      agentTimings: CHAOS_AGENT_TIMINGS,
      controllerArgs: CHAOS_CONTROLLER_ARGS,
      setupMs,
      faultPhaseMs,
      plan,
      faults: this.faults.map(({ heal: _h, planned: _p, ...f }) => f),
      perFault,
      summary: summarize(perFault),
      sampler: {
        samples: this.sampler?.samples ?? 0,
        maxGapMs: this.sampler?.maxGapMs ?? 0,
        incarnations: [...(this.sampler?.seen.values() ?? [])].map((s) => ({ key: s.key, uid: s.uid, hostId: s.hostId, firstSeenS: (s.firstSeen - origin) / 1000, lastSeenS: (s.lastSeen - origin) / 1000 })),
      },
      convergence,
      audit,
      violations: this.violations,
      ok: this.violations.length === 0,
      timeline: join(this.o.outDir, 'chaos-timeline.json'),
      logs: this.logDir,
    };
    writeFileSync(join(this.o.outDir, 'chaos-timeline.json'), `${JSON.stringify(timeline, null, 1)}\n`);
    writeFileSync(join(this.o.outDir, 'chaos-report.json'), `${JSON.stringify(report, null, 1)}\n`);
    return report;
  }

  /** Cleans up everything the run started (controllers first, then the dev teardown). */
  async cleanup(): Promise<boolean> {
    await this.healAll().catch(() => undefined);
    await this.c.stopControllers();
    await this.c.close();
    const r = await this.teardown.run();
    return r.clean;
  }

  private async createVms(keys: readonly string[]): Promise<void> {
    // All at once (the agents' ready timeout is 120 s: four TCG guests booting together on a loaded
    // 2-core machine missed 60 s); a failed VM is terminal, so the run stops early then.
    const store = this.c.store!;
    for (const [i, key] of keys.entries()) {
      const name = key.split('/')[1]!;
      const spec = specFromFlintlock({ id: name, namespace: 'chaos', vcpu: 1, memory_in_mb: 96, interfaces: [{ device_id: 'eth0', type: 'TAP', address: { address: `10.98.${i}.2/24` } }] });
      const created = await clusterCreate(store, spec);
      this.log(`[chaos] ${created.key} placed on ${created.record.hostId ?? '(none)'} as ${created.record.uid}`);
    }
    const t0 = Date.now();
    for (;;) {
      if (this.interrupted) throw new Error('interrupted');
      const vms = await store.listVms(5000);
      if (vms.length === keys.length && vms.every((v) => v.record.phase === 'running')) return;
      if (vms.some((v) => v.record.phase === 'failed') || Date.now() - t0 > 150_000) {
        throw new Error(`VMs not all running after ${((Date.now() - t0) / 1000).toFixed(0)} s: ${vms.map((v) => `${v.key} ${v.record.phase} ${v.record.reason ?? ''}`).join('; ')}`);
      }
      await sleep(500);
    }
  }

  private async faultPhase(plan: readonly PlannedFault[], origin: number, runMs: number): Promise<void> {
    const healing: Promise<void>[] = [];
    const t = () => `t+${((Date.now() - origin) / 1000).toFixed(1)}s`;
    for (const [i, p] of plan.entries()) {
      while (!this.interrupted && Date.now() - origin < p.atMs) await sleep(Math.min(200, p.atMs - (Date.now() - origin)));
      if (this.interrupted) break;
      const f = await applyFault(this.c, p, i + 1).catch((err: unknown): AppliedFault => ({ n: i + 1, kind: p.kind, target: p.target, planned: p, at: Date.now(), measured: {}, skipped: `failed to apply: ${messageOf(err)}` }));
      this.faults.push(f);
      this.log(`[chaos] ${t()} fault #${f.n} ${f.kind} ${f.target}${f.skipped ? ` SKIPPED (${f.skipped})` : ` for ${(p.durationMs / 1000).toFixed(1)}s: ${f.detail ?? ''}`}`);
      if (f.heal) {
        healing.push((async () => {
          const healAt = f.at + p.durationMs;
          while (!this.interrupted && Date.now() < healAt) await sleep(Math.min(200, healAt - Date.now()));
          await this.healOne(f);
          this.log(`[chaos] ${t()} healed #${f.n} ${f.kind} ${f.target}`);
        })());
      }
    }
    while (!this.interrupted && Date.now() - origin < runMs) await sleep(200);
    await Promise.all(healing);
  }

  private async healOne(f: AppliedFault): Promise<void> {
    const h = f.heal;
    if (!h) return;
    f.heal = undefined;
    await h().catch((err: unknown) => {
      f.measured.healError = messageOf(err);
    });
    f.until = Date.now();
  }

  /** Heals every fault still active (idempotent), then makes sure every part runs and nothing is paused. */
  private async healAll(): Promise<void> {
    await Promise.all(this.faults.map((f) => this.healOne(f)));
    const etcd = this.c.dev.etcd;
    for (let i = 0; i < etcd.size; i++) if (etcd.isPaused(i)) etcd.resume(i);
    for (const h of this.c.dev.hosts) {
      await h.proxies.heal().catch(() => undefined);
      if (h.agent.running) h.agent.proc!.kill('SIGCONT');
    }
    for (const ctl of this.c.controllers) this.c.signalController(ctl, 'SIGCONT');
  }

  /** Waits (bounded) until the cluster is whole again; see the class comment. */
  private async converge(vmKeys: readonly string[], healedAt: number): Promise<ChaosReport['convergence']> {
    const bound = this.o.convergeTimeoutMs ?? 120_000;
    let problems: string[] = [];
    for (;;) {
      problems = await this.problems(vmKeys);
      if (problems.length === 0) {
        const ms = Date.now() - healedAt;
        this.log(`[chaos] converged ${(ms / 1000).toFixed(1)}s after healing: ${this.c.hostIds.length} hosts attached, ${vmKeys.length} VMs each running once where its record says`);
        return { converged: true, afterHealMs: ms, lastProblems: [] };
      }
      if (this.interrupted || Date.now() - healedAt > bound) break;
      await sleep(1000);
    }
    this.violation('not-converged', `${this.interrupted ? 'interrupted' : `not converged ${(bound / 1000).toFixed(0)}s after healing`}: ${problems.join('; ')}`);
    return { converged: false, afterHealMs: null, lastProblems: problems };
  }

  private async problems(vmKeys: readonly string[]): Promise<string[]> {
    const out: string[] = [];
    for (const h of this.c.dev.hosts) {
      const s = h.agent.running ? await adminCall<GcStatus>(h.agent.admin, 'GET', 'gc/status', undefined, 2000).catch(() => undefined) : undefined;
      if (!s) out.push(`${h.id}: agent not answering`);
      else if (s.phase !== 'attached') out.push(`${h.id}: ${s.phase}`);
      else if (s.guardianRunning === false) out.push(`${h.id}: guardian not running`);
    }
    const store = this.c.store!;
    const leader = await store.getLeader(3000).catch(() => undefined);
    if (!leader) out.push('no controller leader');
    let records;
    try {
      records = await store.listVms(3000);
    } catch (err) {
      out.push(`cannot list VM records: ${messageOf(err)}`);
      return out;
    }
    const inc = incarnationsByKey(this.c.hostIds);
    for (const key of vmKeys) {
      const r = records.find((v) => v.key === key)?.record;
      const live = inc.get(key) ?? [];
      if (!r) out.push(`${key}: no record`);
      else if (r.phase !== 'running' || !r.hostId) out.push(`${key}: ${r.phase} on ${r.hostId ?? 'no host'}`);
      else if (live.length !== 1 || live[0]!.uid !== r.uid || live[0]!.hostId !== r.hostId) out.push(`${key}: record says ${r.uid} on ${r.hostId}, process table has ${live.map((l) => `${l.uid} on ${l.hostId}`).join(', ') || 'none'}`);
    }
    for (const [key, live] of inc) if (!vmKeys.includes(key)) out.push(`${key}: QEMU running without a record (${live.map((l) => l.uid).join(',')})`);
    for (const r of records) if (!vmKeys.includes(r.key)) out.push(`${r.key}: unexpected record`);
    return out;
  }

  /** Every agent's own audit and gc status, and a dev scan of the real host. */
  private async audit(): Promise<Record<string, unknown>> {
    const hosts: Record<string, unknown> = {};
    for (const h of this.c.dev.hosts) {
      const a = await adminCall<AuditResult>(h.agent.admin, 'GET', 'gc/audit', undefined, 5000).catch((err: unknown) => ({ error: messageOf(err) }));
      const s = await adminCall<GcStatus>(h.agent.admin, 'GET', 'gc/status', undefined, 3000).catch((err: unknown) => ({ error: messageOf(err) }));
      hosts[h.id] = { audit: a, status: s };
      if ('error' in a) this.violation('audit', `${h.id}: its agent's audit did not answer: ${a.error}`);
      else if (!a.clean) this.violation('audit', `${h.id}: its agent's audit finds leaks [${a.leaks.join(', ')}] missing [${a.missing.join(', ')}]`);
    }
    const scan = await scanDev(this.c.dev.scope(), existsSync);
    const unowned = scan.processes.filter((p) => !p.owned);
    for (const p of unowned) this.violation('audit', `dev scan: ${p.kind} pid ${p.pid}${p.hostId ? ` of ${p.hostId}` : ''} not owned: ${p.why}`);
    const qemus = scan.processes.filter((p) => p.kind === 'qemu').length;
    const taps = scan.links.filter((l) => l.isTap).length;
    if (taps !== qemus) this.violation('audit', `dev scan: ${taps} marked taps for ${qemus} QEMU processes`);
    return { hosts, scan: { processes: scan.processes.map((p) => ({ pid: p.pid, kind: p.kind, hostId: p.hostId, owned: p.owned })), taps, foreign: scan.foreign.length } };
  }

  /** Per-fault measured numbers from the sampler, the host observer and the cluster's events. */
  private perFault(events: readonly ClusterEvent[], origin: number): Record<string, unknown>[] {
    const seen = [...(this.sampler?.seen.values() ?? [])];
    const end = Math.max(0, ...seen.map((s) => s.lastSeen));
    const sec = (ms: number | undefined) => (ms === undefined ? null : Math.round(ms / 100) / 10);
    return this.faults.filter((f) => !f.skipped).map((f) => {
      const base: Record<string, unknown> = { n: f.n, kind: f.kind, target: f.target, atS: sec(f.at - origin), durationS: sec((f.until ?? f.at) - f.at), ...f.measured };
      const hostId = this.c.hostIds.includes(f.target) ? f.target : undefined;
      // What follows a fault is its doing until the next fault on the same host (or etcd, or
      // controllers) begins, at most 45 s after the heal (10 s for etcd and controller faults).
      const next = this.faults.find((g) => g.at > f.at && !g.skipped && faultGroup(g.kind, g.target) === faultGroup(f.kind, f.target));
      const windowEnd = Math.min((f.until ?? f.at) + (hostId ? 45_000 : 10_000), next?.at ?? Infinity);
      const hostEvents = (kind: string) => events.filter((e) => e.kind === kind && 'hostId' in e && (hostId ? e.hostId === hostId : true) && e.at >= f.at && e.at <= windowEnd);
      if (hostId) {
        const vms = seen.filter((s) => s.hostId === hostId && s.firstSeen <= f.at && s.lastSeen >= f.at - 500);
        base.vms = vms.map((s) => {
          const gone = s.lastSeen < end - 1000 && s.lastSeen <= windowEnd ? s.lastSeen - f.at : undefined;
          const after = seen.filter((x) => x.key === s.key && x.uid !== s.uid && x.firstSeen >= f.at && x.firstSeen <= windowEnd + 60_000).sort((a, b) => a.firstSeen - b.firstSeen)[0];
          const moved = gone !== undefined ? after : undefined;
          return { key: s.key, uid: s.uid, goneAfterS: sec(gone), runningElsewhereAfterS: sec(moved ? moved.firstSeen - f.at : undefined), on: moved?.hostId ?? null, gapS: sec(moved && gone !== undefined ? moved.firstSeen - s.lastSeen : undefined) };
        });
        const phases = this.observer?.phases.get(hostId) ?? [];
        const firstPhase = (p: string) => phases.find((x) => x.phase === p && x.at >= f.at && x.at <= windowEnd);
        base.hostDetachedAfterS = sec(firstPhase('detached') ? firstPhase('detached')!.at - f.at : undefined);
        base.hostFencingAfterS = sec(firstPhase('fencing') ? firstPhase('fencing')!.at - f.at : undefined);
        const back = f.until !== undefined ? phases.find((x) => x.phase === 'attached' && x.at >= f.until!) : undefined;
        base.attachedAgainAfterHealS = sec(back && f.until !== undefined ? back.at - f.until : undefined);
      }
      const detached = hostEvents('host-detached')[0];
      const fenced = hostEvents('host-fenced')[0];
      base.clusterDetachedAfterS = sec(detached ? detached.at - f.at : undefined);
      base.clusterFencedAfterS = sec(fenced ? fenced.at - f.at : undefined);
      if (!hostId) base.hostsDetachedMeanwhile = [...new Set(hostEvents('host-detached').map((e) => ('hostId' in e ? e.hostId : '')))];
      return base;
    });
  }

  private timelineInput(origin: number, events: readonly ClusterEvent[], journals: Map<string, string>): TimelineInput {
    return {
      source: 'chaos',
      title: `chaos seed ${this.o.seed} ${new Date(origin).toISOString().slice(0, 16)}Z`,
      origin,
      cluster: events,
      hosts: this.c.hostIds.map((hostId) => ({ hostId, events: this.observer?.timeline(hostId, journals.get(hostId), (uid) => this.sampler?.seen.get(uid)?.lastSeen) ?? [] })),
      faults: this.faults.filter((f) => !f.skipped).map((f) => ({ at: f.at, ...(f.until !== undefined ? { until: f.until } : {}), kind: f.kind, target: f.target, ...(f.detail ? { detail: f.detail } : {}) })),
      violations: this.violations,
    };
  }

  /** Copies the agents', guardians' and etcd members' logs into the report's logs folder (before teardown deletes them). */
  private copyLogs(): void {
    mkdirSync(this.logDir, { recursive: true });
    const copy = (from: string, to: string) => {
      try {
        if (existsSync(from)) copyFileSync(from, join(this.logDir, to));
      } catch {
        /* best effort */
      }
    };
    for (const id of this.c.hostIds) {
      const dir = devHostDir(this.stateDir, id);
      copy(join(dir, 'agent.log'), `${id}-agent.log`);
      const g = guardianFiles(dir);
      copy(g.journal, `${id}-guardian-journal.jsonl`);
      copy(g.log, `${id}-guardian.log`);
    }
    const etcd = this.c.dev.etcd;
    try {
      for (const f of readdirSync(etcd.logDir)) copy(join(etcd.logDir, f), `etcd-${f}`);
    } catch {
      /* not started */
    }
  }
}
