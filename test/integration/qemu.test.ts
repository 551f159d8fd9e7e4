import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { homedir, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { promisify } from 'node:util';
import { randomBytes, randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { QemuVmm, hostTscKhz } from '../../src/adapters/qemu/qemu-vmm.js';
import { firmwareProbe, guestBootProbe, probeAccelDetailed, DEFAULT_QEMU_BINARY } from '../../src/adapters/qemu/accel-probe.js';
import { SystemClock } from '../../src/adapters/clock/system-clock.js';
import { TetherError } from '../../src/domain/errors.js';
import { accelProbe } from '../../src/cli/commands/agent.js';
import type { VmLaunchSpec } from '../../src/ports/vmm.js';

/**
 * The QEMU adapter on real QEMU `microvm` guests (TCG here, ~2 s per boot on 2 cores).
 * Needs the guest built by scripts/build-guest.sh; missing pieces FAIL this file, they never
 * skip it. afterAll asserts that no QEMU carrying the test host id survives and that the temp
 * state folder is gone.
 */

const clock = new SystemClock();
const guestDir = join(process.env.TETHER_CACHE_DIR ?? join(homedir(), '.cache', 'tether'), 'guest');
const kernelPath = join(guestDir, 'vmlinux');
const initrdPath = join(guestDir, 'initrd.img');
const rootfsPath = join(guestDir, 'rootfs.img');
const hostId = `test-${randomBytes(4).toString('hex')}`;
const measured: Record<string, number | string> = {};
const decoys: ChildProcess[] = [];
let root = '';
let vmm: QemuVmm;

/** Every process whose /proc cmdline contains `needle`, as pid -> argv. */
async function procsWith(needle: string): Promise<Map<number, string[]>> {
  const out = new Map<number, string[]>();
  for (const name of await readdir('/proc')) {
    if (!/^[0-9]+$/.test(name)) continue;
    let raw: string;
    try {
      raw = await readFile(`/proc/${name}/cmdline`, 'utf8');
    } catch {
      continue;
    }
    if (raw.includes(needle)) out.set(Number(name), raw.split('\0').filter((s) => s !== ''));
  }
  return out;
}

async function qemusOfHost(): Promise<Map<number, string[]>> {
  const all = await procsWith(`tether:${hostId}:`);
  for (const [pid, argv] of all) if (!argv[0]?.includes('qemu-system')) all.delete(pid);
  return all;
}

/** Waits until /proc shows `needle` in the cmdline of `pid` (the exec has happened). */
async function waitArgv(pid: number, needle: string): Promise<void> {
  for (let i = 0; i < 250; i++) {
    if ((await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '')).includes(needle)) return;
    await clock.sleep(20);
  }
  throw new Error(`pid ${pid} never showed ${needle}`);
}

function isAlive(child: ChildProcess): boolean {
  return child.exitCode === null && child.signalCode === null;
}

async function newVm(label: string, extraCmdline = '', withRootfs = false): Promise<VmLaunchSpec> {
  const uid = randomUUID();
  const stateDir = join(root, 'vm', 'default', label, uid); // where the ownership check looks
  await mkdir(stateDir, { recursive: true });
  return {
    uid,
    hostId,
    vcpu: 1,
    memoryMb: 96,
    kernelPath,
    initrdPath,
    kernelCmdline: `console=ttyS0 quiet panic=-1 tether.uid=${uid} ${extraCmdline}`.trim(),
    stateDir,
    disks: withRootfs ? [{ path: rootfsPath, readOnly: true, format: 'raw' }] : [],
    nics: [],
  };
}

const serial = (spec: VmLaunchSpec): Promise<string> => readFile(join(spec.stateDir, 'serial.log'), 'utf8');

beforeAll(async () => {
  const missing = [kernelPath, initrdPath, rootfsPath].filter((p) => !existsSync(p));
  if (missing.length > 0) {
    throw new Error(`guest image missing (${missing.join(', ')}): run \`bash scripts/build-guest.sh\` first`);
  }
  try {
    await promisify(execFile)(DEFAULT_QEMU_BINARY, ['--version']);
  } catch (err) {
    throw new Error(`${DEFAULT_QEMU_BINARY} not runnable (${(err as Error).message}): install qemu-system-x86 (scripts/install-system.sh), then run \`bash scripts/build-guest.sh\``);
  }
  // Short path: the QMP socket path must fit a unix socket (107 bytes).
  root = await mkdtemp(join(tmpdir(), 'tether-test-q-'));
  // 'auto' as the agent runs it: KVM only when it boots the built-in guest (verdict kept per boot).
  vmm = new QemuVmm({ clock, hostId, accel: 'auto', stateRoot: root, probe: accelProbe(dirname(guestDir)) });
});

afterAll(async () => {
  for (const d of decoys) if (isAlive(d)) d.kill('SIGKILL');
  // Kill whatever a failed test left, through the verified path first, then by hand.
  if (vmm) {
    for (const { pid } of await vmm.listOwned(hostId)) {
      const argv = (await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '')).split('\0');
      if (argv[0]?.includes('qemu-system') && argv.some((a) => a.startsWith(`tether:${hostId}:`))) {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          /* gone already */
        }
      }
    }
  }
  const deadline = clock.nowMono() + 5000;
  while ((await qemusOfHost()).size > 0 && clock.nowMono() < deadline) await clock.sleep(20);
  if (root) await rm(root, { recursive: true, force: true });
  console.log('qemu integration measurements:', JSON.stringify(measured));
  // Cleanup is part of the contract: check it.
  expect([...(await qemusOfHost()).keys()]).toEqual([]);
  if (root) expect(existsSync(root)).toBe(false);
});

