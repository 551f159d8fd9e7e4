/**
 * The controller's capacity index (issue 9, item 3): every host's used vCPU and memory (the VMs that
 * hold capacity on it, see {@link holdsCapacity}), and the schedulable hosts ordered the way
 * {@link placeVms} orders them — most free memory first, then most free vCPUs, then the smallest host
 * id — in a balanced search tree (a treap whose priorities are a hash of the host id: deterministic,
 * no randomness) whose nodes carry the largest free vCPU count of their subtree.
 *
 * {@link CapacityIndex.pick} answers "the first host in that order with room for this VM" in
 * O(log hosts): the leftmost host whose free vCPUs suffice is the one with the most free memory among
 * them, so if its memory does not suffice, no host's does. This is exactly the host `placeVms` picks
 * (a test compares both on random clusters). Updates (a VM placed, lost or gone; a host's record or
 * `alive` key changed) cost O(log hosts) each.
 *
 * Invariants: `used(h)` is the sum over the VMs counted on `h` ({@link CapacityIndex.addVm} /
 * {@link CapacityIndex.removeVm}, each VM counted at most once by its caller); a host is in the tree
 * iff it was last set schedulable; its position always reflects its current free amounts.
 */
import { holdsCapacity, type ClusterVmRecord } from './cluster-vm.js';
import type { SchedulableHost } from './placement.js';
import type { VmSpec } from './vm.js';

interface Node {
  readonly hostId: string;
  readonly prio: number;
  epoch: number;
  freeMem: number;
  freeVcpu: number;
  /** Largest `freeVcpu` in this subtree. */
  maxVcpu: number;
  left?: Node;
  right?: Node;
}

/** FNV-1a of the host id: the treap priority (deterministic). */
function prioOf(id: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < id.length; i++) {
    h ^= id.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return h >>> 0;
}

/** Order of {@link placeVms}: more free memory first, then more free vCPUs, then the smaller id. */
function before(a: Pick<Node, 'freeMem' | 'freeVcpu' | 'hostId'>, b: Pick<Node, 'freeMem' | 'freeVcpu' | 'hostId'>): boolean {
  if (a.freeMem !== b.freeMem) return a.freeMem > b.freeMem;
  if (a.freeVcpu !== b.freeVcpu) return a.freeVcpu > b.freeVcpu;
  return a.hostId < b.hostId;
}

function fix(n: Node): Node {
  n.maxVcpu = Math.max(n.freeVcpu, n.left?.maxVcpu ?? -Infinity, n.right?.maxVcpu ?? -Infinity);
  return n;
}

/** Splits `t` into the nodes before `key` and the others. */
function split(t: Node | undefined, key: Node): [Node | undefined, Node | undefined] {
  if (!t) return [undefined, undefined];
  if (before(t, key)) {
    const [l, r] = split(t.right, key);
    t.right = l;
    return [fix(t), r];
  }
  const [l, r] = split(t.left, key);
  t.left = r;
  return [l, fix(t)];
}

/** Joins `a` and `b`, every node of `a` before every node of `b`. */
function merge(a: Node | undefined, b: Node | undefined): Node | undefined {
  if (!a) return b;
  if (!b) return a;
  if (a.prio > b.prio) {
    a.right = merge(a.right, b);
    return fix(a);
  }
  b.left = merge(a, b.left);
  return fix(b);
}

function insert(t: Node | undefined, n: Node): Node {
  if (!t) return fix(n);
  if (n.prio > t.prio) {
    const [l, r] = split(t, n);
    n.left = l;
    n.right = r;
    return fix(n);
  }
  if (before(n, t)) t.left = insert(t.left, n);
  else t.right = insert(t.right, n);
  return fix(t);
}

function remove(t: Node | undefined, n: Node): Node | undefined {
  if (!t) return undefined;
  if (t === n) return merge(t.left, t.right);
  if (before(n, t)) t.left = remove(t.left, n);
  else t.right = remove(t.right, n);
  return fix(t);
}

/** The leftmost node with `freeVcpu >= vcpu`. */
function leftmostWithVcpu(t: Node | undefined, vcpu: number): Node | undefined {
  let n = t;
  while (n && n.maxVcpu >= vcpu) {
    if (n.left && n.left.maxVcpu >= vcpu) {
      n = n.left;
      continue;
    }
    if (n.freeVcpu >= vcpu) return n;
    n = n.right;
  }
  return undefined;
}

