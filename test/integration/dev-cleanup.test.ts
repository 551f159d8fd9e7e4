import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { afterEach, describe, expect, it } from 'vitest';
import { repoRoot } from '../../src/dev/agent-process.js';
import { argvOf, defaultLockDir } from '../../src/dev/dev-scan.js';
import { readDevState, type DevState } from '../../src/dev/dev-state.js';
import { processesWith, qemusOf, removeDir, requireRealParts, tapsOf, testDir, until } from '../support/real-host.js';

/**
 * The main job cleans up after itself (issue 7, item 7): the real dev cluster (`tether dev up`: a
 * 3-member etcd, agents behind fault proxies, a controller, QEMU VMs on taps) started as a user
 * would, then SIGINT sent to its WHOLE process group, as a terminal's Ctrl-C does. Afterwards the
 * real host is scanned: no process, tap or file of the dev cluster may be left (its agents' host-id
 * locks outside the state dir included).
 *  - `npm run dev`: every child runs in its own process group (so only the supervisor got the
 *    SIGINT, and npm's forwarded copy does not count as a second Ctrl-C); the VMs are deleted by
 *    their agents; the final line says it is clean.
 *  - piped through `tee`: tee dies of the same Ctrl-C, the supervisor's output breaks, it still
 *    cleans everything.
 *  - Ctrl-C twice: the forced path (SIGKILL, marked QEMU and taps removed) still leaves nothing.
 *  - the supervisor SIGKILLed: its death watch runs `tether dev down`, which leaves nothing.
 * Lighter than the default (fewer hosts and VMs) to keep the file well under two minutes.
 */

interface DevRun {
  readonly proc: ChildProcess;
  readonly dir: string;
  readonly stateDir: string;
  readonly hostIds: string[];
  readonly exited: Promise<number | null>;
  output(): string;
}

const runs: DevRun[] = [];

function quote(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

/**
 * Starts the dev cluster in its own process group, like a job in a terminal: `node bin/tether.js dev
 * up`, or `npm run dev` (scripts/dev.sh without its install step), or node piped through `tee`.
 */
function startDev(tag: string, hosts: number, vms: number, how: 'node' | 'npm' | 'tee' = 'node'): DevRun {
  requireRealParts(['root', 'qemu', 'guest', 'etcd', 'build']);
  // Short paths: a VM's QMP socket, <stateDir>/hosts/<id>/vm/<ns>/<name>/<uid>/qmp.sock, must fit
  // in 107 bytes. Host ids start with `test-` (the leak check looks for `tether:test-`).
  const dir = testDir(`dc${tag}`);
  const stateDir = join(dir, 's');
  const prefix = `test-${randomBytes(2).toString('hex')}`;
  const tee = join(dir, 'tee.log');
  const hostIds = hosts === 1 ? [prefix] : Array.from({ length: hosts }, (_, i) => `${prefix}-${String.fromCharCode(97 + i)}`);
  const opts = ['--state-dir', stateDir, '--hosts', String(hosts), '--vms', String(vms), '--host-prefix', prefix, '--base-port', '0', '--control', '127.0.0.1:0'];
  const args = ['bin/tether.js', 'dev', 'up', ...opts];
  // Through tee: the shell (a stand-in for the user's, which survives Ctrl-C) reports the
  // supervisor's own exit status, so the test knows it finished its cleanup itself.
  const [cmd, argv] =
    how === 'tee' ? ['bash', ['-c', `trap : INT; ${quote(process.execPath)} ${args.map(quote).join(' ')} 2>&1 | tee ${quote(tee)}; exit \${PIPESTATUS[0]}`]]
    : how === 'npm' ? ['npm', ['run', '--silent', 'dev', '--', ...opts]]
    : [process.execPath, args];
  // Its own process group (and session), like a job in a terminal; TCG: KVM does not run guests here.
  const proc = spawn(cmd, argv, { cwd: repoRoot(), detached: true, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, TETHER_ACCEL: 'tcg', TETHER_DEV_SKIP_DEPS: '1' } });
  let out = '';
  proc.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  proc.stderr!.on('data', (d: Buffer) => (out += d.toString()));
  const exited = new Promise<number | null>((r) => proc.once('close', (code) => r(code)));
  const run = { proc, dir, stateDir, hostIds, exited, output: () => out };
  runs.push(run);
  return run;
}

