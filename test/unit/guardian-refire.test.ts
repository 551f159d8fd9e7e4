import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import type { OwnedVm } from '../../src/adapters/qemu/process-owner.js';
import { guardianFiles } from '../../src/domain/guardian.js';
import { Guardian } from '../../src/guardian/guardian.js';
import { Journal } from '../../src/guardian/journal.js';
import type { KillPass, VmKiller } from '../../src/guardian/vm-killer.js';
import { FakeClock } from '../support/fake-clock.js';

const vm = (pid: number): OwnedVm => ({ pid, uid: `uid-${pid}`, hostId: 'h1', pidFile: `/x/${pid}/qemu.pid`, stateDir: `/x/${pid}` }) as OwnedVm;

/** A killer whose processes and kill results the test scripts. */
class ScriptedKiller {
  seen: OwnedVm[] = [];
  /** What the next killAll reports killed (a straggler: seen, but gone before its kill). */
  kills: OwnedVm[] = [];
  async owned(): Promise<OwnedVm[]> {
    return this.seen;
  }
  async killAll(): Promise<KillPass> {
    const killed = this.kills.map((v) => ({ pid: v.pid, uid: v.uid, goneAfterMs: 1 }));
    this.seen = [];
    this.kills = [];
    return { killed, survivors: [], leaks: [] };
  }
}

describe('guardian: later passes of the same fire', () => {
  let dir: string | undefined;
  afterEach(() => {
    if (dir) rmSync(dir, { recursive: true, force: true });
    dir = undefined;
  });

  it('rewrite fired.json only when they killed something, so an acknowledged record stays deleted', async () => {
    dir = mkdtempSync(join(tmpdir(), 'tether-unit-guardian-'));
    const files = guardianFiles(dir);
    mkdirSync(files.dir);
    const clock = new FakeClock();
    const killer = new ScriptedKiller();
    writeFileSync(files.feed, JSON.stringify({ v: 1, hostId: 'h1', bootId: 'b1', seq: 3, deadlineMono: 1000, epoch: 2, reason: 'detached' }));
    const g = new Guardian({
      stateDir: dir, hostId: 'h1', bootId: 'b1', killTimeoutMs: 500, pollMs: 100, clock,
      killer: killer as unknown as VmKiller,
      journal: new Journal(files.journal, clock),
      lock: { stillOurs: () => true, release: () => undefined },
      log: () => undefined,
    });
    const done = g.run();
    killer.seen = [vm(10)];
    killer.kills = [vm(10)];
    await clock.advance(1100);
    const first = JSON.parse(readFileSync(files.fired, 'utf8'));
    expect(first).toMatchObject({ seq: 3, state: 'done', killed: [{ pid: 10 }] });
    unlinkSync(files.fired); // the agent acknowledges the fire

    // A straggler: seen by the next pass, gone before its kill. Nothing changed: no record.
    killer.seen = [vm(10)];
    await clock.advance(300);
    expect(killer.seen).toEqual([]); // the pass did run
    expect(existsSync(files.fired)).toBe(false);
    const journal = readFileSync(files.journal, 'utf8').trim().split('\n').map((l) => JSON.parse(l));
    expect(journal.at(-1)).toMatchObject({ event: 'verify', gone: 0, nothingKilled: true });

    // A VM that shows up after the fire and is killed: reported, with everything killed so far.
    killer.seen = [vm(11)];
    killer.kills = [vm(11)];
    await clock.advance(300);
    expect(JSON.parse(readFileSync(files.fired, 'utf8'))).toMatchObject({ seq: 3, killed: [{ pid: 10 }, { pid: 11 }] });

    g.stop();
    await clock.advance(200);
    expect(await done).toBe('signal');
  });
});
