import { describe, expect, it } from 'vitest';
import { runPlan } from '../../src/domain/plan.js';
import { createPlanner } from '../../src/agent/plans/create-plan.js';
import { deletePlanner } from '../../src/agent/plans/delete-plan.js';
import { Reconciler } from '../../src/agent/reconciler.js';
import { fakeHost, sampleSpec, uidOf } from '../support/host-harness.js';

describe('create plan', () => {
  it('records every resource as creating BEFORE it is made (write-ahead)', async () => {
    const h = fakeHost();
    const uid = uidOf(1);
    h.inventory.addVm(uid, sampleSpec(), 0);
    const seen: string[] = [];
    const origTap = h.network.createTap.bind(h.network);
    h.network.createTap = async (name, owner) => {
      seen.push(`tap ${name} row=${h.inventory.getResource(uid, 'tap', name)?.state}`);
      return origTap(name, owner);
    };
    const origVol = h.volumes.createOverlay.bind(h.volumes);
    h.volumes.createOverlay = async (base, path) => {
      seen.push(`overlay row=${h.inventory.getResource(uid, 'overlay', path)?.state}`);
      return origVol(base, path);
    };
    const origStart = h.vmm.start.bind(h.vmm);
    h.vmm.start = async (spec) => {
      seen.push(`process row=${h.inventory.getResource(uid, 'process', `${spec.stateDir}/qemu.pid`)?.state}`);
      return origStart(spec);
    };
    await runPlan('create', createPlanner(h.ctx, uid));
    expect(seen).toHaveLength(5);
    for (const s of seen) expect(s).toMatch(/row=creating$/);
    expect(h.inventory.getVm(uid)?.phase).toBe('running');
    expect(h.inventory.listResources(uid).map((r) => `${r.kind}:${r.state}`).sort()).toEqual([
      'overlay:present',
      'overlay:present',
      'process:present',
      'state-dir:present',
      'tap:present',
      'tap:present',
    ]);
  });

  it('passes the static address of the first NIC and the user cmdline to the kernel', async () => {
    const h = fakeHost();
    const uid = uidOf(2);
    h.inventory.addVm(uid, { ...sampleSpec(), kernelCmdline: { 'tether.ignore_powerdown': '1', debug: '' } }, 0);
    let cmdline = '';
    const orig = h.vmm.start.bind(h.vmm);
    h.vmm.start = async (spec) => {
      cmdline = spec.kernelCmdline;
      return orig(spec);
    };
    await runPlan('create', createPlanner(h.ctx, uid));
    expect(cmdline).toContain(`tether.uid=${uid}`);
    expect(cmdline).toContain('tether.ip=10.0.0.2/24');
    expect(cmdline).toContain('tether.ignore_powerdown=1');
    expect(cmdline.split(' ')).toContain('debug');
  });

  it('resumes after a crash at every step boundary and ends in the same state', async () => {
    const full = fakeHost();
    full.inventory.addVm(uidOf(3), sampleSpec(), 0);
    const res = await runPlan('create', createPlanner(full.ctx, uidOf(3)));
    const stepCount = res.stepsDone.length;
    for (let crashAfter = 0; crashAfter < stepCount; crashAfter++) {
      const h = fakeHost();
      const uid = uidOf(3);
      h.inventory.addVm(uid, sampleSpec(), 0);
      let n = 0;
      await runPlan('create', createPlanner(h.ctx, uid), {
        onProgress: (p) => {
          if (p.kind === 'step-done' && ++n > crashAfter) throw new Error('crash');
        },
      }).catch(() => undefined);
      await runPlan('create', createPlanner(h.ctx, uid));
      expect(h.inventory.getVm(uid)?.phase).toBe('running');
      expect(h.inventory.listResources(uid).every((r) => r.state === 'present')).toBe(true);
      expect(h.calls.filter((c) => c.startsWith('vmm.start'))).toHaveLength(1);
    }
  });
});

