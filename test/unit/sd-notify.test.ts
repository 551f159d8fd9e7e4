import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { SystemClock } from '../../src/adapters/clock/system-clock.js';
import { SdNotifier, watchdogIntervalMs } from '../../src/adapters/systemd/sd-notify.js';
import { datagramReceiver, receivers } from '../support/datagram-receiver.js';
import { removeDir, testDir } from '../support/real-host.js';

/**
 * sd_notify against a real unix datagram socket (this machine has no systemd): python3 binds the
 * socket and prints every datagram it receives, one JSON line each.
 */

const clock = new SystemClock();
const dir = testDir('sdn');

async function until(what: string, cond: () => boolean, ms = 5000): Promise<void> {
  const end = clock.nowMono() + ms;
  while (!cond()) {
    if (clock.nowMono() > end) throw new Error(`timed out waiting for ${what}`);
    await clock.sleep(10);
  }
}

afterEach(() => {
  for (const r of receivers.splice(0)) r.kill('SIGKILL');
});
afterAll(() => removeDir(dir));

describe('SdNotifier on a real unix datagram socket', () => {
  it('sends READY=1, WATCHDOG=1, STATUS and STOPPING as separate datagrams, multi-line intact', async () => {
    const sock = join(dir, 'notify.sock');
    const rx = await datagramReceiver(sock);
    const n = SdNotifier.fromEnv({ NOTIFY_SOCKET: sock })!;
    expect(n.ready('armed')).toBe(true);
    expect(n.watchdog()).toBe(true);
    expect(n.status('line one\nline two')).toBe(true);
    expect(n.stopping()).toBe(true);
    await until('4 datagrams', () => rx.messages.length >= 4);
    expect(rx.messages).toEqual(['READY=1\nSTATUS=armed', 'WATCHDOG=1', 'STATUS=line one line two', 'STOPPING=1']);
    await n.close();
    expect(n.notify('WATCHDOG=1')).toBe(false);
  });

  it('reaches an abstract-namespace socket (@name)', async () => {
    const name = `@tether-test-${randomBytes(4).toString('hex')}`;
    const rx = await datagramReceiver(name);
    const n = new SdNotifier(name);
    n.ready();
    await until('READY=1', () => rx.messages.length >= 1);
    expect(rx.messages).toEqual(['READY=1']);
    await n.close();
  });

  it('reports a socket nobody listens on, without throwing', async () => {
    const errors: string[] = [];
    const n = new SdNotifier(join(dir, 'nobody-here.sock'), { onError: (m) => errors.push(m) });
    expect(n.watchdog()).toBe(true); // handed to the helper
    await n.close();
    expect(errors.join(' ')).not.toContain('TypeError');
  });

  it('computes the WATCHDOG=1 period from WATCHDOG_USEC and WATCHDOG_PID', () => {
    expect(watchdogIntervalMs({ WATCHDOG_USEC: '10000000' }, 42)).toBe(5000);
    expect(watchdogIntervalMs({ WATCHDOG_USEC: '10000000', WATCHDOG_PID: '42' }, 42)).toBe(5000);
    expect(watchdogIntervalMs({ WATCHDOG_USEC: '10000000', WATCHDOG_PID: '43' }, 42)).toBeUndefined();
    expect(watchdogIntervalMs({}, 42)).toBeUndefined();
    expect(SdNotifier.fromEnv({})).toBeUndefined();
  });
});
