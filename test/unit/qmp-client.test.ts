import { createServer, type Server, type Socket } from 'node:net';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { QmpClient, type QmpEvent } from '../../src/adapters/qemu/qmp-client.js';
import { SystemClock } from '../../src/adapters/clock/system-clock.js';
import { TetherError } from '../../src/domain/errors.js';

const clock = new SystemClock();
const GREETING = { QMP: { version: { qemu: { major: 7, minor: 2, micro: 22 }, package: 'fake' }, capabilities: ['oob'] } };

type Handler = (msg: { execute: string; id?: string; arguments?: Record<string, unknown> }, send: (o: unknown) => void, sock: Socket) => void;

/** A fake QMP server: greets (unless told not to), then hands each command line to `handler`. */
async function fakeQmp(path: string, handler: Handler, opts: { greet?: boolean } = {}): Promise<{ server: Server; received: string[] }> {
  const received: string[] = [];
  const server = createServer((sock) => {
    const send = (o: unknown): void => {
      sock.write(`${JSON.stringify(o)}\r\n`);
    };
    if (opts.greet !== false) send(GREETING);
    let buf = '';
    sock.on('data', (c) => {
      buf += c.toString();
      let nl;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        const msg = JSON.parse(line) as { execute: string; id?: string };
        received.push(msg.execute);
        if (msg.execute === 'qmp_capabilities') send({ return: {}, id: msg.id });
        else handler(msg, send, sock);
      }
    });
    sock.on('error', () => undefined);
  });
  await new Promise<void>((resolve) => server.listen(path, resolve));
  return { server, received };
}

describe('QmpClient', () => {
  let dir: string;
  let sock: string;
  let server: Server | undefined;

  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'tether-qmp-'));
    sock = join(dir, 'qmp.sock');
  });
  afterEach(async () => {
    if (server) await new Promise<void>((r) => server!.close(() => r()));
    server = undefined;
    await rm(dir, { recursive: true, force: true });
  });

  it('reads the greeting, negotiates capabilities, and tells an event sent BEFORE the return apart from it', async () => {
    const fake = await fakeQmp(sock, (msg, send) => {
      if (msg.execute === 'system_powerdown') {
        // QEMU may emit the event before the command's return: the client must not take it for the return.
        send({ event: 'POWERDOWN', data: {}, timestamp: { seconds: 1, microseconds: 2 } });
        send({ return: { answer: 42 }, id: msg.id });
      }
    });
    server = fake.server;
    const qmp = await QmpClient.connect(sock, { clock, timeoutMs: 2000 });
    expect(qmp.greeting.version.qemu.major).toBe(7);
    expect(fake.received).toEqual(['qmp_capabilities']);

    const events: QmpEvent[] = [];
    const typed: string[] = [];
    qmp.onAnyEvent((ev) => events.push(ev));
    qmp.on('POWERDOWN', (_data, ev) => typed.push(ev.event));
    const ret = await qmp.execute<{ answer: number }>('system_powerdown');
    expect(ret).toEqual({ answer: 42 });
    expect(events.map((e) => e.event)).toEqual(['POWERDOWN']);
    expect(events[0]!.timestamp).toEqual({ seconds: 1, microseconds: 2 });
    expect(typed).toEqual(['POWERDOWN']);
    await qmp.close();
    expect(qmp.isClosed).toBe(true);
  });

  it('matches returns to commands by id, even out of order', async () => {
    let first: { id?: string } | undefined;
    const fake = await fakeQmp(sock, (msg, send) => {
      if (msg.execute === 'a') first = msg;
      if (msg.execute === 'b') {
        send({ return: 'B', id: msg.id });
        send({ return: 'A', id: first!.id });
      }
    });
    server = fake.server;
    const qmp = await QmpClient.connect(sock, { clock, timeoutMs: 2000 });
    const a = qmp.execute('a');
    const b = qmp.execute('b');
    expect(await Promise.all([a, b])).toEqual(['A', 'B']);
    await qmp.close();
  });

  it('passes arguments and types SHUTDOWN payloads', async () => {
    let args: unknown;
    const fake = await fakeQmp(sock, (msg, send) => {
      args = msg.arguments;
      send({ event: 'SHUTDOWN', data: { guest: true, reason: 'guest-shutdown' } });
      send({ return: {}, id: msg.id });
    });
    server = fake.server;
    const qmp = await QmpClient.connect(sock, { clock, timeoutMs: 2000 });
    const shutdown = qmp.waitForEvent('SHUTDOWN', 2000);
    await qmp.execute('send-key', { keys: [{ type: 'qcode', data: 'ctrl' }] });
    const ev = await shutdown;
    expect(ev.data.reason).toBe('guest-shutdown');
    expect(ev.data.guest).toBe(true);
    expect(args).toEqual({ keys: [{ type: 'qcode', data: 'ctrl' }] });
    await qmp.close();
  });

  it('turns a QMP error into VMM_ERROR with the error class', async () => {
    const fake = await fakeQmp(sock, (msg, send) => {
      send({ error: { class: 'CommandNotFound', desc: 'The command nope has not been found' }, id: msg.id });
    });
    server = fake.server;
    const qmp = await QmpClient.connect(sock, { clock, timeoutMs: 2000 });
    const err = await qmp.execute('nope').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(TetherError);
    expect((err as TetherError).code).toBe('VMM_ERROR');
    expect((err as TetherError).details.qmpClass).toBe('CommandNotFound');
    expect((err as TetherError).message).toContain('has not been found');
    await qmp.close();
  });

  it('rejects a command with TIMEOUT when no return comes, and pending commands when the peer closes', async () => {
    const fake = await fakeQmp(sock, (msg, _send, s) => {
      if (msg.execute === 'hang-up') s.destroy();
    });
    server = fake.server;
    const qmp = await QmpClient.connect(sock, { clock, timeoutMs: 2000 });
    const t = await qmp.execute('silent', undefined, { timeoutMs: 50 }).catch((e: unknown) => e);
    expect((t as TetherError).code).toBe('TIMEOUT');
    expect((t as TetherError).retryable).toBe(true);

    let closed = false;
    qmp.onClose(() => (closed = true));
    const c = await qmp.execute('hang-up').catch((e: unknown) => e);
    expect((c as TetherError).code).toBe('VMM_ERROR');
    expect(closed).toBe(true);
    expect(qmp.isClosed).toBe(true);
    const after = await qmp.execute('x').catch((e: unknown) => e);
    expect((after as TetherError).code).toBe('VMM_ERROR');
  });

  it('times out a server that accepts but never greets (hung QEMU)', async () => {
    const fake = await fakeQmp(sock, () => undefined, { greet: false });
    server = fake.server;
    const t0 = clock.nowMono();
    const err = await QmpClient.connect(sock, { clock, timeoutMs: 100 }).catch((e: unknown) => e);
    expect((err as TetherError).code).toBe('TIMEOUT');
    expect(clock.nowMono() - t0).toBeLessThan(1000);
  });

  it('fails fast with a retryable VMM_ERROR when nothing listens', async () => {
    const err = await QmpClient.connect(join(dir, 'missing.sock'), { clock, timeoutMs: 2000 }).catch((e: unknown) => e);
    expect((err as TetherError).code).toBe('VMM_ERROR');
    expect((err as TetherError).retryable).toBe(true);
  });
});
