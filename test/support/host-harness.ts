import { SqliteInventory } from '../../src/adapters/sqlite/sqlite-inventory.js';
import type { HostContext } from '../../src/agent/host-context.js';
import type { VmSpec } from '../../src/domain/vm.js';
import { FakeClock } from './fake-clock.js';
import { FakeFiles, FakeImages, FakeNetwork, FakeVmm, FakeVolumes, silentLogger, type CallLog } from './fake-ports.js';

/** A host context on fake ports and an in-memory SQLite inventory. */
export function fakeHost(hostId = 'host-a') {
  const calls: CallLog = [];
  const clock = new FakeClock();
  const files = new FakeFiles('/state');
  const vmm = new FakeVmm(calls);
  const network = new FakeNetwork(calls);
  const volumes = new FakeVolumes(calls, files);
  const inventory = new SqliteInventory(':memory:');
  const ctx: HostContext = {
    hostId,
    clock,
    inventory,
    vmm,
    network,
    volumes,
    images: new FakeImages(['data']),
    files,
    logger: silentLogger(),
    stop: { graceMs: 1000, killTimeoutMs: 1000 },
    readyTimeoutMs: 5000,
  };
  return { ctx, calls, clock, files, vmm, network, volumes, inventory };
}

/** A spec with one root volume, one data volume and two NICs. */
export function sampleSpec(name = 'vm1', namespace = 'default'): VmSpec {
  return {
    id: { namespace, name },
    vcpu: 1,
    memoryMb: 96,
    kernelImage: '',
    kernelCmdline: {},
    initrdImage: '',
    volumes: [
      { id: 'root', image: '', readOnly: false, isRoot: true },
      { id: 'data', image: 'data', readOnly: true, isRoot: false },
    ],
    interfaces: [{ guestDeviceName: 'eth0', address: '10.0.0.2/24' }, { guestDeviceName: 'eth1' }],
    labels: {},
    metadata: {},
  };
}

/** A fresh 32-hex uid, deterministic per index (distinct in the first 11 hex, like real uids). */
export function uidOf(i: number): string {
  return i.toString(16).padStart(8, '0') + 'a'.repeat(24);
}

/** A spec with no disks or NICs, for placement and controller tests. */
export function bareSpec(name: string, vcpu = 1, memoryMb = 128, namespace = 'ns'): VmSpec {
  return { id: { namespace, name }, vcpu, memoryMb, kernelImage: '', kernelCmdline: {}, initrdImage: '', volumes: [], interfaces: [], labels: {}, metadata: {} };
}
