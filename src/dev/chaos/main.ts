/**
 * `npm run chaos -- --minutes M [--seed S] [--out DIR] [--vms N] [--converge-timeout SECONDS]`:
 * one chaos run on real parts (src/dev/chaos/chaos-run.ts, docs/chaos.md). Prints progress, writes
 * `chaos-report.json` and `chaos-timeline.json` (a `TimelineInput` for `tether timeline`) and the
 * logs into the output folder, cleans up everything it started, and exits 0 only when there was no
 * violation, the cluster converged and the cleanup left nothing behind (1 otherwise, 2 on bad
 * arguments or missing real parts). Ctrl-C heals and cleans up; Ctrl-C again forces the cleanup.
 */
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { messageOf } from '../../domain/errors.js';
import { parentIsNpm, resilientOutput, SignalPolicy, startDeathWatch, SUPERVISOR_SIGNALS, type SupervisorSignal } from '../dev-signals.js';
import { repoRoot } from '../agent-process.js';
import { missingRealParts } from '../host-probe.js';
import { ChaosRun } from './chaos-run.js';

interface Args {
  minutes: number;
  seed: number;
  out: string | undefined;
  vms: number;
  convergeS: number;
}

function parseArgs(argv: readonly string[]): Args {
  const a: Args = { minutes: 2, seed: Math.floor(Math.random() * 2 ** 31), out: undefined, vms: 4, convergeS: 120 };
  for (let i = 0; i < argv.length; i++) {
    const k = argv[i]!;
    const v = argv[i + 1];
    const num = (name: string, lo: number, hi: number): number => {
      const n = Number(v);
      if (v === undefined || !Number.isFinite(n) || n < lo || n > hi) throw new Error(`${name} wants a number in ${lo}..${hi}, got ${v ?? 'nothing'}`);
      i++;
      return n;
    };
    if (k === '--minutes') a.minutes = num(k, 0.2, 24 * 60);
    else if (k === '--seed') a.seed = Math.floor(num(k, 0, 2 ** 32 - 1));
    else if (k === '--vms') a.vms = Math.floor(num(k, 1, 12));
    else if (k === '--converge-timeout') a.convergeS = num(k, 10, 3600);
    else if (k === '--out') {
      if (!v) throw new Error('--out wants a folder');
      a.out = v;
      i++;
    } else if (k === '--help' || k === '-h') {
      process.stdout.write('usage: npm run chaos -- --minutes M [--seed S] [--out DIR] [--vms N] [--converge-timeout SECONDS]\n');
      process.exit(0);
    } else throw new Error(`unknown argument ${k}`);
  }
  return a;
}

/** Drops Node's DEP0123 warning, as bin/tether.js does (grpc-js over TLS to 127.0.0.1; the certificate is still verified against the IP). */
function quietTlsIpWarning(): void {
  const emit = process.emitWarning.bind(process) as (...a: unknown[]) => void;
  process.emitWarning = ((warning: string | Error, ...rest: unknown[]) => {
    const o = rest[0];
    const code = typeof o === 'object' && o !== null ? (o as { code?: string }).code : rest[1];
    if (code === 'DEP0123') return;
    emit(warning, ...rest);
  }) as typeof process.emitWarning;
}

async function main(): Promise<void> {
  quietTlsIpWarning();
  const out = resilientOutput();
  let args: Args;
  try {
    args = parseArgs(process.argv.slice(2));
  } catch (err) {
    out(`[chaos] ${messageOf(err)}`);
    process.exit(2);
  }
  const missing = missingRealParts(['root', 'qemu', 'etcd', 'guest'], repoRoot());
  if (missing.length > 0) {
    out(`[chaos] cannot run: missing ${missing.join('; ')}`);
    process.exit(2);
  }
  const stamp = new Date().toISOString().replace(/[:.]/g, '-').slice(0, 19);
  const outDir = resolve(args.out ?? join(tmpdir(), 'tether-chaos', `${stamp}-seed-${args.seed}`));
  const run = new ChaosRun({ minutes: args.minutes, seed: args.seed, outDir, vms: args.vms, convergeTimeoutMs: args.convergeS * 1000, log: out });
  const watch = startDeathWatch(run.clusterStateDir);
  const policy = new SignalPolicy(parentIsNpm());
  const onSignal = (sig: SupervisorSignal) => {
    const action = policy.next(sig, performance.now());
    if (action === 'start') {
      out(`\n[chaos] ${sig}: stopping the nemesis, healing, then cleaning up. ${sig === 'SIGINT' ? 'Ctrl-C' : sig} again to force.`);
      run.interrupt();
    } else if (action === 'force') {
      run.interrupt();
      run.teardown.force(`${sig} again`);
    }
  };
  for (const s of SUPERVISOR_SIGNALS) process.on(s, () => onSignal(s));
  let code = 1;
  try {
    const report = await run.run();
    out(`[chaos] report: ${join(outDir, 'chaos-report.json')}; timeline: ${report.timeline} (tether timeline ${report.timeline}); logs: ${report.logs}`);
    const applied = report.faults.filter((f) => !f.skipped);
    out(`[chaos] seed ${report.seed}: ${(report.faultPhaseMs / 60_000).toFixed(2)} min of faults, ${applied.length} applied (${[...new Set(applied.map((f) => f.kind))].join(', ')}), ${report.faults.length - applied.length} skipped; sampler: ${report.sampler.samples} samples (max gap ${report.sampler.maxGapMs} ms), ${report.sampler.incarnations.length} incarnations`);
    for (const p of report.perFault) out(`[chaos]   ${JSON.stringify(p)}`);
    for (const [kind, s] of Object.entries(report.summary)) out(`[chaos] ${kind} x${s.applied}: ${Object.entries(s.numbers).map(([k, v]) => `${k} ${v.min}/${v.median}/${v.max}`).join(', ')} (min/median/max)`);
    if (report.ok) out(`[chaos] OK: no violation; converged ${((report.convergence.afterHealMs ?? 0) / 1000).toFixed(1)}s after healing`);
    else for (const v of report.violations) out(`[chaos] VIOLATION ${v.invariant} at t+${((v.at - report.origin) / 1000).toFixed(1)}s: ${v.detail}`);
    code = report.ok ? 0 : 1;
  } catch (err) {
    out(`[chaos] internal error: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
  }
  const clean = await run.cleanup().catch((err: unknown) => {
    out(`[chaos] cleanup failed: ${messageOf(err)}`);
    return false;
  });
  await watch.release();
  if (!clean) {
    out('[chaos] the cleanup left something behind (see above)');
    code = 1;
  }
  process.exit(code);
}

void main();
