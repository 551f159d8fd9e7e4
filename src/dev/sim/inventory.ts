/**
 * The host inventory of a simulated machine, in memory (the Inventory port; production uses SQLite,
 * src/adapters/sqlite). Same rules as the SQLite one: a VM name is taken while a row with desired
 * `present` holds it, a VM row goes only once its resource rows are gone, rows survive the agent
 * (they live on the machine), events are bounded. Kept in memory for speed: a seed runs thousands
 * of inventory calls.
 */
import { TetherError } from '../../domain/errors.js';
import type { VmPhase, VmRecord, VmSpec } from '../../domain/vm.js';
import type { DesiredState, Inventory, InventoryEvent, ResourceKind, ResourceRow, VmRow } from '../../ports/inventory.js';

const MAX_EVENTS = 2000;

/** In-memory {@link Inventory}. */
export class MemoryInventory implements Inventory {
  private readonly vms = new Map<string, VmRow>();
  private readonly resources = new Map<string, ResourceRow>();
  private readonly events: InventoryEvent[] = [];
  private readonly meta = new Map<string, string>();
  private nextEvent = 1;

  addVm(uid: string, spec: VmSpec, now: number): VmRow {
    for (const v of this.vms.values()) {
      if (v.spec.id.namespace === spec.id.namespace && v.spec.id.name === spec.id.name && v.desired === 'present') {
        throw new TetherError('ALREADY_EXISTS', `microvm ${spec.id.namespace}/${spec.id.name} already exists (uid ${v.uid})`, { details: { uid: v.uid } });
      }
    }
    const row: VmRow = { uid, spec, phase: 'pending', desired: 'present', createdAt: now, updatedAt: now, generation: 1, nics: [] };
    this.vms.set(uid, row);
    return row;
  }
  getVm(uid: string): VmRow | undefined {
    return this.vms.get(uid);
  }
  listVms(): VmRow[] {
    return [...this.vms.values()].sort((a, b) => cmp(a.spec.id.namespace, b.spec.id.namespace) || cmp(a.spec.id.name, b.spec.id.name) || a.createdAt - b.createdAt);
  }
  private update(uid: string, patch: Partial<VmRow>, now: number): void {
    const v = this.vms.get(uid);
    if (!v) throw new TetherError('NOT_FOUND', `vm ${uid}`);
    this.vms.set(uid, { ...v, ...patch, updatedAt: now, generation: v.generation + 1 });
  }
  setPhase(uid: string, phase: VmPhase, now: number, error?: string): void {
    const v = this.vms.get(uid);
    if (!v) throw new TetherError('NOT_FOUND', `vm ${uid}`);
    const { error: _e, ...rest } = v;
    this.vms.set(uid, { ...rest, phase, ...(error === undefined ? {} : { error }), updatedAt: now, generation: v.generation + 1 });
  }
  setDesired(uid: string, desired: DesiredState, now: number): void {
    this.update(uid, { desired }, now);
  }
  setNics(uid: string, nics: VmRecord['nics'], now: number): void {
    this.update(uid, { nics }, now);
  }
  removeVm(uid: string): void {
    const left = this.listResources(uid);
    if (left.length > 0) throw new TetherError('FAILED_PRECONDITION', `vm ${uid} still has ${left.length} resource row(s): ${left.map((r) => `${r.kind}:${r.key}`).join(', ')}`);
    this.vms.delete(uid);
  }
  putResource(row: Omit<ResourceRow, 'updatedAt'>, now: number): void {
    this.resources.set(`${row.vmUid}\u0000${row.kind}\u0000${row.key}`, { ...row, updatedAt: now });
  }
  getResource(vmUid: string, kind: ResourceKind, key: string): ResourceRow | undefined {
    return this.resources.get(`${vmUid}\u0000${kind}\u0000${key}`);
  }
  listResources(vmUid?: string): ResourceRow[] {
    return [...this.resources.values()].filter((r) => vmUid === undefined || r.vmUid === vmUid).sort((a, b) => cmp(a.vmUid, b.vmUid) || cmp(a.kind, b.kind) || cmp(a.key, b.key));
  }
  deleteResource(vmUid: string, kind: ResourceKind, key: string): void {
    this.resources.delete(`${vmUid}\u0000${kind}\u0000${key}`);
  }
  addEvent(kind: string, now: number, detail: Record<string, unknown>, vmUid?: string): number {
    const id = this.nextEvent++;
    this.events.push({ id, at: now, kind, detail, ...(vmUid === undefined ? {} : { vmUid }) });
    if (this.events.length > MAX_EVENTS) this.events.splice(0, this.events.length - MAX_EVENTS);
    return id;
  }
  listEvents(limit: number, vmUid?: string): InventoryEvent[] {
    return this.events.filter((e) => vmUid === undefined || e.vmUid === vmUid).slice(-limit).reverse();
  }
  getMeta(key: string): string | undefined {
    return this.meta.get(key);
  }
  setMeta(key: string, value: string): void {
    this.meta.set(key, value);
  }
  close(): void {}

  /** A copy of every row, resource, event and meta value (a cloned state dir, e.g. a cloned VM image of the host). */
  clone(): MemoryInventory {
    const c = new MemoryInventory();
    for (const [k, v] of this.vms) c.vms.set(k, v);
    for (const [k, v] of this.resources) c.resources.set(k, v);
    for (const [k, v] of this.meta) c.meta.set(k, v);
    c.events.push(...this.events);
    c.nextEvent = this.nextEvent;
    return c;
  }
}

function cmp(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}
