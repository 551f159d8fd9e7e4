import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { chmodSync, copyFileSync, existsSync, lstatSync, mkdirSync, readdirSync, readFileSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SystemClock } from '../../src/adapters/clock/system-clock.js';
import { QcowVolumes } from '../../src/adapters/disk/qcow-volumes.js';
import { LocalFiles } from '../../src/adapters/fs/local-files.js';
import { secureStateDir } from '../../src/adapters/fs/private-files.js';
import { builtinGuestPaths, LocalImageStore } from '../../src/adapters/images/local-image-store.js';
import { Iproute2Network } from '../../src/adapters/iproute2/iproute2-network.js';
import { DEFAULT_QEMU_BINARY } from '../../src/adapters/qemu/accel-probe.js';
import { readArgv } from '../../src/adapters/qemu/proc-fs.js';
import { resolveQemuExecutable } from '../../src/adapters/qemu/process-owner.js';
import { QemuVmm } from '../../src/adapters/qemu/qemu-vmm.js';
import { SqliteInventory } from '../../src/adapters/sqlite/sqlite-inventory.js';
import { auditHost } from '../../src/agent/gc/audit.js';
import { cleanHost } from '../../src/agent/gc/cleaner.js';
import { fenceVms } from '../../src/agent/gc/fencer.js';
import { GuardianFeed } from '../../src/agent/gc/guardian-feed.js';
import type { HostContext } from '../../src/agent/host-context.js';
import type { FlintlockMicroVM, MicroVmSpecIn } from '../../src/api/grpc/wire-types.js';
import type { TetherError } from '../../src/domain/errors.js';
import { silentLogger } from '../support/fake-ports.js';
import { AgentProcess, killHostLeftovers, qemusOf, removeDir, requireRealParts, testDir, testHostId, until } from '../support/real-host.js';

/**
 * Attack rows on the host itself (issue 10), against real parts:
 * 1. a forged QEMU run by another user (`nobody`): the real QEMU binary and a renamed perl, each with
 *    a forged `-name tether:<host>:<uid>`, pid files in a world-writable folder and (planted by root,
 *    as if the modes allowed it) inside the state dir: the audit, the fencer, the cleaner (real
 *    adapters, in process) and the guardian (a real `tether guardian` process that fires) never take
 *    them for ours: never signalled, their QMP socket never connected to;
 * 2. a guest flooding its serial console (built-in guest, `tether.flood_console=1`) under a real agent
 *    with `--serial-log-max-bytes`: serial.log + serial.log.1 stay under the cap, with the agent up
 *    and while it is down (SIGKILL: nothing is written at all), and after it is back;
 * 3. file modes: the state dir of that agent (VM with overlay, tap, metadata) and of the guardian:
 *    no group/other bits on anything the agent or guardian created.
 * A record with path tricks is covered by test/integration/hostile-records.test.ts.
 */

const clock = new SystemClock();
const NOBODY = { uid: 65534, gid: 65534 };
const CAP = 16 * 1024; // serial.log and serial.log.1 at most 8 KiB each
const cacheDir = process.env.TETHER_CACHE_DIR ?? join(homedir(), '.cache', 'tether');
let dir = '';
const children: ChildProcess[] = [];
const hostForged = testHostId('sec-forge');
const hostAgent = testHostId('sec-host');
let agent: AgentProcess | undefined;

const modeOf = (p: string): number => lstatSync(p).mode & 0o7777;
const octal = (m: number): string => `0${m.toString(8)}`;
const alive = (c: ChildProcess): boolean => c.exitCode === null && c.signalCode === null;

/** Every entry under `root` with group/other bits, as `path mode` lines (skipping `skip`). */
function looseEntries(root: string, skip: (rel: string) => boolean = () => false): string[] {
  const out: string[] = [];
  const walk = (rel: string) => {
    for (const name of readdirSync(join(root, rel))) {
      const r = rel ? `${rel}/${name}` : name;
      if (skip(r)) continue;
      const st = lstatSync(join(root, r));
      if (!st.isSymbolicLink() && (st.mode & 0o077) !== 0) out.push(`${r} ${octal(st.mode & 0o7777)}`);
      if (st.isDirectory()) walk(r);
    }
  };
  if ((statSync(root).mode & 0o077) !== 0) out.push(`. ${octal(statSync(root).mode & 0o7777)}`);
  walk('');
  return out;
}

