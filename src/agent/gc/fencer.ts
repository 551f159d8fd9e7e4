import { messageOf } from '../../domain/errors.js';
import { vmDir, type HostContext } from '../host-context.js';
import type { VmStopReport } from './gc-report.js';

/** Runs `fn` over `items` with at most `limit` in flight. */
export async function forEachLimited<T>(items: readonly T[], limit: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  const worker = async () => {
    while (next < items.length) await fn(items[next++]!);
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
}

/** Options of {@link fenceVms}. */
export interface FenceOptions {
  readonly stopGraceMs: number;
  readonly killTimeoutMs: number;
  /** VMs stopped at once (default 16). */
  readonly concurrency?: number;
}

/**
 * Stops every VM this host runs — graceful first, forced after `stopGraceMs` — in parallel with
 * bounded concurrency, and records per VM how and when it stopped. Also stops QEMU processes that
 * carry this host's mark but are missing from the inventory (leaks). Never throws: a VM that could
 * not be stopped is reported as `failed` and left to the cleaner.
 */
export async function fenceVms(ctx: HostContext, opts: FenceOptions, onStop?: (r: VmStopReport) => void): Promise<VmStopReport[]> {
  const t0 = ctx.clock.nowMono();
  const vms = ctx.inventory.listVms();
  const known = new Set(vms.map((v) => v.uid));
  const targets = vms.map((vm) => ({ uid: vm.uid, vm: `${vm.spec.id.namespace}/${vm.spec.id.name}`, dir: vmDir(ctx.files, vm.spec.id.namespace, vm.spec.id.name, vm.uid) }));
  for (const p of await ctx.vmm.listOwned(ctx.hostId)) {
    if (!known.has(p.uid)) targets.push({ uid: p.uid, vm: '(not in inventory)', dir: p.stateDir ?? '' });
  }
  const reports: VmStopReport[] = [];
  const record = (r: VmStopReport) => {
    reports.push(r);
    onStop?.(r);
  };
  await forEachLimited(targets, opts.concurrency ?? 16, async (t) => {
    const started = ctx.clock.nowMono();
    try {
      const r = await ctx.vmm.stop(t.uid, t.dir, { graceMs: opts.stopGraceMs, killTimeoutMs: opts.killTimeoutMs });
      record({ uid: t.uid, vm: t.vm, method: r.method, tookMs: Math.round(r.tookMs), stoppedAfterMs: Math.round(ctx.clock.nowMono() - t0) });
      if (known.has(t.uid)) ctx.inventory.setPhase(t.uid, 'stopped', ctx.clock.now());
      ctx.inventory.addEvent('vm-fenced', ctx.clock.now(), { method: r.method, tookMs: Math.round(r.tookMs) }, t.uid);
    } catch (err) {
      record({ uid: t.uid, vm: t.vm, method: 'failed', tookMs: Math.round(ctx.clock.nowMono() - started), stoppedAfterMs: Math.round(ctx.clock.nowMono() - t0), error: messageOf(err) });
      ctx.logger.error({ vmUid: t.uid, err: messageOf(err) }, 'fence: could not stop VM');
    }
  });
  return reports;
}
