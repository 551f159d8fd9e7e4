import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { FlintlockMicroVM, MicroVmSpecIn } from '../../src/api/grpc/wire-types.js';
import { TetherError } from '../../src/domain/errors.js';
import {
  AgentProcess,
  killHostLeftovers,
  links,
  qemusOf,
  removeDir,
  requireRealParts,
  tapsOf,
  testDir,
  testHostId,
  until,
} from '../support/real-host.js';

/**
 * The agent as a real process on real QEMU, taps, qcow2 overlays and SQLite, checked on the
 * system itself (/proc, `ip link`, the file system), not through the agent's own view.
 */

const hostId = testHostId('agent');
let dir = '';
let agent: AgentProcess;
const decoys = ['ttdecoy0000001', 'ttdecoy0000002', 'ttdecoy0000003'];

function spec(name: string, extra: Partial<MicroVmSpecIn> = {}): MicroVmSpecIn {
  return { id: name, namespace: 'it', vcpu: 1, memory_in_mb: 96, kernel: { image: '', cmdline: {} }, root_volume: { id: 'root', source: { container_source: '' } }, ...extra };
}

const vmFolder = (vm: FlintlockMicroVM) => join(dir, 'state', 'vm', vm.spec.namespace, vm.spec.id, vm.spec.uid);

async function waitState(uid: string, state: string): Promise<FlintlockMicroVM> {
  return until(`vm ${uid} ${state}`, async () => {
    const vm = await agent.api().get(uid);
    if (vm.status.state === 'FAILED') throw new Error(`vm ${uid} failed`);
    return vm.status.state === state ? vm : undefined;
  }, 60_000, 200);
}

async function waitGone(uid: string): Promise<void> {
  await until(`vm ${uid} deleted`, () => agent.api().get(uid).then(() => false, (e: TetherError) => e.code === 'NOT_FOUND'), 60_000, 200);
}

/** Nothing of `vm` is left on the system: process, taps, folder. */
function assertGone(vm: FlintlockMicroVM): void {
  expect(qemusOf(hostId).has(vm.spec.uid)).toBe(false);
  const tapNames = Object.values(vm.status.network_interfaces).map((n) => n.host_device_name);
  for (const t of tapNames) expect(links().has(t)).toBe(false);
  expect(existsSync(vmFolder(vm))).toBe(false);
}

beforeAll(async () => {
  requireRealParts(['root', 'qemu', 'guest', 'build']);
  dir = testDir('agent');
  mkdirSync(join(dir, 'images', 'disks'), { recursive: true });
  execFileSync('qemu-img', ['create', '-q', '-f', 'raw', join(dir, 'images', 'disks', 'data.img'), '8M']);
  // Decoys: look like Tether's taps, but carry no mark, another host's mark, or a near-miss mark.
  const aliases = ['', `tether:test-someone-else:${'0'.repeat(32)}`, `tether:${hostId}`];
  decoys.forEach((d, i) => {
    execFileSync('ip', ['tuntap', 'add', 'dev', d, 'mode', 'tap']);
    if (aliases[i]) execFileSync('ip', ['link', 'set', 'dev', d, 'alias', aliases[i]!]);
  });
  agent = new AgentProcess(hostId, join(dir, 'state'), ['--image-dir', join(dir, 'images'), '--stop-grace', '3s', '--kill-timeout', '2s']);
  await agent.start();
});

afterAll(async () => {
  await agent?.kill();
  if (hostId) killHostLeftovers(hostId);
  for (const d of decoys) if (links().has(d)) execFileSync('ip', ['link', 'del', 'dev', d]);
  if (dir) removeDir(dir);
  // The cleanup is itself checked.
  expect(qemusOf(hostId).size).toBe(0);
  expect(tapsOf(hostId)).toEqual([]);
  for (const d of decoys) expect(links().has(d)).toBe(false);
});

