import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeEach, describe, expect, it } from 'vitest';
import { GuardianFeed, GUARDIAN_CMDLINE_MARK } from '../../src/agent/gc/guardian-feed.js';
import { absorbFeed, guardianDecision, parseGuardianFeed, type GuardianFeedRecord } from '../../src/domain/guardian.js';
import { isGuardianArgv, stateDirArg } from '../../src/guardian/guardian-lock.js';
import { FakeClock } from '../support/fake-clock.js';
import { silentLogger } from '../support/fake-ports.js';
import { removeDir, testDir } from '../support/real-host.js';

/** The agent's side of the feed protocol (no guardian process: see the integration tests). */

const root = testDir('gfeed');
let n = 0;
let stateDir: string;
const BOOT = 'boot-1';
const read = (sd: string): GuardianFeedRecord => parseGuardianFeed(readFileSync(join(sd, 'guardian', 'feed.json'), 'utf8'));

beforeEach(() => {
  stateDir = join(root, `s${n++}`);
  mkdirSync(stateDir);
});
afterAll(() => removeDir(root));

describe('GuardianFeed.feed', () => {
  it('writes a valid feed atomically, and skips a write when nothing changed', () => {
    const clock = new FakeClock();
    const g = new GuardianFeed(stateDir, 'h1', BOOT, clock, silentLogger());
    g.feed(1500, { epoch: 3, reason: 'attached' });
    const a = read(stateDir);
    expect(a).toMatchObject({ v: 1, hostId: 'h1', bootId: BOOT, deadlineMono: 1500, epoch: 3, reason: 'attached' });
    g.feed(1500, { epoch: 3, reason: 'attached' });
    expect(read(stateDir).seq).toBe(a.seq);
    g.feed(2500, { epoch: 3, reason: 'attached' });
    expect(read(stateDir)).toMatchObject({ deadlineMono: 2500 });
    expect(read(stateDir).seq).toBeGreaterThan(a.seq);
    g.feed(null, { epoch: 3, reason: 'attached' });
    expect(read(stateDir).deadlineMono).toBeNull();
    // No temp file is left behind.
    expect(readdirSync(join(stateDir, 'guardian'))).toEqual(['feed.json']);
    expect(() => g.feed(Number.NaN, { epoch: 3, reason: 'x' })).toThrow(/deadlineMono/);
  });

  it('keeps seq increasing across agent restarts on one boot, so the guardian takes the new agent\'s feed', () => {
    const clock = new FakeClock();
    const first = new GuardianFeed(stateDir, 'h1', BOOT, clock, silentLogger());
    for (let i = 0; i < 5; i++) first.feed(1000 + i, { epoch: 1, reason: 'attached' });
    const held = read(stateDir);
    // A restarted agent (new instance, same clock position) must still be newer.
    const second = new GuardianFeed(stateDir, 'h1', BOOT, clock, silentLogger());
    second.feed(9000, { epoch: 1, reason: 'attached' });
    const r = absorbFeed(held, readFileSync(join(stateDir, 'guardian', 'feed.json'), 'utf8'), { hostId: 'h1', bootId: BOOT });
    expect(r.outcome).toBe('re-armed');
    expect(r.held?.deadlineMono).toBe(9000);
  });

  it('shutdown keeps the last deadline, so a guardian that still sees a VM enforces it', () => {
    const clock = new FakeClock();
    const g = new GuardianFeed(stateDir, 'h1', BOOT, clock, silentLogger());
    g.feed(4000, { epoch: 2, reason: 'attached' });
    g.shutdown();
    const f = read(stateDir);
    expect(f).toMatchObject({ shutdown: true, deadlineMono: 4000, epoch: 2 });
    expect(guardianDecision(f, BOOT, 4001).kind).toBe('fire');
    // Feeding again after a shutdown writes a normal feed.
    g.feed(4000, { epoch: 2, reason: 'attached' });
    expect(read(stateDir).shutdown).toBeUndefined();
  });
});

describe('GuardianFeed.fired', () => {
  it('reads the fire record, never hides an unreadable one, and forgets it when acknowledged', () => {
    const clock = new FakeClock();
    const g = new GuardianFeed(stateDir, 'h1', BOOT, clock, silentLogger());
    expect(g.fired()).toBeUndefined();
    mkdirSync(join(stateDir, 'guardian'), { recursive: true });
    const rec = {
      v: 1, hostId: 'h1', bootId: BOOT, seq: 7, epoch: 2, reason: 'detached', deadlineMono: 100, firedAtMono: 101, firedAt: 5,
      state: 'done', killed: [{ pid: 10, uid: 'u', goneAfterMs: 2 }], survivors: [], leaks: [], tookMs: 3,
    };
    writeFileSync(g.files.fired, JSON.stringify(rec));
    expect(g.fired()).toEqual(rec);
    writeFileSync(g.files.fired, '{"v":1,"state":');
    expect(g.fired()).toMatchObject({ state: 'incomplete', reason: expect.stringMatching(/unreadable/) });
    g.acknowledgeFired();
    expect(existsSync(g.files.fired)).toBe(false);
    expect(g.fired()).toBeUndefined();
  });
});

describe('guardian command line', () => {
  it('is recognised by its mark and its state dir, in both flag spellings', () => {
    const g = new GuardianFeed(stateDir, 'h1', BOOT, new FakeClock(), silentLogger(), { killTimeoutMs: 2000, qemuBinary: '/usr/bin/qemu-system-x86_64', cgroupRoot: false });
    const argv = g.commandLine();
    expect(argv.slice(1).join(' ')).toContain(GUARDIAN_CMDLINE_MARK);
    expect(argv).toEqual(expect.arrayContaining(['--kill-timeout', '2000ms', '--qemu-binary', '/usr/bin/qemu-system-x86_64', '--cgroup-root', 'none']));
    expect(isGuardianArgv(argv, stateDir)).toBe(true);
    expect(isGuardianArgv(argv, `${stateDir}/`)).toBe(true);
    expect(isGuardianArgv(argv, join(root, 'other'))).toBe(false);
    expect(isGuardianArgv(['node', '/x/bin/tether.js', 'agent', '--state-dir', stateDir], stateDir)).toBe(false);
    expect(isGuardianArgv(['node', '/x/evil.js', 'guardian', '--state-dir', stateDir], stateDir)).toBe(false);
    expect(isGuardianArgv(['node', '/usr/bin/tether', 'guardian', `--state-dir=${stateDir}`], stateDir)).toBe(true);
    expect(stateDirArg(['--state-dir=/a'])).toBe('/a');
  });
});