/** Free amounts of a schedulable host. */
export interface FreeCapacity {
  readonly vcpu: number;
  readonly memoryMb: number;
}

/** See the module doc. */
export class CapacityIndex {
  private root: Node | undefined;
  private readonly nodes = new Map<string, Node>();
  private readonly capacity = new Map<string, SchedulableHost['capacity']>();
  private readonly usage = new Map<string, { vcpu: number; memoryMb: number }>();

  /** Number of schedulable hosts. */
  get schedulable(): number {
    return this.nodes.size;
  }

  /** Sets a host schedulable (with its epoch and capacity) or not (`undefined`). */
  setHost(hostId: string, host: Pick<SchedulableHost, 'epoch' | 'capacity'> | undefined): void {
    const n = this.nodes.get(hostId);
    if (n) {
      this.root = remove(this.root, n);
      this.nodes.delete(hostId);
    }
    if (!host) {
      this.capacity.delete(hostId);
      return;
    }
    this.capacity.set(hostId, host.capacity);
    const u = this.usage.get(hostId);
    const node: Node = {
      hostId,
      prio: prioOf(hostId),
      epoch: host.epoch,
      freeMem: host.capacity.memoryMb - (u?.memoryMb ?? 0),
      freeVcpu: host.capacity.vcpu - (u?.vcpu ?? 0),
      maxVcpu: 0,
    };
    this.nodes.set(hostId, node);
    this.root = insert(this.root, node);
  }

  /** Counts a VM record's usage on its host (nothing unless it {@link holdsCapacity}). */
  addVm(vm: Pick<ClusterVmRecord, 'hostId' | 'phase' | 'spec'>): void {
    if (holdsCapacity(vm)) this.addUsage(vm.hostId!, vm.spec.vcpu, vm.spec.memoryMb);
  }

  /** Stops counting a VM record counted by {@link addVm}. */
  removeVm(vm: Pick<ClusterVmRecord, 'hostId' | 'phase' | 'spec'>): void {
    if (holdsCapacity(vm)) this.addUsage(vm.hostId!, -vm.spec.vcpu, -vm.spec.memoryMb);
  }

  /** Adds (or with negative amounts, removes) usage on a host. */
  addUsage(hostId: string, vcpu: number, memoryMb: number): void {
    const u = this.usage.get(hostId) ?? { vcpu: 0, memoryMb: 0 };
    u.vcpu += vcpu;
    u.memoryMb += memoryMb;
    if (u.vcpu === 0 && u.memoryMb === 0) this.usage.delete(hostId);
    else this.usage.set(hostId, u);
    const n = this.nodes.get(hostId);
    if (!n) return;
    this.root = remove(this.root, n);
    n.freeMem -= memoryMb;
    n.freeVcpu -= vcpu;
    n.left = n.right = undefined;
    this.root = insert(this.root, n);
  }

  /** Free amounts of a schedulable host (undefined when it is not). */
  free(hostId: string): FreeCapacity | undefined {
    const n = this.nodes.get(hostId);
    return n ? { vcpu: n.freeVcpu, memoryMb: n.freeMem } : undefined;
  }

  /** Usage counted on a host, schedulable or not. */
  used(hostId: string): FreeCapacity {
    return this.usage.get(hostId) ?? { vcpu: 0, memoryMb: 0 };
  }

  /**
   * The host {@link placeVms} would give this VM (the first in its order with room), in O(log hosts),
   * or the reason none can take it (the same wording as `placeVms`). Nothing is reserved: the caller
   * counts the VM once its placement is decided ({@link addUsage}).
   */
  pick(spec: Pick<VmSpec, 'vcpu' | 'memoryMb'>): { readonly hostId: string; readonly hostEpoch: number } | { readonly reason: string } {
    const n = leftmostWithVcpu(this.root, spec.vcpu);
    if (n && n.freeMem >= spec.memoryMb) return { hostId: n.hostId, hostEpoch: n.epoch };
    const need = `${spec.vcpu} vCPU and ${spec.memoryMb} MiB`;
    const count = this.nodes.size;
    return {
      reason: count === 0 ? `no schedulable host (attached or ready, alive, not held) for ${need}` : `no host has ${need} free (${count} schedulable host${count === 1 ? '' : 's'})`,
    };
  }
}
