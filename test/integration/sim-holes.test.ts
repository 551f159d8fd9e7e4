/**
 * The simulator catches each hole closed by issue 7 ("fence outlives the agent") when it is put back.
 * Each hole is re-introduced without touching production code here: a patch under test/sim-holes/
 * applied to a throwaway `git worktree` of HEAD (run there with vite-node), or, for the hole that
 * lies in the deployment rather than the code (agents without their guardian process), the
 * simulator's `noGuardian` switch. For each, seeds run from 1 until the first violation (bounded
 * budget); the test prints, per hole, the first failing seed and how many seeds it took, and checks
 * that the unpatched code passes the very same seeds (so the hole, not the simulator, fails them).
 * Integration tier: a worktree and a vite-node process per hole (about a minute each).
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import type { FaultKind } from '../../src/dev/sim/nemesis.js';
import { hunt, type HuntResult } from '../../src/dev/sim/run.js';
import { kvStores } from '../../src/dev/sim/stores.js';

const ROOT = resolve(__dirname, '../..');
/** Seeds each hole may take before the test gives up (none took more than a handful when written). */
const BUDGET = 40;

interface Hole {
  readonly name: string;
  /** Patch under test/sim-holes/, or undefined for the sim switch. */
  readonly patch?: string;
  readonly noGuardian?: boolean;
  /** The fault kinds that can reach the hole (fewer kinds: fewer seeds; every kind is still legal). */
  readonly kinds: readonly FaultKind[];
  /** Fault phase length (default 45 s); a hold needs a long partition under it. */
  readonly faultMs?: number;
}

const HOLES: readonly Hole[] = [
  { name: 'watchdog inside the agent only (no guardian)', noGuardian: true, kinds: ['agent-hang', 'agent-crash', 'partition'] },
  { name: 'unpublished local hold (applied without holdSeen)', patch: 'unpublished-hold.patch', kinds: ['hold', 'partition'], faultMs: 90_000 },
  { name: 'early lease revoke not allowed for', patch: 'early-revoke.patch', kinds: ['early-revoke', 'partition'] },
];

/** Runs `hunt` in a worktree of HEAD with `patch` applied. */
function huntPatched(patch: string, kinds: readonly FaultKind[], faultMs: number): HuntResult {
  const dir = mkdtempSync(join(tmpdir(), 'tether-sim-hole-'));
  rmSync(dir, { recursive: true });
  execFileSync('git', ['-C', ROOT, 'worktree', 'add', '--detach', dir, 'HEAD'], { stdio: 'pipe' });
  try {
    execFileSync('git', ['-C', dir, 'apply', join(ROOT, 'test/sim-holes', patch)], { stdio: 'pipe' });
    symlinkSync(join(ROOT, 'node_modules'), join(dir, 'node_modules'));
    writeFileSync(
      join(dir, 'hunt-hole.ts'),
      `import { hunt } from './src/dev/sim/run.js';\nimport { kvStores } from './src/dev/sim/stores.js';\n` +
        `const r = await hunt({ from: 1, maxSeeds: ${BUDGET}, stores: kvStores, kinds: ${JSON.stringify(kinds)}, faultMs: ${faultMs} });\nconsole.log('HUNT ' + JSON.stringify(r));\n`,
    );
    const out = execFileSync(join(ROOT, 'node_modules/.bin/vite-node'), ['hunt-hole.ts'], { cwd: dir, encoding: 'utf8', timeout: 900_000 });
    const line = out.split('\n').find((l) => l.startsWith('HUNT '));
    if (!line) throw new Error(`no result from the patched run:\n${out}`);
    return JSON.parse(line.slice(5)) as HuntResult;
  } finally {
    execFileSync('git', ['-C', ROOT, 'worktree', 'remove', '--force', dir], { stdio: 'pipe' });
  }
}

describe('simulator catches each re-introduced hole of issue 7', () => {
  for (const h of HOLES) {
    it(`${h.name}: a violation within ${BUDGET} seeds, none on the same seeds without the hole`, async () => {
      const faultMs = h.faultMs ?? 45_000;
      const r = h.patch ? huntPatched(h.patch, h.kinds, faultMs) : await hunt({ from: 1, maxSeeds: BUDGET, stores: kvStores, kinds: h.kinds, faultMs, noGuardian: true });
      console.log(`[sim-holes] ${h.name}: first failing seed ${r.firstFailingSeed ?? 'none'} after ${r.seedsTried} seed(s): ${r.violation ? `${r.violation.invariant}: ${r.violation.detail}` : '-'}`);
      expect(r.firstFailingSeed).toBeDefined();
      expect(['double-run', 'false-fence', 'fenced-epoch-write']).toContain(r.violation!.invariant);
      const control = await hunt({ from: 1, maxSeeds: r.seedsTried, stores: kvStores, kinds: h.kinds, faultMs });
      expect(control.firstFailingSeed).toBeUndefined();
    }, 1_200_000);
  }
});
