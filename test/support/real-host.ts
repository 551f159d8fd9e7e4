import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, openSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { MicroVmApiClient } from '../../src/cli/microvm-client.js';

/** Repository root. */
export const ROOT = new URL('../../', import.meta.url).pathname;

/**
 * Fails (never skips) when a real part the integration tests need is missing, naming the fix.
 * CI runs as root with everything installed by the project's own scripts.
 */
export function requireRealParts(parts: ('root' | 'qemu' | 'guest' | 'etcd' | 'build')[]): void {
  const missing: string[] = [];
  const have = (bin: string) => {
    try {
      execFileSync('sh', ['-c', `command -v ${bin}`], { stdio: 'ignore' });
      return true;
    } catch {
      return false;
    }
  };
  if (parts.includes('root') && process.getuid?.() !== 0) missing.push('root (taps and QEMU processes need it)');
  if (parts.includes('qemu') && !have('qemu-system-x86_64')) missing.push('qemu-system-x86_64 (run scripts/install-system.sh)');
  if (parts.includes('etcd') && !have('etcd')) missing.push('etcd (run scripts/install-system.sh)');
  const guest = join(process.env.TETHER_CACHE_DIR ?? join(homedir(), '.cache', 'tether'), 'guest');
  if (parts.includes('guest') && !['vmlinux', 'initrd.img', 'rootfs.img'].every((f) => existsSync(join(guest, f)))) {
    missing.push(`the guest image in ${guest} (run scripts/build-guest.sh)`);
  }
  if (parts.includes('build') && !existsSync(join(ROOT, 'dist/src/cli/main.js'))) missing.push('the build (run npm run build)');
  if (missing.length > 0) throw new Error(`integration test cannot run: missing ${missing.join('; ')}`);
}

/** A unique test host id (the leak check looks for `tether:test-`). */
export function testHostId(tag: string): string {
  return `test-${tag}-${randomBytes(3).toString('hex')}`;
}

/** A temp folder under /tmp/tether-test-*, which the leak check watches. */
export function testDir(tag: string): string {
  return mkdtempSync(`/tmp/tether-test-${tag}-`);
}

/** Every process whose command line contains `needle` (pid -> argv). */
export function processesWith(needle: string): Map<number, string[]> {
  const out = new Map<number, string[]>();
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const raw = readFileSync(`/proc/${name}/cmdline`, 'utf8');
      if (raw.includes(needle)) out.set(Number(name), raw.split('\0').filter(Boolean));
    } catch {
      /* gone */
    }
  }
  return out;
}

/** QEMU processes carrying `tether:<hostId>:`, as uid -> pid. */
export function qemusOf(hostId: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const [pid, argv] of processesWith(`tether:${hostId}:`)) {
    if (!argv[0]?.includes('qemu-system')) continue;
    const name = argv[argv.indexOf('-name') + 1] ?? '';
    const uid = name.split(',')[0]!.split(':')[2];
    if (uid) out.set(uid, pid);
  }
  return out;
}

/** Links as `ip -json -details link show` reports them: name -> alias. */
export function links(): Map<string, string | undefined> {
  const data = JSON.parse(execFileSync('ip', ['-json', '-details', 'link', 'show'], { encoding: 'utf8' })) as { ifname: string; ifalias?: string }[];
  return new Map(data.map((l) => [l.ifname, l.ifalias]));
}

/** Tap devices whose alias marks them as `hostId`'s. */
export function tapsOf(hostId: string): string[] {
  return [...links()].filter(([, a]) => a?.startsWith(`tether:${hostId}:`)).map(([n]) => n);
}

/** Polls `fn` until it returns a truthy value or `timeoutMs` passes (then throws with `what`). */
export async function until<T>(what: string, fn: () => T | Promise<T>, timeoutMs = 30_000, everyMs = 100): Promise<NonNullable<T>> {
  const t0 = Date.now();
  for (;;) {
    const v = await fn();
    if (v) return v as NonNullable<T>;
    if (Date.now() - t0 > timeoutMs) throw new Error(`timed out after ${timeoutMs}ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

/** Kills every QEMU of `hostId` and removes its taps: the last-resort cleanup of a test. */
export function killHostLeftovers(hostId: string): void {
  for (const pid of qemusOf(hostId).values()) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      /* gone */
    }
  }
  for (const tap of tapsOf(hostId)) execFileSync('ip', ['link', 'del', 'dev', tap]);
}

/** A `tether agent` child process on its own state dir and ports. */
export class AgentProcess {
  proc: ChildProcess | undefined;
  readonly grpc: string;
  readonly http: string;
  readonly log: string;
  private client: MicroVmApiClient | undefined;

  constructor(
    readonly hostId: string,
    readonly stateDir: string,
    private readonly extraArgs: string[] = [],
    ports = freePorts(2),
  ) {
    this.grpc = `127.0.0.1:${ports[0]}`;
    this.http = `127.0.0.1:${ports[1]}`;
    this.log = join(stateDir, 'agent.log');
  }

  /** Starts the agent and waits until its API answers. */
  async start(): Promise<void> {
    const args = [join(ROOT, 'bin/tether.js'), 'agent', '--host-id', this.hostId, '--state-dir', this.stateDir, '--listen', this.grpc, '--http-listen', this.http, '--log-level', 'debug', ...this.extraArgs];
    mkdirSync(this.stateDir, { recursive: true });
    const out = openSync(this.log, 'a');
    this.proc = spawn(process.execPath, args, { stdio: ['ignore', out, out] });
    await until(`agent ${this.hostId} API`, async () => {
      if (this.proc?.exitCode !== null) throw new Error(`agent exited (${this.proc?.exitCode}): ${readFileSync(this.log, 'utf8').slice(-2000)}`);
      return this.api().list().then(() => true, () => false);
    }, 20_000, 100);
  }

  api(): MicroVmApiClient {
    this.client ??= new MicroVmApiClient(this.grpc, 5000);
    return this.client;
  }

  /** SIGKILLs the agent (a crash) and waits for it to be gone. */
  async kill(signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
    const p = this.proc;
    this.client?.close();
    this.client = undefined;
    if (!p || p.exitCode !== null) return;
    const gone = new Promise((r) => p.once('exit', r));
    p.kill(signal);
    await gone;
  }
}

let nextPort = 20000 + Math.floor(Math.random() * 20000);
/** Ports very likely free (random base, checked by the bind of the agent). */
export function freePorts(n: number): number[] {
  const out = [];
  for (let i = 0; i < n; i++) out.push(nextPort++);
  return out;
}

/** Removes a test folder and checks it is gone. */
export function removeDir(dir: string): void {
  rmSync(dir, { recursive: true, force: true });
  if (existsSync(dir)) throw new Error(`could not remove ${dir}`);
}
