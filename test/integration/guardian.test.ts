import { spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, copyFileSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SystemClock } from '../../src/adapters/clock/system-clock.js';
import { readArgv } from '../../src/adapters/qemu/proc-fs.js';
import { readProcStat, resolveQemuExecutable } from '../../src/adapters/qemu/process-owner.js';
import { QemuVmm } from '../../src/adapters/qemu/qemu-vmm.js';
import { cgroup2MountFrom, cgroupOf, cgroupPids, removeEmptyCgroup } from '../../src/adapters/qemu/vm-cgroup.js';
import { GuardianFeed } from '../../src/agent/gc/guardian-feed.js';
import type { GuardianFiredRecord } from '../../src/domain/guardian.js';
import { runningGuardian } from '../../src/guardian/guardian-lock.js';
import type { VmLaunchSpec } from '../../src/ports/vmm.js';
import { silentLogger } from '../support/fake-ports.js';
import { killHostLeftovers, qemusOf, removeDir, requireRealParts, testDir, testHostId, until } from '../support/real-host.js';

/**
 * The guardian on real QEMU guests: a real `tether guardian` process (started the way the agent
 * starts it, through GuardianFeed.ensureRunning) fed deadlines through the feed file, with no
 * agent at all, i.e. exactly the situation of an agent that was SIGKILLed or frozen.
 *
 * The property under test is the bound the controller relies on: once renewals stop, every VM of
 * the host is gone by `deadline + killTimeout`. The guardian measures its own kill (fired.json,
 * same monotonic clock); the test also observes it independently by polling /proc every 10 ms,
 * which adds at most one poll period plus the test process's scheduling delay on 2 cores shared
 * with TCG guests: OBSERVATION_ALLOWANCE_MS covers that observation lag only.
 */

const OBSERVATION_ALLOWANCE_MS = 250;
const KILL_TIMEOUT_MS = 2000;
const clock = new SystemClock();
const hostId = testHostId('guard');
const measured: Record<string, unknown> = {};
const decoys: ChildProcess[] = [];
let stateDir = '';
let vmm: QemuVmm;
let feed: GuardianFeed;
let bootId = '';

function spec(label: string): VmLaunchSpec {
  const uid = randomUUID();
  const dir = join(stateDir, 'vm', 'default', label, uid);
  mkdirSync(dir, { recursive: true });
  const guest = join(process.env.TETHER_CACHE_DIR ?? join(homedir(), '.cache', 'tether'), 'guest');
  return {
    uid, hostId, vcpu: 1, memoryMb: 96, kernelPath: join(guest, 'vmlinux'), initrdPath: join(guest, 'initrd.img'),
    kernelCmdline: `console=ttyS0 quiet panic=-1 tether.uid=${uid}`, stateDir: dir, disks: [], nics: [],
  };
}

/** A process identity (pid + start time): "gone" means this exact process no longer runs. */
interface Ident { pid: number; start: string }
async function ident(pid: number): Promise<Ident> {
  const st = await readProcStat(pid);
  if (!st) throw new Error(`pid ${pid} is not running`);
  return { pid, start: st.startTime };
}
async function alive(p: Ident): Promise<boolean> {
  const st = await readProcStat(p.pid);
  return st !== undefined && st.startTime === p.start && st.state !== 'Z';
}

/** Journal lines of the guardian, parsed. */
function journal(): { event: string; mono: number; [k: string]: unknown }[] {
  const f = join(stateDir, 'guardian', 'journal.jsonl');
  if (!existsSync(f)) return [];
  return readFileSync(f, 'utf8').trim().split('\n').filter(Boolean).map((l) => JSON.parse(l) as { event: string; mono: number });
}

function firedRecord(): GuardianFiredRecord | undefined {
  return feed.fired();
}

