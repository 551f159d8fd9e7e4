import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { SystemClock } from '../../src/adapters/clock/system-clock.js';
import { GuardianFeed, defaultTetherBin } from '../../src/agent/gc/guardian-feed.js';
import { runningGuardian } from '../../src/guardian/guardian-lock.js';
import { datagramReceiver, receivers } from '../support/datagram-receiver.js';
import { silentLogger } from '../support/fake-ports.js';
import { removeDir, requireRealParts, testDir, testHostId, until } from '../support/real-host.js';
import { watchdogFifo, type FifoReader } from '../support/watchdog-fifo.js';

/**
 * The guardian's production anchors against stand-ins (this machine has no /dev/watchdog and no
 * systemd): a FIFO whose reader records the pets plays the watchdog device, and a real unix
 * datagram socket bound by python3 plays systemd's NOTIFY_SOCKET. A real guardian process.
 *
 * Times compared below are all CLOCK_MONOTONIC (the readers stamp arrivals themselves).
 * READER_LAG_MS bounds how late a byte written before the deadline may be stamped by the reader
 * (pipe + python3 wake-up on 2 busy cores); it never excuses a pet written after the deadline by
 * more than that.
 */

const READER_LAG_MS = 150;
const PET_MS = 200;
const clock = new SystemClock();
const procs: ChildProcess[] = [];
let root = '';
let bootId = '';

function startGuardian(stateDir: string, hostId: string, env: NodeJS.ProcessEnv, extra: string[]): ChildProcess {
  const p = spawn(process.execPath, [defaultTetherBin(), 'guardian', '--state-dir', stateDir, '--host-id', hostId, '--kill-timeout', '1s', ...extra], {
    env: { ...process.env, ...env },
    stdio: ['ignore', 'inherit', 'inherit'],
  });
  procs.push(p);
  return p;
}

const exited = (p: ChildProcess) => p.exitCode !== null || p.signalCode !== null;

beforeAll(() => {
  requireRealParts(['build']);
  root = testDir('anchor');
  bootId = readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
});
afterEach(() => {
  for (const p of procs.splice(0)) if (!exited(p)) p.kill('SIGKILL');
  for (const r of receivers.splice(0)) r.kill('SIGKILL');
});
afterAll(() => {
  if (root) removeDir(root);
});

