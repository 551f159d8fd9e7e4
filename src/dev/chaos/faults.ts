import type { ChaosCluster } from './chaos-cluster.js';
import type { ChaosFaultKind, PlannedFault } from './nemesis.js';

/** A fault as applied to the real cluster (wall-clock ms). */
export interface AppliedFault {
  readonly n: number;
  readonly kind: ChaosFaultKind;
  /** Resolved target: a host id, a controller id, `etcd-<i>`. */
  target: string;
  readonly planned: PlannedFault;
  /** When it was applied. */
  at: number;
  /** When it was healed (resumed, reconnected, restarted); absent while active or when nothing heals. */
  until?: number;
  /** Set when it could not be applied (target gone, not owned): nothing was done. */
  skipped?: string;
  detail?: string;
  /** Numbers measured while it ran (ms relative to `at` unless named otherwise). */
  readonly measured: Record<string, number | string | boolean | null>;
  heal?: () => Promise<void>;
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Polls `fn` every `everyMs` until it returns true or `ms` passes; resolves with the elapsed ms or undefined. */
async function timeUntil(fn: () => Promise<boolean> | boolean, ms: number, everyMs = 200): Promise<number | undefined> {
  const t0 = Date.now();
  while (Date.now() - t0 < ms) {
    if (await Promise.resolve().then(fn).catch(() => false)) return Date.now() - t0;
    await sleep(everyMs);
  }
  return undefined;
}

/**
 * Applies `plan` to the real cluster and returns it with its `heal` (called by the runner at
 * `at + durationMs`, or at the end). Never throws for an unavailable target: the fault is then
 * recorded as skipped, with why.
 */
export async function applyFault(c: ChaosCluster, plan: PlannedFault, n: number): Promise<AppliedFault> {
  const f: AppliedFault = { n, kind: plan.kind, target: plan.target, planned: plan, at: Date.now(), measured: {} };
  const etcd = c.dev.etcd;
  switch (plan.kind) {
    case 'partition': {
      const h = c.host(plan.target);
      await h.proxies.blackhole();
      f.detail = 'host<->etcd cut both ways (blackhole proxy: connections stay open, bytes vanish)';
      f.heal = async () => {
        await h.proxies.heal();
      };
      break;
    }
    case 'partition-oneway': {
      const h = c.host(plan.target);
      h.proxies.dropReplies();
      f.detail = 'one way: the host\'s requests reach etcd (keepalives renew its lease), every answer is lost';
      f.heal = async () => {
        await h.proxies.heal();
      };
      break;
    }
    case 'agent-pause': {
      if (!c.signalAgent(plan.target, 'SIGSTOP')) {
        f.skipped = 'agent not running';
        break;
      }
      f.detail = `SIGSTOP to agent pid ${c.host(plan.target).agent.proc?.pid}`;
      f.heal = async () => {
        c.signalAgent(plan.target, 'SIGCONT');
      };
      break;
    }
    case 'agent-kill': {
      const a = c.host(plan.target).agent;
      const pid = a.proc?.pid;
      await a.kill('SIGKILL');
      f.detail = `SIGKILL to agent pid ${pid}; restarted after ${(plan.durationMs / 1000).toFixed(1)}s`;
      f.heal = async () => {
        const t0 = Date.now();
        await a.spawn();
        c.dev.saveState();
        await a.waitReady().then(
          () => (f.measured.agentReadyAfterRestartMs = Date.now() - t0),
          (err: unknown) => (f.measured.agentRestartError = String(err).slice(0, 300)),
        );
      };
      break;
    }
    case 'guardian-pause':
    case 'guardian-kill': {
      const pid = c.guardianPid(plan.target);
      if (pid === undefined) {
        f.skipped = 'no guardian of this host passes the ownership checks now (being restarted by its agent?)';
        break;
      }
      if (plan.kind === 'guardian-pause') {
        c.signalGuardian(plan.target, pid, 'SIGSTOP');
        f.detail = `SIGSTOP to guardian pid ${pid}`;
        f.heal = async () => {
          c.signalGuardian(plan.target, pid, 'SIGCONT');
        };
      } else {
        c.signalGuardian(plan.target, pid, 'SIGKILL');
        f.detail = `SIGKILL to guardian pid ${pid} (its agent restarts it)`;
        void timeUntil(() => {
          const now = c.guardianPid(plan.target);
          return now !== undefined && now !== pid;
        }, 60_000).then((ms) => (f.measured.guardianBackAfterMs = ms ?? null));
      }
      break;
    }
    case 'controller-pause':
    case 'controller-kill': {
      const ctl = await c.controller(plan.target);
      const leader = await c.store!.getLeader(3000).catch(() => undefined);
      f.target = ctl.id;
      f.measured.wasLeader = leader?.candidateId === ctl.id;
      if (plan.kind === 'controller-pause') {
        if (!c.signalController(ctl, 'SIGSTOP')) {
          f.skipped = 'controller not running';
          break;
        }
        f.detail = `SIGSTOP to controller pid ${ctl.proc?.pid}`;
        f.heal = async () => {
          c.signalController(ctl, 'SIGCONT');
        };
      } else {
        const pid = ctl.proc?.pid;
        await c.killController(ctl);
        f.detail = `SIGKILL to controller pid ${pid}; restarted after ${(plan.durationMs / 1000).toFixed(1)}s`;
        f.heal = async () => {
          c.spawnController(ctl);
        };
      }
      if (f.measured.wasLeader) {
        void timeUntil(async () => {
          const l = await c.store!.getLeader(2000);
          return l !== undefined && l.candidateId !== ctl.id;
        }, 60_000, 250).then((ms) => (f.measured.otherControllerLeaderAfterMs = ms ?? null));
      }
      break;
    }
    case 'etcd-leader-kill': {
      const i = await etcd.leaderIndex(2000).catch(() => undefined);
      if (i === undefined) {
        f.skipped = 'no etcd leader found';
        break;
      }
      f.target = `etcd-${i}`;
      await etcd.kill(i);
      f.detail = `SIGKILL to the etcd leader (member ${i}); restarted after ${(plan.durationMs / 1000).toFixed(1)}s`;
      void timeUntil(async () => {
        const l = await etcd.leaderIndex(1000);
        return l !== undefined && l !== i;
      }, 30_000, 100).then((ms) => (f.measured.newEtcdLeaderAfterMs = ms ?? null));
      f.heal = async () => {
        const t0 = Date.now();
        await etcd.restart(i, { wait: true, timeoutMs: 30_000 }).then(
          () => (f.measured.memberRejoinedAfterRestartMs = Date.now() - t0),
          (err: unknown) => (f.measured.memberRestartError = String(err).slice(0, 300)),
        );
      };
      break;
    }
    case 'etcd-member-pause': {
      const i = Number(plan.target.slice('etcd-'.length));
      if (!etcd.isRunning(i)) {
        f.skipped = 'member not running';
        break;
      }
      const leader = await etcd.leaderIndex(1000).catch(() => undefined);
      f.measured.wasLeader = leader === i;
      etcd.pause(i);
      f.detail = `SIGSTOP to etcd member ${i}${leader === i ? ' (the leader)' : ''}`;
      f.heal = async () => {
        etcd.resume(i);
      };
      break;
    }
  }
  return f;
}