/** Feeds `now + aheadMs` every `everyMs` for `forMs`; returns the last deadline fed. */
async function renew(aheadMs: number, forMs: number, everyMs: number, check?: () => Promise<void>): Promise<number> {
  const end = clock.nowMono() + forMs;
  let last = 0;
  while (clock.nowMono() < end) {
    last = clock.nowMono() + aheadMs;
    feed.feed(last, { epoch: 1, reason: 'attached' });
    await check?.();
    await clock.sleep(everyMs);
  }
  return last;
}

/** Polls every 10 ms until every process in `procs` is gone; returns the monotonic time it saw that. */
async function goneAt(procs: Ident[], timeoutMs: number): Promise<number> {
  const end = clock.nowMono() + timeoutMs;
  for (;;) {
    const states = await Promise.all(procs.map(alive));
    if (states.every((a) => !a)) return clock.nowMono();
    if (clock.nowMono() > end) throw new Error(`VMs still alive after ${timeoutMs} ms: ${procs.filter((_, i) => states[i]).map((p) => p.pid).join(', ')}`);
    await clock.sleep(10);
  }
}

/** SIGKILLs the running guardian (verified by its command line) and waits until it is gone. */
async function killGuardian(): Promise<number> {
  const pid = runningGuardian(stateDir);
  if (pid === undefined) throw new Error('no guardian running');
  const id = await ident(pid);
  process.kill(pid, 'SIGKILL');
  await until('guardian gone', async () => !(await alive(id)), 5000, 10);
  return clock.nowMono();
}

beforeAll(async () => {
  requireRealParts(['root', 'qemu', 'guest', 'build']);
  stateDir = testDir('guard');
  bootId = readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
  vmm = new QemuVmm({ clock, hostId, stateRoot: stateDir, accel: 'tcg' });
  feed = new GuardianFeed(stateDir, hostId, bootId, clock, silentLogger(), { killTimeoutMs: KILL_TIMEOUT_MS });
});

afterAll(async () => {
  for (const d of decoys) if (d.exitCode === null && d.signalCode === null) d.kill('SIGKILL');
  const g = stateDir ? runningGuardian(stateDir) : undefined;
  if (g !== undefined) process.kill(g, 'SIGKILL');
  if (vmm) {
    for (const vm of await vmm.listOwned(hostId)) await vmm.stop(vm.uid, vm.stateDir!, { graceMs: 0, killTimeoutMs: 3000, forceOnly: true });
  }
  killHostLeftovers(hostId);
  await until('no QEMU of the test host', () => qemusOf(hostId).size === 0, 5000, 20);
  const cg = vmm ? await vmm.vmCgroupDir(hostId) : undefined;
  if (cg) await until('empty host cgroup removed', () => removeEmptyCgroup(cg), 5000, 50);
  if (stateDir) removeDir(stateDir);
  console.log('guardian integration measurements:', JSON.stringify(measured, null, 1));
  expect(qemusOf(hostId).size).toBe(0);
  if (cg) expect(existsSync(cg)).toBe(false);
});