describe('QemuVmm on real QEMU', () => {
  let a: VmLaunchSpec;
  let b: VmLaunchSpec;

  it('probes the accelerator by running guest code, not by trusting /dev/kvm', async () => {
    const r = await probeAccelDetailed({ clock });
    measured.accel = r.accel;
    measured.accelReason = r.reason;
    measured.accelProbeMs = r.tookMs;
    expect(['kvm', 'tcg']).toContain(r.accel);
    if (!existsSync('/dev/kvm')) expect(r.accel).toBe('tcg');
    // The probe mechanism itself works (under TCG, which always runs here).
    const fw = await firmwareProbe(DEFAULT_QEMU_BINARY, 'tcg', clock, 10_000);
    measured.firmwareProbeTcgMs = fw.tookMs;
    expect(fw).toMatchObject({ ok: true });
    // The guest-boot probe (used for KVM when a guest is given) also works; run it under TCG.
    const boot = await guestBootProbe(DEFAULT_QEMU_BINARY, 'tcg', { kernelPath, initrdPath, kernelCmdline: `console=ttyS0 quiet panic=-1 tsc_early_khz=${await hostTscKhz()}` }, clock, 30_000);
    measured.guestBootProbeTcgMs = boot.tookMs;
    expect(boot).toMatchObject({ ok: true });
  });

  it('fails a start with VMM_ERROR carrying QEMU stderr', async () => {
    const bad = { ...(await newVm('bad')), kernelPath: join(root, 'no-such-vmlinux') };
    const err = (await vmm.start(bad).catch((e: unknown) => e)) as TetherError;
    expect(err).toBeInstanceOf(TetherError);
    expect(err.code).toBe('VMM_ERROR');
    expect(String(err.details.stderr)).toMatch(/no-such-vmlinux/);
    expect(await vmm.status(bad.uid, bad.stateDir)).toEqual({ running: false, ready: false });
  });

  it('starts two daemonised VMs whose command lines carry their uid and the host id', async () => {
    a = await newVm('a', '', true);
    b = await newVm('b');
    const t0 = clock.nowMono();
    const [pa, pb] = await Promise.all([vmm.start(a), vmm.start(b)]);
    measured.startTwoMs = Math.round(clock.nowMono() - t0);
    const procs = await qemusOfHost();
    expect(procs.size).toBe(2);
    for (const [spec, { pid }] of [[a, pa], [b, pb]] as const) {
      const argv = procs.get(pid);
      expect(argv, `qemu for ${spec.uid}`).toBeDefined();
      expect(argv!.join(' ')).toContain(`tether:${hostId}:${spec.uid}`);
      // Daemonised: not our child, so it outlives the agent.
      const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      expect(ppid).not.toBe(process.pid);
    }
    // Idempotent start: the same process.
    expect(await vmm.start(a)).toEqual(pa);
    expect((await qemusOfHost()).size).toBe(2);

    await Promise.all([vmm.waitReady(a.stateDir, 30_000), vmm.waitReady(b.stateDir, 30_000)]);
    measured.twoVmsStartToReadyMs = Math.round(clock.nowMono() - t0);
    expect(await vmm.status(a.uid, a.stateDir)).toEqual({ running: true, pid: pa.pid, ready: true });
    expect(await vmm.status(b.uid, b.stateDir)).toEqual({ running: true, pid: pb.pid, ready: true });
    const logA = await serial(a);
    expect(logA).toContain(`TETHER-GUEST-UID ${a.uid}`);
    expect(logA).toContain('TETHER-ROOTFS-OK');
    // The wrong uid for a state folder is "not running", whatever runs there.
    expect((await vmm.status(b.uid, a.stateDir)).running).toBe(false);
    expect(await vmm.listOwned(hostId)).toEqual(
      [
        { uid: a.uid, pid: pa.pid, stateDir: a.stateDir },
        { uid: b.uid, pid: pb.pid, stateDir: b.stateDir },
      ].sort((x, y) => x.pid - y.pid),
    );
  });

  it('never kills a decoy that carries the uid but is not our QEMU', async () => {
    // 1: not a QEMU at all, argv mentions the mark. 2: a real (paused) QEMU marked for another host.
    const notQemu = spawn(process.execPath, ['-e', 'setInterval(() => {}, 1000)', '--', '-name', `tether:${hostId}:${a.uid}`], { stdio: 'ignore' });
    const otherHost = spawn(
      DEFAULT_QEMU_BINARY,
      ['-M', 'microvm', '-accel', 'tcg', '-S', '-nodefaults', '-no-user-config', '-display', 'none', '-name', `tether:not-${hostId}:${a.uid}`],
      { stdio: 'ignore' },
    );
    decoys.push(notQemu, otherHost);
    await waitArgv(notQemu.pid!, `tether:${hostId}:${a.uid}`);
    await waitArgv(otherHost.pid!, `tether:not-${hostId}:${a.uid}`);
    for (const decoy of [notQemu, otherHost]) {
      const dir = join(root, `decoy-${decoy.pid}`);
      await mkdir(dir);
      await writeFile(join(dir, 'qemu.pid'), `${decoy.pid}\n`);
      expect((await vmm.status(a.uid, dir)).running).toBe(false);
      expect((await vmm.stop(a.uid, dir, { graceMs: 200, killTimeoutMs: 500 })).method).toBe('already-stopped');
      expect((await vmm.stop(a.uid, dir, { graceMs: 0, killTimeoutMs: 500, forceOnly: true })).method).toBe('already-stopped');
    }
    await clock.sleep(200);
    expect(isAlive(notQemu)).toBe(true);
    expect(isAlive(otherHost)).toBe(true);
    expect((await vmm.listOwned(hostId)).map((o) => o.pid)).not.toContain(otherHost.pid);
    expect((await vmm.listOwned(hostId)).map((o) => o.pid)).not.toContain(notQemu.pid);
    notQemu.kill('SIGKILL');
    otherHost.kill('SIGKILL');
  });

  it('stops gracefully through the ACPI power button', async () => {
    const res = await vmm.stop(a.uid, a.stateDir, { graceMs: 10_000, killTimeoutMs: 3000 });
    measured.gracefulAcpiStopMs = res.tookMs;
    expect(res.method).toBe('graceful');
    expect(await vmm.status(a.uid, a.stateDir)).toEqual({ running: false, ready: false });
    expect([...(await qemusOfHost()).values()].some((argv) => argv.join(' ').includes(a.uid))).toBe(false);
    expect(await serial(a)).toContain('TETHER-GUEST-POWEROFF');
    // Files are the caller's to clean; stop again is a no-op.
    // (QEMU itself removes its pid file on a clean exit; the serial log stays.)
    expect(existsSync(join(a.stateDir, 'serial.log'))).toBe(true);
    expect((await vmm.stop(a.uid, a.stateDir, { graceMs: 1000, killTimeoutMs: 1000 })).method).toBe('already-stopped');
  });

  it('adopts a running VM after an agent restart (new instance) and stops it with ctrl-alt-del', async () => {
    // The old agent is gone: its console connections closed (a console monitor serves one client).
    await vmm.close();
    const adopted = new QemuVmm({ clock, hostId, accel: 'tcg', stateRoot: root });
    const st = await adopted.status(b.uid, b.stateDir);
    expect(st).toMatchObject({ running: true, ready: true });
    expect(await adopted.listOwned(hostId)).toEqual([{ uid: b.uid, pid: st.pid, stateDir: b.stateDir }]);
    const res = await adopted.stop(b.uid, b.stateDir, { graceMs: 10_000, killTimeoutMs: 3000, gracefulSignal: 'ctrl-alt-del' });
    measured.gracefulCtrlAltDelStopMs = res.tookMs;
    expect(res.method).toBe('graceful');
    expect(await serial(b)).toContain('TETHER-GUEST-POWEROFF');
    expect((await adopted.status(b.uid, b.stateDir)).running).toBe(false);
  });

  it('forces a guest that ignores the power button once graceMs has passed (QMP quit)', async () => {
    const c = await newVm('c', 'tether.ignore_powerdown=1');
    const t0 = clock.nowMono();
    await vmm.start(c);
    await vmm.waitReady(c.stateDir, 30_000);
    measured.oneVmStartToReadyMs = Math.round(clock.nowMono() - t0);
    const res = await vmm.stop(c.uid, c.stateDir, { graceMs: 1500, killTimeoutMs: 3000 });
    measured.ignoredPowerdownStopMs = res.tookMs;
    expect(res.method).toBe('forced-quit');
    expect(res.tookMs).toBeGreaterThanOrEqual(1500);
    expect(res.tookMs).toBeLessThan(1500 + 3000);
    expect(await serial(c)).toContain('TETHER-GUEST-POWERDOWN-IGNORED');
    expect((await vmm.status(c.uid, c.stateDir)).running).toBe(false);
  });

  it('forceOnly skips the graceful phase', async () => {
    const e = await newVm('e');
    await vmm.start(e);
    const res = await vmm.stop(e.uid, e.stateDir, { graceMs: 10_000, killTimeoutMs: 3000, forceOnly: true });
    measured.forceOnlyQuitStopMs = res.tookMs;
    expect(res.method).toBe('forced-quit');
    expect(res.tookMs).toBeLessThan(1000);
  });

  it('SIGKILLs a hung QEMU whose QMP does not answer', async () => {
    const d = await newVm('d');
    const { pid } = await vmm.start(d);
    // Freeze it (verified: it is the process we just started, marked with our host id).
    expect((await readFile(`/proc/${pid}/cmdline`, 'utf8')).includes(`tether:${hostId}:${d.uid}`)).toBe(true);
    process.kill(pid, 'SIGSTOP');
    const res = await vmm.stop(d.uid, d.stateDir, { graceMs: 500, killTimeoutMs: 3000 });
    measured.hungQemuStopMs = res.tookMs;
    expect(res.method).toBe('forced-kill');
    expect(res.tookMs).toBeLessThan(500 + 3000);
    expect((await vmm.status(d.uid, d.stateDir)).running).toBe(false);
  });

  it('leaves nothing of this host running', async () => {
    expect(await vmm.listOwned(hostId)).toEqual([]);
    expect((await qemusOfHost()).size).toBe(0);
  });
});
