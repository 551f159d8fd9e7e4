import { messageOf } from '../domain/errors.js';
import { runPlan } from '../domain/plan.js';
import { vmDir, type HostContext } from './host-context.js';
import { createPlanner } from './plans/create-plan.js';
import { deletePlanner } from './plans/delete-plan.js';

/**
 * Drives each VM towards its desired state with the create/delete plans.
 *
 * Invariants: at most one plan runs per VM at a time (a kick while one runs is coalesced into one
 * more pass, like a one-slot channel); a failed create removes everything it made and keeps the
 * VM record as `failed` with the error; nothing is retried in a loop.
 */
export class Reconciler {
  private readonly running = new Map<string, Promise<void>>();
  private readonly again = new Set<string>();

  constructor(private readonly ctx: HostContext) {}

  /** Asks for a reconcile pass of `uid`; returns when that pass (or a later one) finished. */
  kick(uid: string): Promise<void> {
    const current = this.running.get(uid);
    if (current) {
      this.again.add(uid);
      return current;
    }
    const p = this.loop(uid).finally(() => this.running.delete(uid));
    this.running.set(uid, p);
    return p;
  }

  /** Resolves when no plan is running. */
  async idle(): Promise<void> {
    while (this.running.size > 0) await Promise.all([...this.running.values()]);
  }

  /**
   * After a (re)start: finishes interrupted creates and deletes, adopts running VMs, and marks
   * VMs whose process vanished while the agent was down as failed (their leftovers removed).
   */
  async resumeAll(): Promise<void> {
    const { inventory, vmm, files } = this.ctx;
    for (const vm of inventory.listVms()) {
      if (vm.desired === 'present' && vm.phase === 'running') {
        let dir: string;
        try {
          dir = vmDir(files, vm.spec.id.namespace, vm.spec.id.name, vm.uid);
        } catch (err) {
          // A row whose names fail validation (written before records were validated): reported, never a crash at start.
          this.ctx.logger.error({ vmUid: vm.uid, err: messageOf(err) }, 'vm row has invalid names: left as it is');
          inventory.setPhase(vm.uid, 'failed', this.ctx.clock.now(), messageOf(err));
          continue;
        }
        const st = await vmm.status(vm.uid, dir);
        if (st.running) {
          inventory.addEvent('vm-adopted', this.ctx.clock.now(), { pid: st.pid }, vm.uid);
          this.ctx.logger.info({ vmUid: vm.uid, pid: st.pid }, 'vm adopted');
          continue;
        }
        inventory.setPhase(vm.uid, 'failed', this.ctx.clock.now(), 'the VM process exited while the agent was not running');
      }
      void this.kick(vm.uid);
    }
  }

  private async loop(uid: string): Promise<void> {
    do {
      this.again.delete(uid);
      try {
        await this.pass(uid);
      } catch (err) {
        // Never a crash of the agent (callers `void` the kick): logged; the next kick passes again.
        this.ctx.logger.error({ vmUid: uid, err: messageOf(err) }, 'reconcile pass failed');
      }
    } while (this.again.has(uid));
  }

  private async pass(uid: string): Promise<void> {
    const { inventory, clock, logger } = this.ctx;
    const vm = inventory.getVm(uid);
    if (!vm) return;
    const log = logger.child({ vmUid: uid, vm: `${vm.spec.id.namespace}/${vm.spec.id.name}` });
    const journal = (plan: string) => (p: { kind: string; step: string }) => {
      if (p.kind === 'step-done') inventory.addEvent('plan-step', clock.now(), { plan, step: p.step }, uid);
      log.debug({ plan, ...p }, 'plan progress');
    };

    if (vm.desired === 'absent') {
      if (vm.phase !== 'deleting') inventory.setPhase(uid, 'deleting', clock.now());
      try {
        await runPlan(`delete ${uid}`, deletePlanner(this.ctx, uid), { onProgress: journal('delete') });
        inventory.addEvent('vm-deleted', clock.now(), {}, uid);
        log.info({}, 'vm deleted');
      } catch (err) {
        log.error({ err: messageOf(err) }, 'delete failed');
        // The row may be gone already (the plan's last step, or the host GC's wipe meanwhile).
        if (inventory.getVm(uid)) inventory.setPhase(uid, 'deleting', clock.now(), messageOf(err));
      }
      return;
    }

    if (vm.phase === 'failed') {
      // Leftovers of a failed create (or of a VM that died) are removed; the record stays.
      await this.cleanupFailed(uid);
      return;
    }
    if (vm.phase === 'running') return;
    if (vm.phase !== 'creating') inventory.setPhase(uid, 'creating', clock.now());
    try {
      const t0 = clock.nowMono();
      await runPlan(`create ${uid}`, createPlanner(this.ctx, uid), { onProgress: journal('create') });
      const vmNow = inventory.getVm(uid);
      if (vmNow?.desired === 'present') {
        inventory.addEvent('vm-running', clock.now(), { tookMs: Math.round(clock.nowMono() - t0) }, uid);
        log.info({ tookMs: Math.round(clock.nowMono() - t0) }, 'vm running');
      }
    } catch (err) {
      if (inventory.getVm(uid)?.desired === 'present') {
        log.error({ err: messageOf(err) }, 'create failed; removing what it made');
        inventory.setPhase(uid, 'failed', clock.now(), messageOf(err));
      } else log.info({ err: messageOf(err) }, 'create abandoned: the VM is no longer wanted; removing what it made');
      await this.cleanupFailed(uid);
    }
  }

  private async cleanupFailed(uid: string): Promise<void> {
    if (this.ctx.inventory.listResources(uid).length === 0) return;
    try {
      await runPlan(`cleanup ${uid}`, deletePlanner(this.ctx, uid, { keepRecord: true }));
    } catch (err) {
      this.ctx.logger.error({ vmUid: uid, err: messageOf(err) }, 'cleanup after failed create failed');
    }
  }
}
