import { spawn, type ChildProcess } from 'node:child_process';
import { SystemClock } from '../../src/adapters/clock/system-clock.js';

/**
 * A real unix datagram socket for sd_notify tests (this machine has no systemd): python3 binds it
 * and prints every datagram it receives as one JSON line. Kill the processes in `receivers` after
 * each test.
 */

const clock = new SystemClock();

/** Receivers started so far (the caller kills them). */
export const receivers: ChildProcess[] = [];

/**
 * Starts a datagram receiver on `address` (a path, or `@name`); resolves with the messages it gets
 * and when each arrived (CLOCK_MONOTONIC ms, the scale of SystemClock.nowMono()).
 */
export async function datagramReceiver(address: string): Promise<{ messages: string[]; times: number[]; proc: ChildProcess }> {
  const py = [
    'import socket, sys, json, time',
    'a = sys.argv[1]',
    "a = '\\0' + a[1:] if a.startswith('@') else a",
    's = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)',
    's.bind(a)',
    "print('READY-TO-RECEIVE', flush=True)",
    'while True:',
    '    m = s.recv(4096).decode()',
    '    print(json.dumps([time.monotonic() * 1000, m]), flush=True)',
  ].join('\n');
  const proc = spawn('python3', ['-c', py, address], { stdio: ['ignore', 'pipe', 'inherit'] });
  receivers.push(proc);
  const messages: string[] = [];
  const times: number[] = [];
  let buf = '';
  let ready!: () => void;
  const isReady = new Promise<void>((r) => (ready = r));
  proc.stdout!.on('data', (d: Buffer) => {
    buf += d.toString();
    for (let i = buf.indexOf('\n'); i >= 0; i = buf.indexOf('\n')) {
      const line = buf.slice(0, i);
      buf = buf.slice(i + 1);
      if (line === 'READY-TO-RECEIVE') ready();
      else {
        const [at, text] = JSON.parse(line) as [number, string];
        messages.push(text);
        times.push(at);
      }
    }
  });
  await Promise.race([isReady, clock.sleep(10_000).then(() => Promise.reject(new Error('python3 datagram receiver did not start (is python3 installed?)')))]);
  return { messages, times, proc };
}

