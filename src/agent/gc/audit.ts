import type { HostContext } from '../host-context.js';
import type { AuditResult } from './gc-report.js';

/**
 * Scans the real host — QEMU processes, tap devices carrying this host's owner mark, VM folders
 * under the state dir — and compares with the inventory. `leaks`: owned things the inventory does
 * not expect; `missing`: things the inventory expects that are not there. With
 * `expectNothing`, every inventory row and VM record also counts as left over (post-fence audit).
 */
export async function auditHost(ctx: HostContext, opts: { expectNothing?: boolean } = {}): Promise<AuditResult> {
  const { inventory, vmm, network, files, hostId } = ctx;
  const rows = opts.expectNothing ? [] : inventory.listResources();
  const expected = new Set(rows.filter((r) => r.state === 'present').map((r) => `${r.kind}:${r.kind === 'process' ? r.vmUid : r.key}`));
  const found = new Set<string>();
  for (const p of await vmm.listOwned(hostId)) found.add(`process:${p.uid}`);
  for (const t of await network.listOwned(hostId)) found.add(`tap:${t.name}`);
  const vmRoot = `${files.root}/vm`;
  for (const ns of await files.list(vmRoot)) {
    for (const name of await files.list(`${vmRoot}/${ns}`)) {
      for (const uid of await files.list(`${vmRoot}/${ns}/${name}`)) found.add(`state-dir:${vmRoot}/${ns}/${name}/${uid}`);
    }
  }
  for (const r of rows) if (r.kind === 'overlay' && (await files.exists(r.key))) found.add(`overlay:${r.key}`);
  const leaks = [...found].filter((f) => !expected.has(f)).sort();
  const missing = [...expected].filter((e) => !found.has(e)).sort();
  if (opts.expectNothing) {
    for (const r of inventory.listResources()) leaks.push(`inventory-row:${r.kind}:${r.key}`);
    for (const vm of inventory.listVms()) leaks.push(`inventory-vm:${vm.spec.id.namespace}/${vm.spec.id.name}/${vm.uid}`);
  }
  return { clean: leaks.length === 0 && missing.length === 0, leaks, missing, at: ctx.clock.now() };
}