describe('guardian anchors: watchdog device (FIFO stand-in) and sd_notify (datagram socket)', () => {
  it('pets only while the deadline holds (pending or suspended), stops once it passed, resumes when re-armed, and disarms with V on shutdown; READY=1 and WATCHDOG=1 while healthy', async () => {
    const stateDir = join(root, 'a');
    const hostId = testHostId('anch');
    mkdirSync(stateDir);
    const fifo: FifoReader = watchdogFifo(join(root, 'watchdog-a'));
    const notify = await datagramReceiver(join(root, 'notify-a.sock'));
    const feed = new GuardianFeed(stateDir, hostId, bootId, clock, silentLogger());
    const g = startGuardian(stateDir, hostId, { NOTIFY_SOCKET: join(root, 'notify-a.sock'), WATCHDOG_USEC: '1000000' }, [
      '--watchdog-device', join(root, 'watchdog-a'), '--watchdog-pet-interval', `${PET_MS}ms`,
    ]);
    await until('READY=1', () => notify.messages.some((m) => m.startsWith('READY=1')), 10_000, 20);
    // Idle (no feed yet) counts as holding: pets arrive.
    await clock.sleep(700);
    expect(fifo.bytes.filter((b) => b === '.').length).toBeGreaterThanOrEqual(2);

    // Armed and renewed for 2 s: regular pets and WATCHDOG=1.
    let deadline = 0;
    for (const end = clock.nowMono() + 2000; clock.nowMono() < end; await clock.sleep(250)) {
      deadline = clock.nowMono() + 1200;
      feed.feed(deadline, { epoch: 1, reason: 'attached' });
    }
    // Suspended (acknowledged hold): pets go on past the old deadline.
    feed.feed(null, { epoch: 1, reason: 'held' });
    await clock.sleep(deadline - clock.nowMono() + 800);
    const petsDuringHold = fifo.times.filter((t, i) => fifo.bytes[i] === '.' && t > deadline + READER_LAG_MS).length;
    expect(petsDuringHold).toBeGreaterThanOrEqual(2);

    // Armed again, then renewals stop: no pet after the deadline.
    deadline = clock.nowMono() + 600;
    feed.feed(deadline, { epoch: 1, reason: 'detached' });
    await clock.sleep(deadline - clock.nowMono() + 1500);
    const lastPetBefore = Math.max(...fifo.times.filter((t, i) => fifo.bytes[i] === '.'));
    const petsAfter = fifo.times.filter((t, i) => fifo.bytes[i] === '.' && t > deadline + READER_LAG_MS);
    expect(petsAfter).toEqual([]);
    expect(lastPetBefore).toBeLessThanOrEqual(deadline + READER_LAG_MS);
    // The guardian itself is still healthy: WATCHDOG=1 keeps coming after the fire.
    expect(notify.times.filter((t, i) => notify.messages[i] === 'WATCHDOG=1' && t > deadline + 500).length).toBeGreaterThanOrEqual(1);

    // Re-armed by a newer feed: pets resume.
    const rearmAt = clock.nowMono();
    feed.feed(clock.nowMono() + 5000, { epoch: 2, reason: 'attached' });
    await until('pets resume', () => fifo.times.some((t, i) => fifo.bytes[i] === '.' && t > rearmAt), 3000, 20);

    // Clean shutdown (no VM of this host): V, then the writer closes; STOPPING=1.
    feed.shutdown();
    await until('guardian exits', () => exited(g), 5000, 20);
    await until('FIFO closed', () => fifo.bytes.includes('EOF'), 3000, 20);
    expect(fifo.bytes.slice(-2)).toEqual(['V', 'EOF']);
    await until('STOPPING=1', () => notify.messages.includes('STOPPING=1'), 3000, 20);

    const pets = fifo.times.filter((_, i) => fifo.bytes[i] === '.');
    const gaps = pets.slice(1).map((t, i) => t - pets[i]!).filter((gap) => gap < 1000);
    const wd = notify.times.filter((_, i) => notify.messages[i] === 'WATCHDOG=1');
    console.log('guardian anchors:', JSON.stringify({
      pets: pets.length,
      petGapMsMedian: gaps.sort((x, y) => x - y)[Math.floor(gaps.length / 2)],
      lastPetBeforeDeadlineMs: Math.round(deadline - lastPetBefore),
      watchdogNotifications: wd.length,
      watchdogGapMsMax: Math.round(Math.max(...wd.slice(1).map((t, i) => t - wd[i]!))),
    }));
    // WATCHDOG_USEC=1 s: WATCHDOG=1 at least every 500 ms (+ reader lag), never a hole systemd would punish.
    expect(Math.max(...wd.slice(1).map((t, i) => t - wd[i]!))).toBeLessThan(1000);
    expect(existsSync(join(stateDir, 'guardian', 'guardian.pid'))).toBe(false);
  });

  it('a guardian that dies (SIGKILL) leaves the device armed: no V, so the hardware would reset the host', async () => {
    const stateDir = join(root, 'b');
    const hostId = testHostId('anch');
    mkdirSync(stateDir);
    const fifo = watchdogFifo(join(root, 'watchdog-b'));
    const feed = new GuardianFeed(stateDir, hostId, bootId, clock, silentLogger(), { watchdogDevice: join(root, 'watchdog-b'), watchdogPetIntervalMs: PET_MS });
    feed.feed(clock.nowMono() + 10_000, { epoch: 1, reason: 'attached' });
    const r = await feed.ensureRunning();
    expect(r.started).toBe(true);
    await until('pets', () => fifo.bytes.length >= 2, 5000, 20);
    process.kill(r.pid, 'SIGKILL');
    await until('FIFO closed', () => fifo.bytes.includes('EOF'), 3000, 20);
    expect(fifo.bytes).not.toContain('V');
    expect(runningGuardian(stateDir)).toBeUndefined();
  });

  it('waits for the lock under --wait-for-lock (systemd unit next to an agent-started guardian), reporting healthy meanwhile', async () => {
    const stateDir = join(root, 'c');
    const hostId = testHostId('anch');
    mkdirSync(stateDir);
    const feed = new GuardianFeed(stateDir, hostId, bootId, clock, silentLogger());
    const first = await feed.ensureRunning();
    const notify = await datagramReceiver(join(root, 'notify-c.sock'));
    const unit = startGuardian(stateDir, hostId, { NOTIFY_SOCKET: join(root, 'notify-c.sock'), WATCHDOG_USEC: '1000000' }, ['--wait-for-lock', '--poll-interval', '100ms']);
    await until('READY while waiting', () => notify.messages.some((m) => m.startsWith('READY=1') && m.includes('waiting')), 10_000, 20);
    expect(runningGuardian(stateDir)).toBe(first.pid);
    // Without the flag a second guardian refuses to start.
    const refused = startGuardian(stateDir, hostId, {}, []);
    await until('second guardian refused', () => exited(refused), 10_000, 20);
    expect(refused.exitCode).toBe(1);
    process.kill(first.pid, 'SIGKILL');
    await until('the unit guardian takes over', () => runningGuardian(stateDir) === unit.pid, 10_000, 20);
    unit.kill('SIGTERM');
    await until('unit guardian exits', () => exited(unit), 5000, 20);
  });
  it('exits when its state dir disappears (nothing left to protect or to verify against)', async () => {
    const stateDir = join(root, 'd');
    mkdirSync(stateDir);
    const feed = new GuardianFeed(stateDir, testHostId('anch'), bootId, clock, silentLogger());
    const r = await feed.ensureRunning();
    // The live guardian may append to its journal while the tree is being removed (ENOTEMPTY on the
    // last rmdir, CI ac8bf80): retry until the removal wins; once the dir is gone its writes fail.
    rmSync(stateDir, { recursive: true, force: true, maxRetries: 20, retryDelay: 25 });
    await until('guardian exits', () => {
      try {
        return !readFileSync(`/proc/${r.pid}/cmdline`, 'utf8').includes('guardian');
      } catch {
        return true;
      }
    }, 5000, 20);
  });
});