/** Waits for the ready banner (VMs running); returns the state file the supervisor wrote. */
async function ready(run: DevRun, vms: number): Promise<DevState> {
  await until('dev cluster ready', () => {
    if (run.proc.exitCode !== null) throw new Error(`dev up exited early (${run.proc.exitCode}):\n${run.output()}`);
    return run.output().includes('[dev] ready:');
  }, 90_000, 200);
  expect(run.output()).toContain(`[dev] ${vms} of ${vms} VM(s) running`);
  const state = readDevState(run.stateDir);
  expect(state, 'dev-cluster.json written').toBeDefined();
  const qemus = run.hostIds.reduce((n, id) => n + qemusOf(id).size, 0);
  const taps = run.hostIds.reduce((n, id) => n + tapsOf(id).length, 0);
  expect(qemus, 'one QEMU per demo VM on the real host').toBe(vms);
  expect(taps, 'one tap per demo VM').toBe(vms);
  return state!;
}

function pgidOf(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[2]);
}

/** Every pid the supervisor recorded: itself, agents, controller, etcd members. */
function childPids(state: DevState): number[] {
  return [...state.hosts.flatMap((h) => (h.pid ? [h.pid] : [])), ...(state.controllerPid ? [state.controllerPid] : []), ...(state.etcd?.pids ?? [])];
}

/** What the real host still holds of this dev cluster. */
function leftovers(run: DevRun, state: DevState): string[] {
  const left: string[] = [];
  for (const [pid, argv] of processesWith(run.stateDir)) left.push(`process ${pid}: ${argv.join(' ').slice(0, 160)}`);
  for (const id of run.hostIds) {
    for (const [pid, argv] of processesWith(`tether:${id}:`)) left.push(`marked process ${pid}: ${argv.join(' ').slice(0, 160)}`);
    for (const tap of tapsOf(id)) left.push(`tap ${tap}`);
  }
  for (const [pid, argv] of processesWith('guardian')) if (argv.some((a) => a.includes(run.stateDir))) left.push(`guardian ${pid}`);
  for (const pid of [state.supervisorPid, ...childPids(state)]) {
    const argv = argvOf(pid);
    if (argv && argv.join(' ').includes('tether')) left.push(`recorded pid ${pid}: ${argv.join(' ').slice(0, 160)}`);
  }
  if (existsSync(run.stateDir)) left.push(`folder ${run.stateDir}`);
  for (const id of run.hostIds) {
    const lock = join(defaultLockDir(), `host-${id}.lock`);
    if (existsSync(lock)) left.push(`host-id lock ${lock}`);
  }
  return left;
}

async function exitWithin(run: DevRun, ms: number): Promise<number | null> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<'late'>((r) => (timer = setTimeout(() => r('late'), ms)));
  const code = await Promise.race([run.exited, late]);
  clearTimeout(timer);
  if (code === 'late') throw new Error(`dev up did not exit within ${ms} ms after SIGINT:\n${run.output()}`);
  return code;
}

