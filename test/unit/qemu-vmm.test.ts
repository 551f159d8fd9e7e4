import { spawn, type ChildProcess } from 'node:child_process';
import { appendFile, chmod, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomUUID } from 'node:crypto';
import { existsSync } from 'node:fs';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { QemuVmm } from '../../src/adapters/qemu/qemu-vmm.js';
import { probeAccelDetailed, probeFirmware, PROBE_EXIT_STATUS } from '../../src/adapters/qemu/accel-probe.js';
import { LogScanner, READY_MARKER, readTail } from '../../src/adapters/qemu/serial-log.js';
import { readArgv } from '../../src/adapters/qemu/proc-fs.js';
import { SystemClock } from '../../src/adapters/clock/system-clock.js';
import { TetherError } from '../../src/domain/errors.js';
import type { VmLaunchSpec } from '../../src/ports/vmm.js';

/**
 * QemuVmm without QEMU: stand-in processes whose /proc cmdline looks like (or almost like) a
 * marked QEMU, to pin down the "verify before signalling" invariant. Where a stand-in must pass
 * as ours, node itself is the configured "QEMU binary" (the executable check of process-owner.ts).
 */

const clock = new SystemClock();
const children: ChildProcess[] = [];
let dir: string;
let stateRoot: string;
const NODE = process.execPath;

/** A long-lived process with the given argv[0] and `-name <name>` on its command line. */
async function fakeProcess(argv0: string, name: string): Promise<ChildProcess> {
  const child = spawn(process.execPath, ['-e', 'setInterval(() => {}, 1000)', '--', '-name', name], { argv0, stdio: 'ignore' });
  children.push(child);
  // Wait until the exec happened and /proc shows the final argv.
  for (let i = 0; i < 200; i++) {
    const argv = await readArgv(child.pid!);
    if (argv?.[0] === argv0 && argv.includes(name)) return child;
    await clock.sleep(10);
  }
  throw new Error('fake process did not start');
}

function alive(child: ChildProcess): boolean {
  return child.exitCode === null && child.signalCode === null;
}

