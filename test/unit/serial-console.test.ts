import { createServer, type Server, type Socket } from 'node:net';
import { existsSync, mkdirSync, readFileSync, statSync, writeFileSync, chmodSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { SystemClock } from '../../src/adapters/clock/system-clock.js';
import { CappedLog, CONSOLE_RING_BYTES, ConsolePump, checkSerialLogMaxBytes } from '../../src/adapters/qemu/serial-console.js';
import { ensurePrivateDir, secureStateDir, tightenFile } from '../../src/adapters/fs/private-files.js';
import { LocalFiles } from '../../src/adapters/fs/local-files.js';
import { SqliteInventory } from '../../src/adapters/sqlite/sqlite-inventory.js';
import { READY_MARKER } from '../../src/adapters/qemu/serial-log.js';
import type { Logger } from '../../src/ports/logger.js';

/**
 * The capped console log and its pump, against a stand-in for QEMU's console monitor (a unix
 * socket speaking QMP with a ring of the same size); the real QEMU ring is exercised by
 * test/integration/security-host.test.ts. Also the private modes of the state dir helpers.
 */

const clock = new SystemClock();
const GREETING = { QMP: { version: { qemu: { major: 7, minor: 2, micro: 22 }, package: 'fake' }, capabilities: [] } };
const mode = (p: string): number => statSync(p).mode & 0o777;

/** A QMP console monitor holding a ring of CONSOLE_RING_BYTES that `write` fills (oldest bytes overwritten). */
async function fakeConsole(path: string): Promise<{ exit: () => Promise<void>; write: (b: Buffer | string) => void; reads: () => number }> {
  let ring = Buffer.alloc(0);
  let reads = 0;
  const conns: Socket[] = [];
  const server: Server = createServer((sock) => {
    conns.push(sock);
    const send = (o: unknown): void => void sock.write(`${JSON.stringify(o)}\r\n`);
    send(GREETING);
    let buf = '';
    sock.on('data', (c) => {
      buf += c.toString();
      let nl;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const msg = JSON.parse(buf.slice(0, nl)) as { execute: string; id: string; arguments?: { size: number; format: string; device: string } };
        buf = buf.slice(nl + 1);
        if (msg.execute === 'qmp_capabilities') send({ return: {}, id: msg.id });
        else if (msg.execute === 'ringbuf-read') {
          reads++;
          expect(msg.arguments).toMatchObject({ device: 'con0', format: 'base64' });
          const n = Math.min(ring.length, msg.arguments!.size);
          const out = ring.subarray(0, n);
          ring = ring.subarray(n);
          send({ return: out.toString('base64'), id: msg.id });
        }
      }
    });
    sock.on('error', () => undefined);
  });
  await new Promise<void>((resolve) => server.listen(path, resolve));
  return {
    // QEMU exits: its monitor connections close.
    exit: async () => {
      for (const c of conns) c.destroy();
      await new Promise<void>((r) => server.close(() => r()));
    },
    write: (b) => {
      ring = Buffer.concat([ring, Buffer.from(b)]);
      if (ring.length > CONSOLE_RING_BYTES) ring = ring.subarray(ring.length - CONSOLE_RING_BYTES);
    },
    reads: () => reads,
  };
}

async function until(what: string, cond: () => boolean, ms = 30_000): Promise<void> {
  const end = clock.nowMono() + ms;
  while (!cond()) {
    if (clock.nowMono() > end) throw new Error(`timed out: ${what}`);
    await clock.sleep(10);
  }
}

function memLogger(lines: string[]): Logger {
  const l: Logger = {
    debug: () => undefined,
    info: (_f, m) => void lines.push(m),
    warn: (_f, m) => void lines.push(m),
    error: (_f, m) => void lines.push(m),
    child: () => l,
  };
  return l;
}

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'tether-console-'));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('CappedLog', () => {
  it('never holds more than maxBytes over its two files, keeps the newest bytes, and creates them 0600', async () => {
    const log = new CappedLog(join(dir, 'serial.log'), join(dir, 'serial.log.1'), 8192);
    let written = 0;
    for (let i = 0; i < 500; i++) {
      const line = Buffer.from(`line ${i} ${'x'.repeat(i % 97)}\n`);
      await log.append(line);
      written += line.length;
      const total = statSync(log.path).size + (existsSync(log.oldPath) ? statSync(log.oldPath).size : 0);
      expect(total).toBeLessThanOrEqual(8192);
      expect(statSync(log.path).size).toBeLessThanOrEqual(4096);
    }
    expect(written).toBeGreaterThan(20_000);
    expect(readFileSync(log.path, 'utf8')).toMatch(/line 499 x*\n$/);
    expect(mode(log.path)).toBe(0o600);
    expect(mode(log.oldPath)).toBe(0o600);
    // One chunk larger than a file: only its newest half-cap bytes are kept.
    await log.append(Buffer.from(`${'a'.repeat(10_000)}END`));
    expect(readFileSync(log.path, 'utf8')).toBe(`${'a'.repeat(4096 - 3)}END`);
    await log.close();
  });

  it('continues an existing log after a restart, tightening a loose one', async () => {
    const p = join(dir, 'serial.log');
    writeFileSync(p, 'before\n', { mode: 0o644 });
    chmodSync(p, 0o644);
    const log = new CappedLog(p, `${p}.1`, 4096);
    await log.append(Buffer.from('after\n'));
    await log.close();
    expect(readFileSync(p, 'utf8')).toBe('before\nafter\n');
    expect(mode(p)).toBe(0o600);
  });

  it('refuses a cap below 4096 bytes', () => {
    expect(() => checkSerialLogMaxBytes(4095)).toThrow(/serialLogMaxBytes/);
    expect(() => new CappedLog('/x', '/y', 1.5e3)).toThrow(/serialLogMaxBytes/);
  });
});