afterEach(async () => {
  for (const run of runs.splice(0)) {
    if (run.proc.exitCode === null && run.proc.signalCode === null) {
      try {
        process.kill(-run.proc.pid!, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
    // Whatever a failed case left: the same cleanup a user would run.
    try {
      execFileSync(process.execPath, ['bin/tether.js', 'dev', 'down', '--state-dir', run.stateDir], { cwd: repoRoot(), stdio: 'ignore', timeout: 60_000 });
    } catch {
      /* reported by the assertions */
    }
    removeDir(run.dir);
  }
});

describe('dev cluster: Ctrl-C cleans up everything it made', () => {
  it('npm run dev, SIGINT to the whole process group: VMs deleted by their agents, every child stopped, state removed, nothing left', async () => {
    // npm forwards the SIGINT to its child as well: one Ctrl-C must still be one (graceful) stop.
    const run = startDev('a', 2, 2, 'npm');
    const state = await ready(run, 2);
    const group = pgidOf(run.proc.pid!);
    for (const pid of childPids(state)) expect(pgidOf(pid), `child ${pid} runs in its own process group`).not.toBe(group);

    const t0 = performance.now();
    process.kill(-run.proc.pid!, 'SIGINT');
    const code = await exitWithin(run, 60_000);
    const tookMs = performance.now() - t0;
    const out = run.output();
    expect(out).toContain('[dev] Ctrl-C (SIGINT): cleaning up');
    expect(out).toMatch(/agent's audit finds no VM process, tap or VM folder left/);
    expect(out).not.toContain('skipping the graceful stop');
    expect(out).toMatch(/\[dev\] clean after [\d.]+s: removed 2 VMs \(2 QEMU processes, 2 taps; 2 deleted by their agents\), 2 agents/);
    expect(leftovers(run, state)).toEqual([]);
    expect(code, 'npm re-raises the SIGINT on itself once its script is done').toBeNull();
    console.log(`[dev-cleanup] npm run dev: SIGINT -> exit ${(tookMs / 1000).toFixed(1)}s; ${out.slice(out.indexOf('[dev] clean after')).split('\n')[0]}`);
  }, 150_000);

  it('output piped through tee (tee dies of the same Ctrl-C): still nothing left', async () => {
    const run = startDev('t', 1, 1, 'tee');
    const state = await ready(run, 1);
    const t0 = performance.now();
    process.kill(-run.proc.pid!, 'SIGINT');
    const code = await exitWithin(run, 60_000);
    const tookMs = performance.now() - t0;
    expect(argvOf(state.supervisorPid), 'the supervisor exited').toBeUndefined();
    expect(readFileSync(join(run.dir, 'tee.log'), 'utf8')).toContain('[dev] ready:');
    expect(leftovers(run, state)).toEqual([]);
    expect(code, "the supervisor's own exit status: 0 only when its final scan found nothing left").toBe(0);
    console.log(`[dev-cleanup] tee: SIGINT -> supervisor gone ${(tookMs / 1000).toFixed(1)}s`);
  }, 150_000);

  it('Ctrl-C twice: the forced cleanup still removes every VM, tap and folder', async () => {
    const run = startDev('f', 1, 1);
    const state = await ready(run, 1);
    const t0 = performance.now();
    process.kill(-run.proc.pid!, 'SIGINT');
    await until('first SIGINT taken', () => run.output().includes('[dev] Ctrl-C (SIGINT): cleaning up'), 10_000, 10);
    process.kill(-run.proc.pid!, 'SIGINT');
    const code = await exitWithin(run, 60_000);
    const tookMs = performance.now() - t0;
    const out = run.output();
    expect(out).toContain('[dev] Ctrl-C again: skipping the graceful stop');
    expect(out).toMatch(/\[dev\] clean after [\d.]+s: removed 1 VM \(1 QEMU process, 1 tap/);
    expect(leftovers(run, state)).toEqual([]);
    expect(code).toBe(0);
    console.log(`[dev-cleanup] twice: SIGINT -> exit ${(tookMs / 1000).toFixed(1)}s; ${out.slice(out.indexOf('[dev] clean after')).split('\n')[0]}`);
  }, 150_000);

  it('supervisor SIGKILLed (nothing can run in it): its death watch runs `tether dev down`, nothing left', async () => {
    const run = startDev('k', 1, 1);
    const state = await ready(run, 1);
    const t0 = performance.now();
    process.kill(state.supervisorPid, 'SIGKILL');
    await until('dev down by the death watch', () => leftovers(run, state).length === 0 && run.output().includes('[dev] clean after'), 60_000, 200);
    const tookMs = performance.now() - t0;
    const out = run.output();
    expect(out).toContain(`died without cleaning up: cleaning up from ${run.stateDir}`);
    expect(out).toMatch(/\[dev\] clean after [\d.]+s: removed 1 VM \(1 QEMU process, 1 tap\), 1 agent/);
    console.log(`[dev-cleanup] SIGKILL: -> clean ${(tookMs / 1000).toFixed(1)}s; ${out.slice(out.indexOf('[dev] clean after')).split('\n')[0]}`);
  }, 150_000);
});