describe('delete plan', () => {
  it('removes the process first, the state dir last, verifies each, then forgets the VM', async () => {
    const h = fakeHost();
    const uid = uidOf(4);
    h.inventory.addVm(uid, sampleSpec(), 0);
    await runPlan('create', createPlanner(h.ctx, uid));
    h.calls.length = 0;
    h.inventory.setDesired(uid, 'absent', 0);
    await runPlan('delete', deletePlanner(h.ctx, uid));
    expect(h.calls[0]).toBe(`vmm.stop:${uid}`);
    expect(h.calls.filter((c) => c.startsWith('net.deleteTap'))).toHaveLength(2);
    expect(h.inventory.getVm(uid)).toBeUndefined();
    expect(h.inventory.listResources()).toEqual([]);
    expect(h.files.paths.size).toBe(0);
    expect(h.network.taps.size).toBe(0);
    expect(h.vmm.procs.size).toBe(0);
  });

  it('finishes when the resources were already gone (idempotent) and never touches a tap that is not ours', async () => {
    const h = fakeHost();
    const uid = uidOf(5);
    h.inventory.addVm(uid, sampleSpec(), 0);
    await runPlan('create', createPlanner(h.ctx, uid));
    // Someone else took over one tap name; the process already died.
    const [tapA] = h.inventory.listResources(uid).filter((r) => r.kind === 'tap');
    h.network.taps.set(tapA!.key, { name: tapA!.key, owner: { hostId: 'other-host', vmUid: uid }, up: true });
    h.vmm.procs.clear();
    await runPlan('delete', deletePlanner(h.ctx, uid));
    expect(h.network.taps.get(tapA!.key)?.owner?.hostId).toBe('other-host');
    expect(h.inventory.listEvents(50, uid).map((e) => e.kind)).toContain('resource-not-owned');
    expect(h.inventory.getVm(uid)).toBeUndefined();
  });
});

describe('reconciler', () => {
  it('removes what a failed create made and keeps the record as failed with the error', async () => {
    const h = fakeHost();
    const uid = uidOf(6);
    h.vmm.failStart = true;
    h.inventory.addVm(uid, sampleSpec(), 0);
    await new Reconciler(h.ctx).kick(uid);
    const vm = h.inventory.getVm(uid);
    expect(vm?.phase).toBe('failed');
    expect(vm?.error).toContain('qemu exploded');
    expect(h.inventory.listResources(uid)).toEqual([]);
    expect(h.network.taps.size).toBe(0);
    expect(h.files.paths.size).toBe(0);
  });

  it('adopts a VM still running after a restart and marks one whose process vanished as failed', async () => {
    const h = fakeHost();
    const r = new Reconciler(h.ctx);
    h.inventory.addVm(uidOf(7), sampleSpec('a'), 0);
    h.inventory.addVm(uidOf(8), sampleSpec('b'), 0);
    await r.kick(uidOf(7));
    await r.kick(uidOf(8));
    h.vmm.procs.delete(uidOf(8));
    const r2 = new Reconciler(h.ctx);
    await r2.resumeAll();
    await r2.idle();
    expect(h.inventory.getVm(uidOf(7))?.phase).toBe('running');
    expect(h.inventory.listEvents(10, uidOf(7)).map((e) => e.kind)).toContain('vm-adopted');
    expect(h.inventory.getVm(uidOf(8))?.phase).toBe('failed');
    expect(h.inventory.listResources(uidOf(8))).toEqual([]);
  });

  it('a delete that fails after the VM row is gone (GC wipe meanwhile) is logged, never thrown out of the kick', async () => {
    // Found by the simulator (3 hosts x 60 VMs): setPhase on the vanished row threw out of a
    // `void kick()` and crashed the agent.
    const h = fakeHost();
    const uid = uidOf(9);
    h.inventory.addVm(uid, sampleSpec(), 0);
    const r = new Reconciler(h.ctx);
    await r.kick(uid);
    h.inventory.setDesired(uid, 'absent', 0);
    h.vmm.stop = async () => {
      for (const row of h.inventory.listResources(uid)) h.inventory.deleteResource(uid, row.kind, row.key);
      h.inventory.removeVm(uid);
      throw new Error('stop failed');
    };
    await expect(r.kick(uid)).resolves.toBeUndefined();
    expect(h.inventory.getVm(uid)).toBeUndefined();
  });
});