describe('ConsolePump', () => {
  it('drains the ring into the capped log, writes the ready file once the marker passed (even split across reads), and ends with the monitor', async () => {
    const sock = join(dir, 'con.sock');
    const con = await fakeConsole(sock);
    const log = new CappedLog(join(dir, 'serial.log'), join(dir, 'serial.log.1'), 16_384);
    const readyFile = join(dir, 'ready');
    con.write('boot...\nTETHER-GUEST-');
    const pump = new ConsolePump({ clock, socket: sock, log, marker: READY_MARKER, readyFile, bootPollMs: 10, pollMs: 10 });
    await until('first bytes', () => pump.drained >= 21);
    expect(existsSync(readyFile)).toBe(false);
    con.write('READY\n');
    await until('ready file', () => existsSync(readyFile));
    expect(mode(readyFile)).toBe(0o600);
    // A flood: far more than the cap goes through the ring; the disk holds at most the cap.
    for (let i = 0; i < 40; i++) {
      con.write(Buffer.alloc(CONSOLE_RING_BYTES, 0x41 + (i % 26)));
      await clock.sleep(5);
    }
    // Drained and quiet (no read for 100 ms): a rotation in flight renames the log before reopening it.
    let seen = -1;
    let quietSince = clock.nowMono();
    await until('ring drained and quiet', () => {
      if (pump.drained !== seen) [seen, quietSince] = [pump.drained, clock.nowMono()];
      return seen >= 16_384 && clock.nowMono() - quietSince >= 100;
    });
    const total = statSync(log.path).size + (existsSync(log.oldPath) ? statSync(log.oldPath).size : 0);
    expect(total).toBeLessThanOrEqual(16_384);
    // The ready marker was rotated out of both files: the ready file still says it passed.
    expect(readFileSync(log.path, 'latin1') + readFileSync(log.oldPath, 'latin1')).not.toContain(READY_MARKER);
    expect(existsSync(readyFile)).toBe(true);
    await con.exit();
    await pump.done;
    expect(pump.ended).toBe(true);
    await pump.stop();
  });

  it('ends (with one warning) when the monitor cannot be reached; stop() is idempotent', async () => {
    const lines: string[] = [];
    const pump = new ConsolePump({
      clock, socket: join(dir, 'missing.sock'), log: new CappedLog(join(dir, 's.log'), join(dir, 's.log.1'), 4096),
      marker: READY_MARKER, readyFile: join(dir, 'ready'), logger: memLogger(lines),
    });
    await pump.done;
    await pump.stop();
    expect(pump.ended).toBe(true);
    expect(lines).toEqual(['serial console pump ended with an error']);
  });
});

describe('private files', () => {
  it('secureStateDir creates 0700, tightens a loose dir with one warning, and refuses a dir owned by another user', () => {
    const lines: string[] = [];
    const sd = join(dir, 'a', 'state');
    expect(secureStateDir(sd, memLogger(lines))).toEqual({ path: sd, created: true });
    expect(mode(sd)).toBe(0o700);
    expect(lines.filter((l) => l.includes('tightened'))).toEqual([]);
    chmodSync(sd, 0o755);
    expect(secureStateDir(sd, memLogger(lines))).toEqual({ path: sd, created: false, tightenedFrom: 0o755 });
    expect(mode(sd)).toBe(0o700);
    expect(lines.filter((l) => l.includes('tightened to 0700'))).toHaveLength(1);
    expect(() => secureStateDir(sd, undefined, 65534)).toThrow(/owned by uid 0, not by this agent's uid 65534/);
  });

  it('ensurePrivateDir / tightenFile / LocalFiles.ensureDir / SqliteInventory leave nothing open to group or others', async () => {
    const d = join(dir, 'x');
    mkdirSync(d, { mode: 0o777 });
    chmodSync(d, 0o777);
    expect(ensurePrivateDir(d)).toBe(0o777);
    expect(mode(d)).toBe(0o700);
    const f = join(d, 'f');
    writeFileSync(f, '');
    chmodSync(f, 0o666);
    expect(tightenFile(f)).toBe(0o666);
    expect(tightenFile(f)).toBeUndefined();
    expect(tightenFile(join(d, 'nope'))).toBeUndefined();
    const files = new LocalFiles(dir);
    await files.ensureDir(join(dir, 'vm', 'ns', 'name', 'uid'));
    for (const p of ['vm', 'vm/ns', 'vm/ns/name', 'vm/ns/name/uid']) expect(mode(join(dir, p)), p).toBe(0o700);
    const db = join(dir, 'inv', 'inventory.db');
    const inv = new SqliteInventory(db);
    inv.setMeta('k', 'v');
    for (const p of [db, `${db}-wal`, `${db}-shm`]) expect(mode(p), p).toBe(0o600);
    expect(mode(join(dir, 'inv'))).toBe(0o700);
    inv.close();
    // An existing loose database is tightened on open, with its WAL files.
    chmodSync(db, 0o644);
    const again = new SqliteInventory(db);
    for (const p of [db, `${db}-wal`, `${db}-shm`]) expect(mode(p), p).toBe(0o600);
    again.close();
  });
});
