import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';


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
  if (parts.includes('build') && !existsSync(join(repoRoot(), 'dist/src/cli/main.js'))) missing.push('the build (run npm run build)');
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

/** Removes a test folder and checks it is gone. */
export function removeDir(dir: string): void {
  rmSync(dir, { recursive: true, force: true });
  if (existsSync(dir)) throw new Error(`could not remove ${dir}`);
}

export { AgentProcess } from '../../src/dev/agent-process.js';
import { repoRoot } from '../../src/dev/agent-process.js';
export * from '../../src/dev/host-probe.js';
