import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { randomBytes } from 'node:crypto';


/**
 * Fails (never skips) when a real part the integration tests need is missing, naming the fix.
 * CI runs as root with everything installed by the project's own scripts.
 */
export function requireRealParts(parts: RealPart[]): void {
  const missing = missingRealParts(parts, repoRoot());
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
import { missingRealParts, type RealPart } from '../../src/dev/host-probe.js';
export * from '../../src/dev/host-probe.js';
