import { messageOf } from '../../domain/errors.js';
import { forEachLimited } from '../../domain/for-each-limited.js';
import { runPlan } from '../../domain/plan.js';
import type { HostContext } from '../host-context.js';
import { deletePlanner } from '../plans/delete-plan.js';
import { auditHost } from './audit.js';
import type { AuditResult } from './gc-report.js';

/** VMs whose delete plans run at once (each is mostly waiting on `ip` and the file system). */
const CLEANUP_CONCURRENCY = 32;

/** Result of {@link cleanHost}. */
export interface CleanResult {
  readonly removed: string[];
  readonly failures: string[];
  readonly audit: AuditResult;
}

/**
 * Removes every resource this host created, then proves it with an audit of the real system.
 *
 * 1. every VM: desired `absent`, then its delete plan (journaled in the inventory, so an agent
 *    killed at any point resumes it on restart);
 * 2. owned leaks the inventory does not know (tap devices with this host's mark, VM folders under
 *    the state dir, marked QEMU processes): removed — they carry our mark, so they are ours;
 * 3. the audit, expecting nothing: the host is clean only when it finds nothing.
 */
export async function cleanHost(ctx: HostContext): Promise<CleanResult> {
  const removed: string[] = [];
  const failures: string[] = [];
  const now = () => ctx.clock.now();
  await forEachLimited(ctx.inventory.listVms(), CLEANUP_CONCURRENCY, async (vm) => {
    if (vm.desired !== 'absent') ctx.inventory.setDesired(vm.uid, 'absent', now());
    try {
      const r = await runPlan(`gc delete ${vm.uid}`, deletePlanner(ctx, vm.uid), {
        onProgress: (p) => {
          if (p.kind === 'step-done') ctx.inventory.addEvent('gc-step', now(), { step: p.step }, vm.uid);
        },
      });
      removed.push(...r.stepsDone);
    } catch (err) {
      failures.push(`${vm.uid}: ${messageOf(err)}`);
    }
  });
  // Leaks: marked with this host's id but unknown to the inventory.
  const before = await auditHost(ctx, { expectNothing: true });
  const procDirs = before.leaks.some((l) => l.startsWith('process:'))
    ? new Map((await ctx.vmm.listOwned(ctx.hostId)).map((p) => [p.uid, p.stateDir ?? '']))
    : new Map<string, string>();
  for (const leak of before.leaks) {
    const [kind, ...rest] = leak.split(':');
    const key = rest.join(':');
    try {
      if (kind === 'tap') {
        const tap = await ctx.network.getTap(key);
        if (tap?.owner?.hostId === ctx.hostId) await ctx.network.deleteTap(key, tap.owner);
      } else if (kind === 'state-dir') {
        await ctx.files.removeTree(key);
      } else if (kind === 'process') {
        await ctx.vmm.stop(key, procDirs.get(key) ?? '', { graceMs: 0, killTimeoutMs: 2000, forceOnly: true });
      } else {
        continue;
      }
      removed.push(`leak ${leak}`);
    } catch (err) {
      failures.push(`${leak}: ${messageOf(err)}`);
    }
  }
  // Empty namespace/name folders left behind.
  const vmRoot = `${ctx.files.root}/vm`;
  for (const ns of await ctx.files.list(vmRoot)) {
    for (const name of await ctx.files.list(`${vmRoot}/${ns}`)) await ctx.files.removeEmptyDir(`${vmRoot}/${ns}/${name}`);
    await ctx.files.removeEmptyDir(`${vmRoot}/${ns}`);
  }
  // Nothing was left to sweep: the audit above already is the verdict.
  const audit = before.leaks.length === 0 ? before : await auditHost(ctx, { expectNothing: true });
  return { removed, failures, audit };
}