/** `<root>/vm/default/<random name>/<uid>` holding a qemu.pid that names `pid`. */
async function stateDirWithPid(pid: number, uid: string, root = stateRoot): Promise<string> {
  const d = join(root, 'vm', 'default', `vm-${randomUUID().slice(0, 8)}`, uid);
  await mkdir(d, { recursive: true });
  await writeFile(join(d, 'qemu.pid'), `${pid}\n`);
  return d;
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'tether-qemu-vmm-unit-'));
  stateRoot = join(dir, 'state');
});
afterEach(() => {
  for (const c of children.splice(0)) if (alive(c)) c.kill('SIGKILL');
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('QemuVmm process verification (no QEMU needed)', () => {
  const hostId = `unit-${randomUUID().slice(0, 8)}`;
  const uid = randomUUID();

  it('reads a missing, garbage or stale pid file as not running', async () => {
    const vmm = new QemuVmm({ clock, hostId, stateRoot, accel: 'tcg', qemuBinary: NODE });
    const empty = join(stateRoot, 'vm', 'default', 'empty', uid);
    await mkdir(empty, { recursive: true });
    expect(await vmm.status(uid, empty)).toEqual({ running: false, ready: false });
    await writeFile(join(empty, 'qemu.pid'), 'not a pid');
    expect(await vmm.status(uid, empty)).toEqual({ running: false, ready: false });
    // Our own pid: alive and running the configured binary, but not carrying the mark (the pid-reuse case).
    const reused = await stateDirWithPid(process.pid, uid);
    expect(await vmm.status(uid, reused)).toEqual({ running: false, ready: false });
    expect(await vmm.stop(uid, reused, { graceMs: 100, killTimeoutMs: 100 })).toMatchObject({ method: 'already-stopped' });
  });

  it('never signals a process that mentions the uid but is not a QEMU, or is marked for another host', async () => {
    const notQemu = await fakeProcess(process.execPath, `tether:${hostId}:${uid}`);
    const otherHost = await fakeProcess('qemu-system-x86_64', `tether:other-host:${uid}`);
    const vmm = new QemuVmm({ clock, hostId, stateRoot, accel: 'tcg', qemuBinary: 'qemu-system-x86_64' });
    for (const decoy of [notQemu, otherHost]) {
      const sd = await stateDirWithPid(decoy.pid!, uid);
      expect(await vmm.status(uid, sd)).toEqual({ running: false, ready: false });
      expect((await vmm.stop(uid, sd, { graceMs: 50, killTimeoutMs: 200, forceOnly: true })).method).toBe('already-stopped');
      // Keep checking for a while: "never" is tested by watching, not by one look.
      for (let i = 0; i < 5; i++) {
        await clock.sleep(20);
        expect(alive(decoy)).toBe(true);
      }
    }
    expect((await vmm.listOwned(hostId)).map((o) => o.pid)).not.toContain(notQemu.pid);
    // Marked for another host and running the configured binary: listed for that host only.
    const asNode = new QemuVmm({ clock, hostId, stateRoot, accel: 'tcg', qemuBinary: NODE });
    expect((await asNode.listOwned('other-host')).map((o) => o.pid)).toContain(otherHost.pid);
    expect((await asNode.listOwned(hostId)).map((o) => o.pid)).not.toContain(otherHost.pid);
  });

  it('never takes a VM of a second agent with the same host id (other state dir) for its own', async () => {
    const vmUid = randomUUID();
    const theirs = await fakeProcess('qemu-system-x86_64', `tether:${hostId}:${vmUid}`);
    const otherRoot = join(dir, 'other-agent-state');
    const sd = await stateDirWithPid(theirs.pid!, vmUid, otherRoot);
    const ours = new QemuVmm({ clock, hostId, stateRoot, accel: 'tcg', qemuBinary: NODE });
    const second = new QemuVmm({ clock, hostId, stateRoot: otherRoot, accel: 'tcg', qemuBinary: NODE });
    expect((await ours.status(vmUid, sd)).running).toBe(false);
    expect((await ours.stop(vmUid, sd, { graceMs: 0, killTimeoutMs: 300, forceOnly: true })).method).toBe('already-stopped');
    expect((await ours.listOwned(hostId)).map((o) => o.pid)).not.toContain(theirs.pid);
    expect(await second.listOwned(hostId)).toEqual([{ uid: vmUid, pid: theirs.pid, stateDir: sd }]);
    await clock.sleep(50);
    expect(alive(theirs)).toBe(true);
  });

  it('escalates to SIGKILL when QMP is unreachable, and reports forced-kill only once the process is gone', async () => {
    const fake = await fakeProcess('qemu-system-x86_64', `tether:${hostId}:${uid},process=x`);
    const sd = await stateDirWithPid(fake.pid!, uid);
    const vmm = new QemuVmm({ clock, hostId, stateRoot, accel: 'tcg', qemuBinary: NODE });
    expect(await vmm.status(uid, sd)).toEqual({ running: true, pid: fake.pid, ready: false });
    await writeFile(join(sd, 'serial.log'), `boot\n${READY_MARKER}\n`);
    expect((await vmm.status(uid, sd)).ready).toBe(true);
    expect(await vmm.listOwned(hostId)).toContainEqual({ uid, pid: fake.pid, stateDir: sd });
    const res = await vmm.stop(uid, sd, { graceMs: 300, killTimeoutMs: 2000 });
    expect(res.method).toBe('forced-kill');
    expect(res.tookMs).toBeLessThan(1500);
    expect(await vmm.status(uid, sd)).toEqual({ running: false, ready: false });
    // Idempotent; files are left to the caller.
    expect((await vmm.stop(uid, sd, { graceMs: 300, killTimeoutMs: 2000 })).method).toBe('already-stopped');
    expect(await readFile(join(sd, 'qemu.pid'), 'utf8')).toContain(String(fake.pid));
  });

  it('without a hostId, still requires a QEMU carrying the uid', async () => {
    const fake = await fakeProcess('qemu-system-x86_64', `tether:any-host:${uid}`);
    const sd = await stateDirWithPid(fake.pid!, uid);
    const vmm = new QemuVmm({ clock, stateRoot, accel: 'tcg', qemuBinary: NODE });
    expect((await vmm.status(uid, sd)).running).toBe(true);
    expect((await vmm.status(randomUUID(), sd)).running).toBe(false);
    // The same process is not ours when the configured binary is another one.
    expect((await new QemuVmm({ clock, stateRoot, accel: 'tcg', qemuBinary: 'sh' }).status(uid, sd)).running).toBe(false);
  });
});

describe('QemuVmm.waitReady', () => {
  const vmm = new QemuVmm({ clock, accel: 'tcg', pollMs: 10, stateRoot: '/nonexistent-state' });

  it('finds the marker even when it is written in two pieces', async () => {
    const sd = await mkdtemp(join(dir, 'vm-'));
    const log = join(sd, 'serial.log');
    await writeFile(log, 'Linux version ...\nTETHER-GU');
    const p = vmm.waitReady(sd, 3000);
    await clock.sleep(60);
    await appendFile(log, 'EST-READY\n');
    await expect(p).resolves.toBeUndefined();
  });

  it('rejects with TIMEOUT (not retryable) and the serial tail', async () => {
    const sd = await mkdtemp(join(dir, 'vm-'));
    await writeFile(join(sd, 'serial.log'), 'kernel panic - not syncing: oops\n');
    const t0 = clock.nowMono();
    const err = (await vmm.waitReady(sd, 150).catch((e: unknown) => e)) as TetherError;
    expect(err.code).toBe('TIMEOUT');
    expect(err.retryable).toBe(false);
    expect(err.message).toContain('kernel panic');
    expect(clock.nowMono() - t0).toBeGreaterThanOrEqual(140);
  });

  it('stops waiting with FAILED_PRECONDITION (not retryable) once abandon() says the VM is no longer wanted', async () => {
    const sd = await mkdtemp(join(dir, 'vm-'));
    await writeFile(join(sd, 'serial.log'), 'Booting\n');
    let polls = 0;
    const err = (await vmm.waitReady(sd, 5000, () => ++polls >= 3).catch((e: unknown) => e)) as TetherError;
    expect(err.code).toBe('FAILED_PRECONDITION');
    expect(err.retryable).toBe(false);
    expect(err.message).toMatch(/no longer wanted/);
    expect(polls).toBe(3);
  });

  it('fails early with VMM_ERROR when the pid file names a process that is gone', async () => {
    const child = spawn('true');
    await new Promise((r) => child.on('exit', r));
    const sd = await stateDirWithPid(child.pid!, randomUUID());
    await writeFile(join(sd, 'serial.log'), 'Booting\n');
    const t0 = clock.nowMono();
    const err = (await vmm.waitReady(sd, 10_000).catch((e: unknown) => e)) as TetherError;
    expect(err.code).toBe('VMM_ERROR');
    expect(err.message).toContain('exited before ready');
    expect(clock.nowMono() - t0).toBeLessThan(2000);
  });
});

describe('QemuVmm.start failures', () => {
  /** A spec whose state folder is `<stateRoot>/vm/default/<name>/<uid>` (made here). */
  const spec = async (over: Partial<VmLaunchSpec> = {}): Promise<VmLaunchSpec> => {
    const uid = randomUUID();
    const stateDir = join(stateRoot, 'vm', 'd', 's', uid); // short: the QMP socket path must fit 107 bytes
    await mkdir(stateDir, { recursive: true });
    return { uid, hostId: 'unit-host', vcpu: 1, memoryMb: 96, kernelPath: '/nonexistent/vmlinux', kernelCmdline: 'console=ttyS0', stateDir, disks: [], nics: [], ...over };
  };

  it('returns VMM_ERROR with the emulator stderr when it exits non-zero', async () => {
    const fakeQemu = join(dir, 'qemu-system-fake');
    await writeFile(fakeQemu, '#!/bin/sh\necho "qemu-system-fake: could not load kernel" >&2\nexit 1\n');
    await chmod(fakeQemu, 0o755);
    const vmm = new QemuVmm({ clock, qemuBinary: fakeQemu, accel: 'tcg', stateRoot });
    const err = (await vmm.start(await spec()).catch((e: unknown) => e)) as TetherError;
    expect(err.code).toBe('VMM_ERROR');
    expect(err.message).toContain('could not load kernel');
    expect(err.details.stderr).toContain('could not load kernel');
    expect(err.details.exitCode).toBe(1);
    // A failed start leaves no empty per-host cgroup behind.
    const cg = await vmm.vmCgroupDir('unit-host');
    if (cg !== undefined) expect(existsSync(cg)).toBe(false);
  });

  it('returns VMM_ERROR when the binary does not exist', async () => {
    const vmm = new QemuVmm({ clock, qemuBinary: join(dir, 'no-such-qemu'), accel: 'tcg', stateRoot });
    const err = (await vmm.start(await spec()).catch((e: unknown) => e)) as TetherError;
    expect(err.code).toBe('VMM_ERROR');
    expect(err.message).toContain('not found');
  });

  it('rejects a hostId that is not this VMM\'s', async () => {
    const vmm = new QemuVmm({ clock, hostId: 'someone-else', accel: 'tcg', stateRoot });
    await expect(vmm.start(await spec())).rejects.toMatchObject({ code: 'INVALID_ARGUMENT', field: 'hostId' });
  });

  it('refuses a state folder where the ownership check would not find the VM', async () => {
    const vmm = new QemuVmm({ clock, accel: 'tcg', stateRoot });
    const outside = await mkdtemp(join(dir, 'vm-'));
    await expect(vmm.start(await spec({ stateDir: outside }))).rejects.toMatchObject({ code: 'INVALID_ARGUMENT', field: 'stateDir' });
    const wrongUid = await spec();
    await expect(vmm.start({ ...wrongUid, uid: randomUUID() })).rejects.toMatchObject({ code: 'INVALID_ARGUMENT', field: 'stateDir' });
  });
});

describe('accelerator probe and serial helpers', () => {
  it('answers tcg without running anything when the KVM device is missing', async () => {
    const r = await probeAccelDetailed({ clock, kvmDevice: join(dir, 'no-kvm') });
    expect(r.accel).toBe('tcg');
    expect(r.reason).toContain('not usable');
  });

  it('builds a 64 KiB firmware whose reset vector writes to the debug-exit port', () => {
    const fw = probeFirmware();
    expect(fw.length).toBe(65536);
    expect([...fw.subarray(0xfff0, 0xfff4)]).toEqual([0xb0, 0x2a, 0xe6, 0xf4]);
    expect(PROBE_EXIT_STATUS).toBe(85);
  });

  it('LogScanner restarts after truncation; readTail returns the end', async () => {
    const f = join(dir, 'log');
    const s = new LogScanner(f, 'MARK');
    expect(await s.poll()).toBe(false);
    await writeFile(f, 'x'.repeat(100_000));
    expect(await s.poll()).toBe(false);
    await writeFile(f, 'MARK');
    expect(await s.poll()).toBe(true);
    expect(await readTail(f, 2)).toBe('RK');
    expect(await readTail(join(dir, 'missing'))).toBe('');
  });
});
