import { execFileSync, spawn, type ChildProcess } from 'node:child_process';

/**
 * A stand-in for /dev/watchdog (this machine has none): a FIFO whose reader (python3) records every
 * byte written to it with its arrival time, and the end of input (`EOF`: the writer closed).
 */
export interface FifoReader {
  /** Bytes in arrival order ('.' pets, 'V' the magic close, 'EOF' when the writer closed). */
  readonly bytes: string[];
  /** CLOCK_MONOTONIC ms of each entry of `bytes`. */
  readonly times: number[];
  readonly proc: ChildProcess;
}

/** Makes the FIFO at `path` and starts its reader (which blocks until a writer opens it). */
export function watchdogFifo(path: string): FifoReader {
  execFileSync('mkfifo', [path]);
  const py = [
    'import sys, json, time',
    "f = open(sys.argv[1], 'rb', buffering=0)",
    'while True:',
    '    b = f.read(1)',
    "    print(json.dumps([time.monotonic() * 1000, b.decode() if b else 'EOF']), flush=True)",
    '    if not b: break',
  ].join('\n');
  const proc = spawn('python3', ['-c', py, path], { stdio: ['ignore', 'pipe', 'inherit'] });
  const bytes: string[] = [];
  const times: number[] = [];
  let buf = '';
  proc.stdout!.on('data', (d: Buffer) => {
    buf += d.toString();
    for (let i = buf.indexOf('\n'); i >= 0; i = buf.indexOf('\n')) {
      const [at, b] = JSON.parse(buf.slice(0, i)) as [number, string];
      buf = buf.slice(i + 1);
      bytes.push(b);
      times.push(at);
    }
  });
  return { bytes, times, proc };
}