describe('tether guardian on real QEMU guests, with no agent', () => {
  let a: VmLaunchSpec;
  let b: VmLaunchSpec;
  let ia: Ident;
  let ib: Ident;

  it('starts VMs inside the per-host cgroup (when a writable cgroup2 exists), so none escapes', async () => {
    a = spec('a');
    b = spec('b');
    const [pa, pb] = await Promise.all([vmm.start(a), vmm.start(b)]);
    await Promise.all([vmm.waitReady(a.stateDir, 60_000), vmm.waitReady(b.stateDir, 60_000)]);
    ia = await ident(pa.pid);
    ib = await ident(pb.pid);
    const mount = cgroup2MountFrom(readFileSync('/proc/self/mounts', 'utf8'));
    const cg = await vmm.vmCgroupDir(hostId);
    measured.cgroup = cg ?? 'none (no writable cgroup2: pid-file scan only)';
    if (mount === undefined) {
      expect(cg).toBeUndefined();
      return;
    }
    expect(cg).toBe(join(mount, 'tether', hostId));
    for (const p of [pa.pid, pb.pid]) {
      expect(await cgroupOf(p)).toBe(`/tether/${hostId}`);
      expect(await cgroupPids(cg!)).toContain(p);
      // argv[0] is still the QEMU binary (the shell that joined the cgroup exec'd it).
      expect((await readArgv(p))?.[0]).toBe('qemu-system-x86_64');
    }
  });

  it('starts one guardian through GuardianFeed.ensureRunning, detached, and it stays small', async () => {
    const t0 = clock.nowMono();
    const first = await feed.ensureRunning();
    measured.guardianStartMs = Math.round(clock.nowMono() - t0);
    expect(first.started).toBe(true);
    expect(await feed.ensureRunning()).toEqual({ started: false, pid: first.pid });
    // Its own session and process group: a terminal's SIGINT to ours never reaches it.
    const stat = readFileSync(`/proc/${first.pid}/stat`, 'utf8');
    const [, , pgrp, session] = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    expect(Number(pgrp)).toBe(first.pid);
    expect(Number(session)).toBe(first.pid);
    const status = readFileSync(`/proc/${first.pid}/status`, 'utf8');
    measured.guardianRssKiB = Number(/VmRSS:\s+(\d+)/.exec(status)?.[1]);
    // No agent-sized imports: a bare node is ~40 MiB here, the full CLI ~80 MiB.
    expect(measured.guardianRssKiB).toBeLessThan(70 * 1024);
    const maps = readFileSync(`/proc/${first.pid}/maps`, 'utf8');
    expect(maps).not.toMatch(/better_sqlite3|better-sqlite3/);
  });

  it('keeps the VMs running (same processes) while renewed deadlines keep moving ahead', async () => {
    await renew(1500, 4000, 300, async () => {
      expect(await alive(ia)).toBe(true);
      expect(await alive(ib)).toBe(true);
    });
    const events = journal().map((l) => l.event);
    expect(events).toContain('armed');
    expect(events.filter((e) => e === 're-armed').length).toBeGreaterThan(5);
    expect(events).not.toContain('fired');
    expect(firedRecord()).toBeUndefined();
    expect((await vmm.status(a.uid, a.stateDir)).pid).toBe(ia.pid);
  });

  let decoyForged: Ident;
  let decoyOtherAgent: Ident;

  it('kills every VM by deadline + killTimeout once renewals stop, and spares decoys that fail the ownership check', async () => {
    // Decoy 1: a real QEMU marked for this host, run by "another agent" (pid file in another state dir), moved into our cgroup.
    const otherDir = join(stateDir, 'other-agent', 'vm', 'default', 'x', randomUUID());
    mkdirSync(otherDir, { recursive: true });
    const d1uid = otherDir.split('/').pop()!;
    const q = spawn('qemu-system-x86_64', ['-M', 'none', '-S', '-display', 'none', '-nodefaults', '-no-user-config', '-name', `tether:${hostId}:${d1uid}`], { stdio: 'ignore' });
    decoys.push(q);
    await until('decoy QEMU', async () => (await readArgv(q.pid!))?.includes(`tether:${hostId}:${d1uid}`), 5000, 10);
    writeFileSync(join(otherDir, 'qemu.pid'), `${q.pid}\n`);
    const cg = await vmm.vmCgroupDir(hostId);
    if (cg) writeFileSync(join(cg, 'cgroup.procs'), `${q.pid}\n`);
    decoyOtherAgent = await ident(q.pid!);
    // Decoy 2: a renamed copy of perl with a forged mark, its pid file INSIDE our state dir.
    const bin = join(stateDir, 'forger');
    mkdirSync(bin);
    copyFileSync(await resolveQemuExecutable('perl'), join(bin, 'qemu-system-x86_64'));
    chmodSync(join(bin, 'qemu-system-x86_64'), 0o755);
    const d2uid = randomUUID();
    const forged = spawn(join(bin, 'qemu-system-x86_64'), ['-e', 'sleep 600', '--', '-name', `tether:${hostId}:${d2uid}`], { stdio: 'ignore' });
    decoys.push(forged);
    await until('forged decoy', async () => (await readArgv(forged.pid!))?.includes(`tether:${hostId}:${d2uid}`), 5000, 10);
    const forgedDir = join(stateDir, 'vm', 'default', 'forged', d2uid);
    mkdirSync(forgedDir, { recursive: true });
    writeFileSync(join(forgedDir, 'qemu.pid'), `${forged.pid}\n`);
    decoyForged = await ident(forged.pid!);

    // Renew a little more, then stop: the agent is "dead" from here on.
    const deadline = await renew(1500, 1000, 300);
    const seen = await goneAt([ia, ib], 1500 + KILL_TIMEOUT_MS + 5000);
    const fired = await until('fired.json done', () => {
      const f = firedRecord();
      return f && f.state !== 'killing' ? f : undefined;
    }, 5000, 20);
    measured.killedObservedAfterDeadlineMs = Math.round(seen - deadline);
    measured.firedLateMs = Math.round((fired.firedAtMono - deadline) * 10) / 10;
    measured.killTookMs = fired.tookMs;
    measured.goneAfterFireMs = fired.killed.map((k) => k.goneAfterMs);
    // Never early, and within the bound.
    expect(seen).toBeGreaterThanOrEqual(deadline);
    expect(fired.firedAtMono).toBeGreaterThanOrEqual(deadline);
    expect(fired.state).toBe('done');
    expect(fired.killed.map((k) => k.uid).sort()).toEqual([a.uid, b.uid].sort());
    for (const k of fired.killed) expect(fired.firedAtMono + k.goneAfterMs!).toBeLessThanOrEqual(deadline + KILL_TIMEOUT_MS);
    expect(seen).toBeLessThanOrEqual(deadline + KILL_TIMEOUT_MS + OBSERVATION_ALLOWANCE_MS);
    // Decoys untouched, and watched for a while ("never" is checked by looking more than once).
    for (let i = 0; i < 5; i++) {
      expect(await alive(decoyForged)).toBe(true);
      expect(await alive(decoyOtherAgent)).toBe(true);
      await clock.sleep(100);
    }
    const j = journal();
    expect(j.filter((l) => l.event === 'fired')).toHaveLength(1);
    expect(j.filter((l) => l.event === 'killed').map((l) => l.pid).sort()).toEqual([ia.pid, ib.pid].sort());
    expect(j.find((l) => l.event === 'verify')).toMatchObject({ gone: 2, survivors: [] });
    expect(j.some((l) => l.event === 'kill-skipped' && l.pidFile === join(forgedDir, 'qemu.pid') && String(l.why).includes('runs'))).toBe(true);
    if (cg) expect(j.some((l) => l.event === 'leak' && l.pid === decoyOtherAgent.pid)).toBe(true);
    expect(fired.leaks.map((l) => l.pid)).toEqual(cg ? [decoyOtherAgent.pid] : []);
    // The agent acknowledges after its cleanup.
    feed.acknowledgeFired();
    expect(firedRecord()).toBeUndefined();
    for (const d of decoys.splice(0)) d.kill('SIGKILL');
  });

  it('after a SIGKILL, ensureRunning starts it again and it picks up the feed (gap measured)', async () => {
    // Re-armed first: while the last deadline stays passed, a VM that shows up is killed at once.
    feed.feed(clock.nowMono() + 5000, { epoch: 2, reason: 'attached' });
    const c = spec('c');
    const ic = await ident((await vmm.start(c)).pid);
    feed.feed(clock.nowMono() + 1500, { epoch: 2, reason: 'attached' });
    await clock.sleep(300);
    const killedAt = await killGuardian();
    // The agent keeps feeding (it is alive here); nothing enforces the deadline until the restart.
    await renew(1500, 1000, 300);
    const t0 = clock.nowMono();
    const r = await feed.ensureRunning();
    expect(r.started).toBe(true);
    const armed = await until('new guardian armed', () => journal().find((l) => l.event === 'armed' && l.mono > t0), 10_000, 10);
    measured.restartToArmedMs = Math.round(armed.mono - t0);
    measured.unprotectedGapMs = Math.round(armed.mono - killedAt);
    expect(await alive(ic)).toBe(true);
    const deadline = await renew(1500, 1000, 300);
    const seen = await goneAt([ic], 1500 + KILL_TIMEOUT_MS + 5000);
    measured.afterRestartKilledObservedAfterDeadlineMs = Math.round(seen - deadline);
    expect(seen).toBeGreaterThanOrEqual(deadline);
    expect(seen).toBeLessThanOrEqual(deadline + KILL_TIMEOUT_MS + OBSERVATION_ALLOWANCE_MS);
    feed.acknowledgeFired();
  });

  it('a deadline that passes while the guardian is dead is enforced as soon as it is back', async () => {
    feed.feed(clock.nowMono() + 5000, { epoch: 3, reason: 'attached' });
    const d = spec('d');
    const id = await ident((await vmm.start(d)).pid);
    const deadline = clock.nowMono() + 800;
    feed.feed(deadline, { epoch: 3, reason: 'detached' });
    await clock.sleep(300);
    await killGuardian();
    await clock.sleep(deadline + 500 - clock.nowMono());
    expect(await alive(id)).toBe(true); // nothing enforces it: this is the gap
    const t0 = clock.nowMono();
    await feed.ensureRunning();
    const seen = await goneAt([id], 10_000); // throws if it is not enforced
    measured.lateFireAfterRestartMs = Math.round(seen - t0);
    expect(journal().filter((l) => l.event === 'fired' && l.mono > t0)).toHaveLength(1);
    // While that deadline stays passed (no newer feed), a VM that shows up is killed as well.
    const f = spec('f');
    const t1 = clock.nowMono();
    await vmm.start(f).catch(() => undefined); // may lose its daemonising child to the guardian already
    await until('late VM killed', async () => !(await vmm.status(f.uid, f.stateDir)).running, 5000, 10);
    measured.vmStartedAfterFireKilledWithinMs = Math.round(clock.nowMono() - t1);
    expect(journal().some((l) => l.event === 'fired' && l.again === true && l.mono > t1)).toBe(true);
    // Acknowledge only once the guardian has recorded that pass (it rewrites fired.json after verifying).
    await until('the late kill recorded', () => journal().some((l) => l.event === 'verify' && l.mono > t1), 5000, 10);
    feed.acknowledgeFired();
  });

  it('a suspended (null) deadline kills nothing; a shutdown feed with no VM left ends the guardian', async () => {
    const tStart = clock.nowMono();
    feed.feed(clock.nowMono() + 5000, { epoch: 4, reason: 'attached' });
    const e = spec('e');
    const ie = await ident((await vmm.start(e)).pid);
    feed.feed(clock.nowMono() + 800, { epoch: 4, reason: 'attached' });
    await clock.sleep(200);
    feed.feed(null, { epoch: 4, reason: 'attached (held)' });
    const t0 = clock.nowMono();
    while (clock.nowMono() - t0 < 2500) {
      expect(await alive(ie)).toBe(true);
      await clock.sleep(250);
    }
    expect(journal().some((l) => l.event === 'suspended')).toBe(true);
    // Nothing fired in this test. (fired.json itself may hold the previous test's fire: a pass of that
    // fire on a straggling process of its late VM can rewrite it after that test acknowledged it.)
    expect(journal().filter((l) => l.event === 'fired' && l.mono > tStart)).toEqual([]);
    expect(firedRecord()?.epoch).not.toBe(4);
    // A graceful agent stop: VMs stopped first, then shutdown.
    await vmm.stop(e.uid, e.stateDir, { graceMs: 0, killTimeoutMs: 3000, forceOnly: true });
    const pid = runningGuardian(stateDir)!;
    const g = await ident(pid);
    feed.shutdown();
    await until('guardian exits on shutdown', async () => !(await alive(g)), 5000, 20);
    expect(journal().at(-1)).toMatchObject({ event: 'exit', why: 'shutdown' });
    expect(runningGuardian(stateDir)).toBeUndefined();
  });
});