/** Every path under `root` (relative), for presence checks. */
function allPaths(root: string): string[] {
  const out: string[] = [];
  const walk = (rel: string) => {
    for (const name of readdirSync(join(root, rel))) {
      const r = rel ? `${rel}/${name}` : name;
      out.push(r);
      if (lstatSync(join(root, r)).isDirectory()) walk(r);
    }
  };
  walk('');
  return out;
}

async function waitArgv(pid: number, needle: string): Promise<void> {
  await until(`pid ${pid} running with ${needle}`, async () => (await readArgv(pid))?.includes(needle) === true, 10_000, 10);
}

beforeAll(() => {
  requireRealParts(['root', 'qemu', 'guest', 'build']);
  dir = testDir('sec-host');
  chmodSync(dir, 0o755); // `nobody` must reach the world-writable folder and the forger binary inside
});

afterAll(async () => {
  await agent?.kill();
  for (const c of children) if (alive(c)) c.kill('SIGKILL'); // only processes this file started
  for (const h of [hostForged, hostAgent]) killHostLeftovers(h);
  if (dir) removeDir(dir);
  expect(qemusOf(hostForged).size).toBe(0);
  expect(qemusOf(hostAgent).size).toBe(0);
});

describe('host attack rows (real QEMU, real agent, real guardian)', () => {
  it('a forged QEMU run by nobody is not taken for ours by the audit, the fencer, the guardian or the cleaner', async () => {
    const stateDir = join(dir, 'forged-state');
    expect(secureStateDir(stateDir)).toEqual({ path: stateDir, created: true });
    // The world-writable place an unprivileged user can use.
    const pub = join(dir, 'pub');
    mkdirSync(pub);
    chmodSync(pub, 0o1777);
    const [uidQemu, uidPerl] = [randomUUID().replace(/-/g, ''), randomUUID().replace(/-/g, '')];
    const markOf = (uid: string) => `tether:${hostForged}:${uid}`;

    // Forger 1: the configured QEMU binary itself, run by nobody, with its own pid file and QMP socket in /tmp-like space.
    const qemuPid = join(pub, 'qemu-forged.pid');
    const forgedQemu = spawn(DEFAULT_QEMU_BINARY, [
      '-name', `${markOf(uidQemu)},process=tether-forged`, '-M', 'none', '-S', '-display', 'none', '-nodefaults', '-no-user-config',
      '-qmp', `unix:${join(pub, 'qemu-forged.sock')},server=on,wait=off`, '-pidfile', qemuPid,
    ], { ...NOBODY, stdio: 'ignore' });
    children.push(forgedQemu);
    // Forger 2: perl renamed qemu-system-x86_64, run by nobody, logging every connection to its "QMP" socket.
    const bin = join(dir, 'forger-bin');
    mkdirSync(bin, { mode: 0o755 });
    const fakeQemu = join(bin, 'qemu-system-x86_64');
    copyFileSync(await resolveQemuExecutable('perl'), fakeQemu);
    chmodSync(fakeQemu, 0o755);
    const perlSock = join(pub, 'perl-forged.sock');
    const perlLog = join(pub, 'perl-forged.log');
    const perlPid = join(pub, 'perl-forged.pid');
    const script = `use IO::Socket::UNIX; open(my $p, ">", "${perlPid}"); print $p "$$\\n"; close $p;
      my $s = IO::Socket::UNIX->new(Type => SOCK_STREAM(), Local => "${perlSock}", Listen => 5) or die "listen: $!";
      while (my $c = $s->accept) { open(my $l, ">>", "${perlLog}"); print $l "connection\\n"; close $l;
        print $c "{\\"QMP\\": {\\"version\\": {\\"qemu\\": {\\"major\\": 7, \\"minor\\": 2, \\"micro\\": 0}, \\"package\\": \\"\\"}, \\"capabilities\\": []}}\\r\\n"; }`;
    const forgedPerl = spawn(fakeQemu, ['-e', script, '--', '-name', markOf(uidPerl)], { ...NOBODY, stdio: 'ignore' });
    children.push(forgedPerl);
    await waitArgv(forgedQemu.pid!, `${markOf(uidQemu)},process=tether-forged`);
    await waitArgv(forgedPerl.pid!, markOf(uidPerl));
    await until('forgers wrote their pid files and sockets', () => [qemuPid, perlPid, perlSock, join(pub, 'qemu-forged.sock')].every((f) => existsSync(f)), 10_000, 20);
    expect(readFileSync(qemuPid, 'utf8').trim()).toBe(String(forgedQemu.pid));
    expect(statSync(`/proc/${forgedQemu.pid}`).uid).toBe(65534);

    // nobody cannot plant anything in the state dir (0700, root's)...
    const plant = spawnSync('sh', ['-c', `mkdir -p ${stateDir}/vm/default/forged-q/${uidQemu} && echo ${forgedQemu.pid} > ${stateDir}/vm/default/forged-q/${uidQemu}/qemu.pid`], { ...NOBODY, encoding: 'utf8' });
    expect(plant.status).not.toBe(0);
    expect(plant.stderr).toMatch(/Permission denied/);
    expect(modeOf(stateDir)).toBe(0o700);
    // ... so root plants them, as if the modes allowed it, beside the agent's own vm/ folder: pid
    // files naming the forgers, "QMP sockets" linking to theirs.
    await new LocalFiles(stateDir).ensureDir(join(stateDir, 'vm'));
    const plantAs = (name: string, uid: string, pid: number, sock: string): string => {
      const d = join(stateDir, 'vm', 'default', name, uid);
      mkdirSync(d, { recursive: true });
      writeFileSync(join(d, 'qemu.pid'), `${pid}\n`);
      symlinkSync(sock, join(d, 'qmp.sock'));
      return d;
    };
    plantAs('forged-q', uidQemu, forgedQemu.pid!, join(pub, 'qemu-forged.sock'));
    plantAs('forged-p', uidPerl, forgedPerl.pid!, perlSock);

    const inventory = new SqliteInventory(join(stateDir, 'inventory.db'));
    const vmm = new QemuVmm({ clock, hostId: hostForged, stateRoot: stateDir, accel: 'tcg', cgroupRoot: false });
    const ctx: HostContext = {
      hostId: hostForged,
      clock,
      inventory,
      vmm,
      network: new Iproute2Network(),
      volumes: new QcowVolumes({ root: stateDir }),
      images: new LocalImageStore({ storeDir: join(dir, 'images'), builtin: builtinGuestPaths(cacheDir) }),
      files: new LocalFiles(stateDir),
      logger: silentLogger(),
      stop: { graceMs: 500, killTimeoutMs: 1000 },
      readyTimeoutMs: 10_000,
    };
    // The inventory even knows the QEMU forger's uid (an attacker who guessed one of ours).
    inventory.addVm(uidQemu, { id: { namespace: 'default', name: 'forged-q' }, vcpu: 1, memoryMb: 96, kernelImage: '', kernelCmdline: {}, initrdImage: '', volumes: [], interfaces: [], labels: {}, metadata: {} }, clock.now());

    try {
      // Each pid file is refused, naming the user check (inside) or the layout (outside).
      expect(await vmm.listOwned(hostForged)).toEqual([]);
      expect((await vmm.status(uidQemu, join(stateDir, 'vm', 'default', 'forged-q', uidQemu))).running).toBe(false);

      // Audit: the forgers are neither leaks nor running VMs of this host.
      const audit = await auditHost(ctx);
      expect(audit.leaks.filter((l) => l.startsWith('process:'))).toEqual([]);

      // Fencer: the known uid reads as already stopped (no signal, no QMP); the unknown one is no leak.
      const fenced = await fenceVms(ctx, { stopGraceMs: 500, killTimeoutMs: 1000 });
      expect(fenced.map((r) => [r.uid, r.method])).toEqual([[uidQemu, 'already-stopped']]);

      // Guardian: a real `tether guardian` on this state dir, fed a deadline that passes at once, fires
      // and kills every VM it can verify: none.
      const feed = new GuardianFeed(stateDir, hostForged, readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim(), clock, silentLogger(), {
        cgroupRoot: false,
        killTimeoutMs: 1000,
      });
      feed.feed(clock.nowMono() + 200, { epoch: 1, reason: 'security-host test' });
      const g = await feed.ensureRunning();
      expect(g.started).toBe(true);
      const fired = await until('guardian fired', () => {
        const f = feed.fired();
        return f && f.state !== 'killing' ? f : undefined;
      }, 15_000, 50);
      expect(fired).toMatchObject({ state: 'done', killed: [], survivors: [] });
      const journal = readFileSync(feed.files.journal, 'utf8');
      expect(journal).toMatch(new RegExp(`"kill-skipped".*forged-q.*runs as user 65534/65534/65534/65534`));
      expect(journal).toMatch(new RegExp(`"kill-skipped".*forged-p.*runs as user 65534/65534/65534/65534`));
      expect(journal).not.toMatch(/"killed"/);

      // Cleaner: deletes what is ours (the inventory row, the folders planted inside our state dir), never the processes.
      const cleaned = await cleanHost(ctx);
      expect(cleaned.removed.filter((r) => r.includes('process'))).toEqual([]);
      expect(cleaned.audit.leaks.filter((l) => l.startsWith('process:'))).toEqual([]);
      expect(existsSync(join(stateDir, 'vm', 'default'))).toBe(false); // the planted folders: inside our state dir, so ours to remove

      // Never signalled, never connected to.
      expect(alive(forgedQemu)).toBe(true);
      expect(alive(forgedPerl)).toBe(true);
      expect(existsSync(perlLog)).toBe(false);

      // The guardian's files, checked while it runs: nothing open to group or others.
      expect(looseEntries(stateDir)).toEqual([]);
      for (const f of ['guardian', 'guardian/feed.json', 'guardian/fired.json', 'guardian/journal.jsonl', 'guardian/guardian.pid', 'guardian/guardian.log', 'inventory.db', 'inventory.db-wal', 'inventory.db-shm']) {
        expect(existsSync(join(stateDir, f)), f).toBe(true);
      }
      process.kill(g.pid, 'SIGTERM'); // the guardian this test started
      await until('guardian gone', () => !existsSync(`/proc/${g.pid}`) || readFileSync(`/proc/${g.pid}/stat`, 'utf8').includes(') Z'), 10_000, 50);
    } finally {
      await vmm.close();
      inventory.close();
      forgedQemu.kill('SIGKILL');
      forgedPerl.kill('SIGKILL');
    }
  });

  it('a guest flooding its console: serial.log + serial.log.1 stay under serialLogMaxBytes with the agent up, down and back; nothing the agent made is open to others', async () => {
    const stateDir = join(dir, 'agent-state');
    agent = new AgentProcess(hostAgent, stateDir, ['--serial-log-max-bytes', String(CAP), '--stop-grace', '3s', '--kill-timeout', '2s']);
    // The harness creates the state dir 0755 before the agent starts: the agent tightens it, saying so.
    mkdirSync(stateDir, { recursive: true, mode: 0o755 });
    chmodSync(stateDir, 0o755);
    await agent.start();
    expect(modeOf(stateDir)).toBe(0o700);
    expect(readFileSync(agent.log, 'utf8')).toMatch(/state dir was open to other users \(0755\): tightened to 0700/);

    const spec: MicroVmSpecIn = {
      id: 'flood', namespace: 'sec', vcpu: 1, memory_in_mb: 96,
      kernel: { image: '', cmdline: { 'tether.flood_console': '1' } },
      root_volume: { id: 'root', source: { container_source: '' } },
      interfaces: [{ device_id: 'eth0', type: 'TAP' }],
      metadata: { 'user-data': 'c2VjcmV0LWJvb3RzdHJhcC10b2tlbg==' },
    };
    const created = await agent.api().create(spec);
    const uid = created.spec.uid;
    const vmDir = join(stateDir, 'vm', 'sec', 'flood', uid);
    await until(`vm ${uid} created`, async () => {
      const vm: FlintlockMicroVM = await agent!.api().get(uid);
      if (vm.status.state === 'FAILED') throw new Error('vm failed');
      return vm.status.state === 'CREATED';
    }, 60_000, 200);
    const log = join(vmDir, 'serial.log');
    const old = join(vmDir, 'serial.log.1');
    const onDisk = (): number => (existsSync(log) ? statSync(log).size : 0) + (existsSync(old) ? statSync(old).size : 0);

    // Agent up: sample the console files while the guest floods.
    const t0 = clock.nowMono();
    let max = 0;
    let rotations = 0; // seen as serial.log shrinking (inode numbers are reused, sizes are not)
    let last = 0;
    while (clock.nowMono() - t0 < 8000) {
      max = Math.max(max, onDisk());
      const size = existsSync(log) ? statSync(log).size : 0;
      if (size < last) rotations++;
      last = size;
      await clock.sleep(20);
    }
    expect(readFileSync(old, 'latin1') + readFileSync(log, 'latin1')).toContain('TETHER-FLOOD');
    expect(existsSync(join(vmDir, 'ready'))).toBe(true); // READY was rotated out long ago; the ready file keeps it
    expect(max).toBeLessThanOrEqual(CAP);
    expect(rotations).toBeGreaterThan(4); // the guest really wrote several caps' worth

    // Agent down (SIGKILL): nothing writes the console to disk; QEMU keeps it in its 64 KiB ring.
    await agent.kill('SIGKILL');
    // A kill between a rotation's rename and its reopen leaves no serial.log (CI 7a1410f): absent is
    // a state like any other here; the agent that comes back creates it.
    const snap = (f: string): string => (existsSync(f) ? `${statSync(f).ino}:${statSync(f).size}:${statSync(f).mtimeMs}` : 'absent');
    const before = [log, old].map(snap);
    const qemuPid = [...qemusOf(hostAgent).values()][0];
    await clock.sleep(4000);
    expect([log, old].map(snap)).toEqual(before);
    expect(qemusOf(hostAgent).size).toBe(1);

    // Agent back: it adopts the VM and drains the ring again, still under the cap.
    await agent.start();
    await until('console drained again', () => existsSync(log) && snap(log) !== before[0], 20_000, 100);
    const t1 = clock.nowMono();
    while (clock.nowMono() - t1 < 2000) {
      max = Math.max(max, onDisk());
      await clock.sleep(50);
    }
    expect(max).toBeLessThanOrEqual(CAP);
    expect([...qemusOf(hostAgent).values()][0]).toBe(qemuPid);

    // File modes of everything the agent made (agent.log is the harness's stdout capture).
    const loose = looseEntries(stateDir, (r) => r === 'agent.log');
    expect(loose).toEqual([]);
    const paths = allPaths(stateDir);
    const rel = `vm/sec/flood/${uid}`;
    for (const f of ['inventory.db', 'inventory.db-wal', 'inventory.db-shm', 'agent.lock', 'vm', 'vm/sec', 'vm/sec/flood', rel, `${rel}/serial.log`, `${rel}/serial.log.1`, `${rel}/ready`, `${rel}/qmp.sock`, `${rel}/con.sock`, `${rel}/qemu.pid`, `${rel}/qemu.log`, `${rel}/vol-root.qcow2`]) {
      expect(paths, f).toContain(f);
    }
    expect(lstatSync(join(stateDir, rel, 'qmp.sock')).isSocket()).toBe(true);
    expect(modeOf(join(stateDir, rel, 'qmp.sock'))).toBe(0o600);
    expect(modeOf(join(stateDir, rel, 'con.sock'))).toBe(0o600);
    expect(modeOf(join(stateDir, rel))).toBe(0o700);
    // The API keys and token the harness made for this agent (scripts/gen-certs.sh) are private too.
    const certs = join(dir, 'api-certs');
    if (existsSync(certs)) expect(looseEntries(certs)).toEqual([]);

    // A flooding guest still stops; the pump reports what it drained.
    await agent.api().delete(uid);
    await until(`vm ${uid} deleted`, () => agent!.api().get(uid).then(() => false, (e: TetherError) => e.code === 'NOT_FOUND'), 60_000, 200);
    expect(qemusOf(hostAgent).size).toBe(0);
    const endedLines = () => readFileSync(agent!.log, 'utf8').split('\n').filter((l) => l.includes('"serial console pump ended"'));
    await until('the pump reported its end', () => endedLines().length > 0, 5000, 50).catch(() => {
      throw new Error(`no pump end line; agent log tail:\n${readFileSync(agent!.log, 'utf8').split('\n').filter((l) => /console|pump|qemu/i.test(l)).slice(-30).join('\n')}`);
    });
    const ended = endedLines();
    // Only the restarted agent's pump reports (the first one was SIGKILLed).
    const pump = JSON.parse(ended.at(-1)!) as { drainedBytes: number; forMs: number; fullRingReads: number; rotations: number };
    console.log(`[security-host] flood: cap ${CAP} B; max on disk ${max} B; first agent: ${rotations} rotations in 8 s; restarted agent drained ${pump.drainedBytes} B in ${pump.forMs} ms ` +
      `(${Math.round(pump.drainedBytes / (pump.forMs / 1000))} B/s, ${pump.rotations} rotations, ${pump.fullRingReads} full-ring reads); nothing written during the 4 s the agent was down`);
    expect(pump.drainedBytes).toBeGreaterThan(4 * CAP);
  });
});
