import { spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { chmodSync, copyFileSync, mkdirSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { randomUUID } from 'node:crypto';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { SystemClock } from '../../src/adapters/clock/system-clock.js';
import { readArgv } from '../../src/adapters/qemu/proc-fs.js';
import { VmOwnership, readProcStat, readProcUids, resolveQemuExecutable } from '../../src/adapters/qemu/process-owner.js';
import { removeDir, testDir } from '../support/real-host.js';

/**
 * The ownership check on real processes (no QEMU needed): node itself plays the configured "QEMU
 * binary", so a node process with the right mark and pid file is ours; forgeries fail.
 */

const clock = new SystemClock();
const children: ChildProcess[] = [];
const hostId = 'unit-owner';
let dir: string;
let stateRoot: string;

async function proc(command: string, args: string[], needle: string, opts: SpawnOptions = {}): Promise<ChildProcess> {
  const child = spawn(command, args, { stdio: 'ignore', ...opts });
  children.push(child);
  for (let i = 0; i < 300; i++) {
    if ((await readArgv(child.pid!))?.includes(needle)) return child;
    await clock.sleep(10);
  }
  throw new Error(`${command} did not start`);
}

/** A node process whose argv[0] says qemu-system-x86_64 and whose argv carries `-name <mark>`. */
function fakeQemu(mark: string, opts: SpawnOptions = {}): Promise<ChildProcess> {
  return proc(process.execPath, ['-e', 'setInterval(() => {}, 1000)', '--', '-name', mark], mark, { argv0: 'qemu-system-x86_64', ...opts });
}

/** Writes `<stateRoot>/vm/default/<name>/<uid>/qemu.pid` naming `pid`; returns the pid file. */
function pidFileIn(root: string, name: string, uid: string, pid: number): string {
  const d = join(root, 'vm', 'default', name, uid);
  mkdirSync(d, { recursive: true });
  writeFileSync(join(d, 'qemu.pid'), `${pid}\n`);
  return join(d, 'qemu.pid');
}

beforeAll(() => {
  dir = testDir('owner');
  chmodSync(dir, 0o755); // the `nobody` forger must be able to run a binary copied in here
  stateRoot = join(dir, 'state');
  mkdirSync(stateRoot);
});
afterEach(() => {
  for (const c of children.splice(0)) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
});
afterAll(() => removeDir(dir));

describe('VmOwnership: mark, executable and pid file under this state dir must all check out', () => {
  it('accepts the real thing, and reports it in listOwned', async () => {
    const uid = randomUUID();
    const p = await fakeQemu(`tether:${hostId}:${uid},process=x`);
    const file = pidFileIn(stateRoot, 'ok', uid, p.pid!);
    const own = new VmOwnership({ stateRoot, hostId, qemuBinary: process.execPath });
    const v = await own.verify(file, { uid, pid: p.pid! });
    expect(v).toMatchObject({ owned: true, vm: { pid: p.pid, uid, hostId, stateDir: join(stateRoot, 'vm/default/ok', uid) } });
    expect((await own.listOwned()).map((o) => o.pid)).toEqual([p.pid]);
    // Followed by (pid, start time) once verified.
    if (!v.owned) throw new Error('unreachable');
    expect(await own.stillAlive(v.vm)).toBe(true);
    p.kill('SIGKILL');
    await new Promise((r) => p.once('exit', r));
    expect(await own.stillAlive(v.vm)).toBe(false);
    expect((await own.verify(file)).owned).toBe(false);
  });

  it('refuses each forgery, naming the check that failed', async () => {
    const own = new VmOwnership({ stateRoot, hostId, qemuBinary: process.execPath });
    const uid = randomUUID();
    const good = await fakeQemu(`tether:${hostId}:${uid}`);
    const rows: [string, () => Promise<string>, RegExp][] = [
      ['pid file outside the state dir (another agent, same host id)', async () => pidFileIn(join(dir, 'other-agent'), 'a', uid, good.pid!), /not <state dir>\/vm/],
      ['pid file folder is another uid', async () => pidFileIn(stateRoot, 'b', randomUUID(), good.pid!), /marked for uid/],
      ['pid file too shallow', async () => {
        mkdirSync(join(stateRoot, 'vm', uid), { recursive: true });
        writeFileSync(join(stateRoot, 'vm', uid, 'qemu.pid'), `${good.pid}`);
        return join(stateRoot, 'vm', uid, 'qemu.pid');
      }, /not <state dir>\/vm/],
      ['pid file names another pid', async () => pidFileIn(stateRoot, 'c', uid, process.pid), /owner mark/],
      ['uid folder symlinked outside the state dir', async () => {
        const outside = join(dir, 'outside', uid);
        mkdirSync(outside, { recursive: true });
        writeFileSync(join(outside, 'qemu.pid'), `${good.pid}`);
        mkdirSync(join(stateRoot, 'vm', 'default', 'd'), { recursive: true });
        symlinkSync(outside, join(stateRoot, 'vm', 'default', 'd', uid));
        return join(stateRoot, 'vm', 'default', 'd', uid, 'qemu.pid');
      }, /resolves to/],
      ['path with ..', async () => join(stateRoot, 'vm', 'default', '..', '..', 'x', uid, 'qemu.pid'), /not <state dir>\/vm/],
    ];
    for (const [name, make, why] of rows) {
      const v = await own.verify(await make());
      expect(v.owned, name).toBe(false);
      if (!v.owned) expect(v.reason, name).toMatch(why);
    }
    // Marked for another host, with everything else right.
    const other = await fakeQemu(`tether:other-host:${uid}`);
    const v = await own.verify(pidFileIn(stateRoot, 'e', uid, other.pid!));
    expect(v).toMatchObject({ owned: false, reason: expect.stringMatching(/marked for host other-host/) });
    expect(good.exitCode).toBeNull();
  });

  it('refuses a renamed copy of another program with a forged mark, as root and as nobody, even with its pid file inside the state dir', async () => {
    // `sleep` cannot carry `-name …` in its argv (it rejects unknown options), so the forger is a
    // copy of perl (Essential on Debian) renamed qemu-system-x86_64.
    const bin = join(dir, 'forger');
    mkdirSync(bin, { mode: 0o755 });
    const fake = join(bin, 'qemu-system-x86_64');
    copyFileSync(await resolveQemuExecutable('perl'), fake);
    chmodSync(fake, 0o755);
    // The configured binary is node here; with the real QEMU configured the verdict is the same.
    const own = new VmOwnership({ stateRoot, hostId, qemuBinary: process.execPath });
    for (const [who, opts] of [['root', {}], ['nobody', { uid: 65534, gid: 65534 }]] as const) {
      const uid = randomUUID();
      const mark = `tether:${hostId}:${uid}`;
      const outsideFile = join(bin, `${who}.pid`);
      const p = await proc(fake, ['-e', 'sleep 600', '--', '-name', mark, '-pidfile', outsideFile], mark, opts);
      writeFileSync(outsideFile, `${p.pid}\n`);
      expect((await readArgv(p.pid!))?.[0]).toBe(fake);
      expect((await own.verify(outsideFile)).owned, `${who}: pid file outside`).toBe(false);
      const inside = await own.verify(pidFileIn(stateRoot, `forged-${who}`, uid, p.pid!));
      // root fails the executable check; nobody already fails the user check before it.
      const why = who === 'root' ? /runs .*qemu-system-x86_64, not/ : /runs as user 65534\//;
      expect(inside, `${who}: pid file inside`).toMatchObject({ owned: false, reason: expect.stringMatching(why) });
      expect((await own.listOwned()).map((o) => o.pid)).not.toContain(p.pid);
      expect(p.exitCode).toBeNull();
    }
    // A node process run by nobody with the right executable and mark, pid file outside: refused.
    const uid = randomUUID();
    const asNobody = await fakeQemu(`tether:${hostId}:${uid}`, { uid: 65534, gid: 65534 });
    const f = join(bin, 'nobody-node.pid');
    writeFileSync(f, `${asNobody.pid}`);
    expect((await own.verify(f)).owned).toBe(false);
  });

  it('refuses the configured binary run by another user with a forged mark, even with its pid file inside the state dir', async () => {
    const own = new VmOwnership({ stateRoot, hostId, qemuBinary: process.execPath });
    expect(own.expectedUid).toBe(process.geteuid!());
    const uid = randomUUID();
    const forged = await fakeQemu(`tether:${hostId}:${uid}`, { uid: 65534, gid: 65534 });
    const file = pidFileIn(stateRoot, 'nobody-inside', uid, forged.pid!);
    const v = await own.verify(file, { uid });
    expect(v).toMatchObject({ owned: false, reason: expect.stringMatching(/runs as user 65534\/65534\/65534\/65534 .*not 0/) });
    expect((await own.listOwned()).map((o) => o.pid)).not.toContain(forged.pid);
    // The same process passes when nobody is the expected user: the uid check is what refused it.
    const asNobody = new VmOwnership({ stateRoot, hostId, qemuBinary: process.execPath, expectedUid: 65534 });
    expect((await asNobody.verify(file, { uid })).owned).toBe(true);
    expect(await readProcUids(forged.pid!)).toEqual({ real: 65534, effective: 65534, saved: 65534, fs: 65534 });
    expect(await readProcUids(2 ** 30)).toBeUndefined();
    expect(forged.exitCode).toBeNull();
  });

  it('resolves the configured binary through PATH and fails loudly when it is missing', async () => {
    expect(await resolveQemuExecutable('sh')).toMatch(/^\/.*sh$/);
    await expect(resolveQemuExecutable('no-such-qemu-binary')).rejects.toMatchObject({ code: 'VMM_ERROR' });
    const own = new VmOwnership({ stateRoot, hostId, qemuBinary: join(dir, 'nope') });
    const uid = randomUUID();
    const p = await fakeQemu(`tether:${hostId}:${uid}`);
    await expect(own.verify(pidFileIn(stateRoot, 'missing-bin', uid, p.pid!))).rejects.toMatchObject({ code: 'VMM_ERROR' });
  });

  it('reads /proc/<pid>/stat even when comm has spaces and parentheses', async () => {
    const st = await readProcStat(process.pid);
    expect(st?.state).toMatch(/^[RS]$/);
    expect(Number(st?.startTime)).toBeGreaterThan(0);
    expect(await readProcStat(2 ** 30)).toBeUndefined();
  });
});