describe('agent on real parts', () => {
  const vms: FlintlockMicroVM[] = [];

  it('creates two VMs: QEMU processes carrying the uids, marked taps, overlays, state folders, ready marker', async () => {
    const a = await agent.api().create(spec('web', { interfaces: [{ device_id: 'eth0', type: 'TAP', address: { address: '10.77.0.2/24' } }] }));
    const b = await agent.api().create(
      spec('db', {
        interfaces: [{ device_id: 'eth0', type: 'TAP' }, { device_id: 'eth1', type: 'TAP' }],
        additional_volumes: [{ id: 'data', source: { container_source: 'data.img' }, is_read_only: true }],
      }),
    );
    vms.push(await waitState(a.spec.uid, 'CREATED'), await waitState(b.spec.uid, 'CREATED'));
    const procs = qemusOf(hostId);
    for (const vm of vms) {
      expect(procs.has(vm.spec.uid)).toBe(true);
      const argv = readFileSync(`/proc/${procs.get(vm.spec.uid)}/cmdline`, 'utf8');
      expect(argv).toContain(vm.spec.uid);
      for (const nic of Object.values(vm.status.network_interfaces)) {
        expect(links().get(nic.host_device_name)).toBe(`tether:${hostId}:${vm.spec.uid}`);
      }
      expect(existsSync(join(vmFolder(vm), 'vol-root.qcow2'))).toBe(true);
      expect(readFileSync(join(vmFolder(vm), 'serial.log'), 'utf8')).toContain('TETHER-GUEST-READY');
    }
    expect(Object.keys(vms[1]!.status.network_interfaces)).toHaveLength(2);
    expect(existsSync(join(vmFolder(vms[1]!), 'vol-data.qcow2'))).toBe(true);
    expect(readFileSync(join(vmFolder(vms[1]!), 'serial.log'), 'utf8')).toContain('TETHER-ROOTFS-OK');
  });

  it('refuses an unknown image with INVALID_ARGUMENT naming the field and the image, creating nothing', async () => {
    const before = readdirSync(join(dir, 'state', 'vm', 'it'));
    const err = (await agent.api().create(spec('bad', { kernel: { image: 'no-such-kernel' } })).catch((e: unknown) => e)) as TetherError;
    expect(err.code).toBe('INVALID_ARGUMENT');
    expect(err.message).toContain('microvm.kernel.image');
    expect(err.message).toContain('no-such-kernel');
    expect(readdirSync(join(dir, 'state', 'vm', 'it'))).toEqual(before);
  });

  it('keeps VMs running across an agent restart and adopts them (same QEMU pids)', async () => {
    const pids = qemusOf(hostId);
    await agent.kill('SIGKILL');
    expect(qemusOf(hostId)).toEqual(pids);
    await agent.start();
    for (const vm of vms) expect((await agent.api().get(vm.spec.uid)).status.state).toBe('CREATED');
    expect(qemusOf(hostId)).toEqual(pids);
    expect(readFileSync(agent.log, 'utf8')).toContain('"msg":"vm adopted"');
  });

  it('deletes both: processes, taps, overlays and folders gone; decoy taps untouched', async () => {
    for (const vm of vms) await agent.api().delete(vm.spec.uid);
    for (const vm of vms) await waitGone(vm.spec.uid);
    for (const vm of vms) assertGone(vm);
    expect(tapsOf(hostId)).toEqual([]);
    for (const d of decoys) expect(links().has(d)).toBe(true);
    expect(existsSync(join(dir, 'state', 'vm', 'it'))).toBe(false);
  });

  let stubborn: FlintlockMicroVM;
  it('finishes a create interrupted by SIGKILL of the agent, after a restart', async () => {
    const created = await agent.api().create(spec('crash', { kernel: { image: '', cmdline: { 'tether.ignore_powerdown': '1' } }, interfaces: [{ device_id: 'eth0', type: 'TAP' }] }));
    // Kill once the tap exists (mid-plan), before the VM is ready.
    await until('tap of the new VM', () => tapsOf(hostId).length === 1, 20_000, 5);
    await agent.kill('SIGKILL');
    await agent.start();
    stubborn = await waitState(created.spec.uid, 'CREATED');
    expect(qemusOf(hostId).size).toBe(1);
    expect(tapsOf(hostId)).toHaveLength(1);
  });

  it('finishes a delete interrupted by SIGKILL of the agent (guest ignoring the power button), after a restart', async () => {
    await agent.api().delete(stubborn.spec.uid);
    // The guest ignores ACPI: the agent is inside the 3 s grace period when it dies.
    await new Promise((r) => setTimeout(r, 1000));
    expect(qemusOf(hostId).size).toBe(1);
    await agent.kill('SIGKILL');
    await agent.start();
    await waitGone(stubborn.spec.uid);
    assertGone(stubborn);
    expect(readFileSync(agent.log, 'utf8')).toMatch(/"method":"forced-(quit|kill)"/);
    for (const d of decoys) expect(links().has(d)).toBe(true);
  });
});
