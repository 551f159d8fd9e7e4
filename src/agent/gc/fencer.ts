import { messageOf } from '../../domain/errors.js';
import { forEachLimited } from '../../domain/for-each-limited.js';
import { vmDir, type HostContext } from '../host-context.js';
import type { VmStopReport } from './gc-report.js';

/** Options of {@link fenceVms}. */
export interface FenceOptions {
  readonly stopGraceMs: number;
  readonly killTimeoutMs: number;
  /** VMs stopped at once (default 64: a stop is mostly waiting for the guest). */
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
  const reports: VmStopReport[] = [];
  const record = (r: VmStopReport) => {
    reports.push(r);
    onStop?.(r);
  };
  const stopOne = async (t: { uid: string; vm: string; dir: () => string }) => {
    const started = ctx.clock.nowMono();
    try {
      const r = await ctx.vmm.stop(t.uid, t.dir(), { graceMs: opts.stopGraceMs, killTimeoutMs: opts.killTimeoutMs });
      record({ uid: t.uid, vm: t.vm, method: r.method, tookMs: Math.round(r.tookMs), stoppedAfterMs: Math.round(ctx.clock.nowMono() - t0) });
      if (known.has(t.uid)) ctx.inventory.setPhase(t.uid, 'stopped', ctx.clock.now());
      ctx.inventory.addEvent('vm-fenced', ctx.clock.now(), { method: r.method, tookMs: Math.round(r.tookMs) }, t.uid);
    } catch (err) {
      record({ uid: t.uid, vm: t.vm, method: 'failed', tookMs: Math.round(ctx.clock.nowMono() - started), stoppedAfterMs: Math.round(ctx.clock.nowMono() - t0), error: messageOf(err) });
      ctx.logger.error({ vmUid: t.uid, err: messageOf(err) }, 'fence: could not stop VM');
    }
  };
  const limit = opts.concurrency ?? 64;
  // Known VMs are stopped at once; the /proc scan for marked QEMUs the inventory lacks runs alongside.
  await Promise.all([
    forEachLimited(
      // The folder is built inside stopOne's try: a row vmDir refuses (INVALID_ARGUMENT) is reported failed, never aborts the fence.
      vms.map((vm) => ({ uid: vm.uid, vm: `${vm.spec.id.namespace}/${vm.spec.id.name}`, dir: () => vmDir(ctx.files, vm.spec.id.namespace, vm.spec.id.name, vm.uid) })),
      limit,
      stopOne,
    ),
    (async () => {
      const leaked = (await ctx.vmm.listOwned(ctx.hostId)).filter((p) => !known.has(p.uid));
      await forEachLimited(leaked.map((p) => ({ uid: p.uid, vm: '(not in inventory)', dir: () => p.stateDir ?? '' })), limit, stopOne);
    })(),
  ]);
  return reports;
}
