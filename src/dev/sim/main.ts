/**
 * `npm run sim -- --seeds N [--seed S] [--hosts H] [--vms V] [--kinds a,b] [--timeline out.json] [--trace out.txt]`
 *
 * Runs seeds S, S+1, ... S+N-1 (default S=1, N=100) of the deterministic simulator (run.ts). For a
 * failing seed it prints the violations, the schedule, a shrunk schedule and the command that
 * replays it, writes its timeline (`--timeline`, default `sim-seed-<S>.timeline.json`) and exits 1.
 * With `--seed S` alone (N=1) it runs that seed; `--timeline` then writes its timeline even when it
 * passes. Prints seeds per second at the end.
 */
import { writeFileSync } from 'node:fs';
import { FAULT_KINDS, type FaultKind } from './nemesis.js';
import { describeFailure, runSeed, shrink } from './run.js';
import { kvStores } from './stores.js';

function arg(argv: readonly string[], name: string): string | undefined {
  const i = argv.indexOf(`--${name}`);
  return i >= 0 ? argv[i + 1] : undefined;
}

function num(argv: readonly string[], name: string, dflt: number): number {
  const v = arg(argv, name);
  if (v === undefined) return dflt;
  const n = Number(v);
  if (!Number.isSafeInteger(n) || n < 0) throw new Error(`--${name} must be a non-negative integer, got ${v}`);
  return n;
}

const USAGE = `usage: npm run sim -- [--seeds N] [--seed S] [--hosts H] [--vms V] [--kinds a,b,...] [--timeline out.json] [--trace out.txt]
  --seeds N     run seeds S..S+N-1 (default 100); stops at the first failing seed
  --seed S      first seed (default 1); alone: run just that seed
  --hosts H     hosts per seed (default 3)      --vms V   VMs per seed (default 6)
  --kinds       fault kinds the nemesis draws from (default all): ${Object.keys(FAULT_KINDS).join(', ')}
  --timeline    where a failing (or, with --seed alone, any) seed's timeline goes (tether timeline <file>)
  --trace       write the seed's full trace (for diffing two runs)
`;
const FLAGS = new Set(['seeds', 'seed', 'hosts', 'vms', 'kinds', 'timeline', 'trace']);

/** Entry point; returns the exit code. */
export async function main(argv: readonly string[]): Promise<number> {
  if (argv.includes('--help') || argv.includes('-h')) {
    process.stdout.write(USAGE);
    return 0;
  }
  for (let i = 0; i < argv.length; i += 2) {
    const flag = argv[i]!;
    if (!flag.startsWith('--') || !FLAGS.has(flag.slice(2))) throw new Error(`unknown argument ${flag}\n${USAGE}`);
    if (argv[i + 1] === undefined) throw new Error(`${flag} needs a value\n${USAGE}`);
  }
  const kindsArg = arg(argv, 'kinds');
  const kinds = kindsArg?.split(',').map((k) => k.trim()) as FaultKind[] | undefined;
  for (const k of kinds ?? []) if (!(k in FAULT_KINDS)) throw new Error(`--kinds: unknown fault kind ${k} (known: ${Object.keys(FAULT_KINDS).join(', ')})`);
  const single = arg(argv, 'seed') !== undefined && arg(argv, 'seeds') === undefined;
  const first = num(argv, 'seed', 1);
  const count = single ? 1 : num(argv, 'seeds', 100);
  const hosts = num(argv, 'hosts', 3);
  const vms = num(argv, 'vms', 6);
  const timelinePath = arg(argv, 'timeline');
  const tracePath = arg(argv, 'trace');
  const t0 = performance.now();
  let failed = 0;
  let ran = 0;
  for (let seed = first; seed < first + count; seed++) {
    ran++;
    const opts = { seed, hosts, vms, stores: kvStores, keepTrace: tracePath !== undefined, ...(kinds ? { kinds } : {}) };
    const r = await runSeed(opts);
    if (tracePath) writeFileSync(tracePath, `${(r.traceLines ?? []).join('\n')}\n`);
    if (r.violations.length === 0) {
      if (single) process.stdout.write(`seed ${seed}: ok (${r.steps} steps, trace ${r.traceHash})\n`);
      if (single && timelinePath) writeFileSync(timelinePath, JSON.stringify(r.timeline, null, 2));
      continue;
    }
    failed++;
    const s = await shrink(opts, r);
    for (const line of describeFailure(r, s.schedule)) process.stdout.write(`${line}\n`);
    process.stdout.write(`  timeline of the shrunk run:\n`);
    for (const v of s.result.timeline.faults) process.stdout.write(`    fault ${((v.at - s.result.timeline.origin) / 1000).toFixed(3)}s ${v.kind} ${v.target}\n`);
    for (const h of s.result.timeline.hosts) for (const e of h.events.filter((x) => x.kind !== 'heartbeat-acked')) process.stdout.write(`    ${((e.at - s.result.timeline.origin) / 1000).toFixed(3)}s ${h.hostId} ${e.kind}\n`);
    for (const v of s.result.timeline.violations) process.stdout.write(`    ${((v.at - s.result.timeline.origin) / 1000).toFixed(3)}s VIOLATION ${v.invariant}: ${v.detail}\n`);
    const out = timelinePath ?? `sim-seed-${seed}.timeline.json`;
    writeFileSync(out, JSON.stringify(r.timeline, null, 2));
    process.stdout.write(`  replay: npm run sim -- --seed ${seed} --hosts ${hosts} --vms ${vms}${kindsArg ? ` --kinds ${kindsArg}` : ''}   (timeline: ${out}; render: tether timeline ${out})\n`);
    if (!single) break;
  }
  const secs = (performance.now() - t0) / 1000;
  process.stdout.write(`${failed === 0 ? 'ok' : 'FAILED'}: ${ran} seed(s) from ${first} in ${secs.toFixed(1)} s (${(ran / secs).toFixed(2)} seeds/s)\n`);
  return failed === 0 ? 0 : 1;
}

const invoked = process.argv[1] ?? '';
if (invoked.endsWith('/sim/main.js') || invoked.endsWith('/sim/main.ts')) {
  main(process.argv.slice(2)).then(
    (code) => process.exit(code),
    (err) => {
      process.stderr.write(`${err instanceof Error ? err.stack : String(err)}\n`);
      process.exit(2);
    },
  );
}
