/**
 * `npm run bench [-- scenario... --quick --gc-n 1,5]`: benchmarks on real QEMU microVMs, taps and
 * etcd. Progress on stderr; tables on stdout, then the path of the JSON results
 * (`bench/results/<time>.json` and `bench/results/latest.json`). See docs/bench.md.
 *
 * Exit status: 0 when every selected scenario ran and nothing of the bench's host ids, etcd
 * clusters or temp folders is left on the system; 1 otherwise; 2 on bad arguments; 130 when
 * interrupted (after cleaning up).
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { cpus, loadavg, release, totalmem } from 'node:os';
import { join, relative } from 'node:path';
import { repoRoot } from '../src/dev/agent-process.js';
import { processesWith } from '../src/dev/host-probe.js';
import { lazyEtcd, type BenchContext, type ScenarioResult } from './lib/context.js';
import { progress } from './lib/progress.js';
import { BenchResources } from './lib/resources.js';
import { renderTable, type Table } from './lib/table.js';
import { runControllerScale } from './scenarios/controller-scale.js';
import { runFleetScenario } from './scenarios/fleet.js';
import { runGc } from './scenarios/gc.js';
import { runReschedule } from './scenarios/reschedule.js';
import { runAgentIdleRss, runCreateReady, runGracefulStop } from './scenarios/substrate.js';

type Section = 'create-ready' | 'graceful-stop' | 'agent-idle-rss' | 'gc' | 'reschedule' | 'controller-scale' | 'fleet';

const RUNNERS: Record<Section, (ctx: BenchContext) => Promise<ScenarioResult>> = {
  'create-ready': runCreateReady,
  'graceful-stop': runGracefulStop,
  'agent-idle-rss': runAgentIdleRss,
  gc: runGc,
  reschedule: runReschedule,
  'controller-scale': runControllerScale,
  fleet: runFleetScenario,
};

/** Names accepted on the command line and the sections they run. */
const SCENARIOS: Record<string, readonly Section[]> = {
  create: ['create-ready', 'graceful-stop', 'agent-idle-rss'],
  'create-ready': ['create-ready'],
  'graceful-stop': ['graceful-stop'],
  'agent-idle-rss': ['agent-idle-rss'],
  gc: ['gc'],
  reschedule: ['reschedule'],
  'controller-scale': ['controller-scale'],
  fleet: ['fleet'],
};

/** Scenarios that run only when named (long, and they size themselves). */
const ONLY_WHEN_NAMED = new Set(['fleet']);

const USAGE = `usage: npm run bench -- [scenario...] [--quick] [--gc-n 1,5,10,20] [--hosts N --vms-per-host V]

scenarios (default: all):
  create          host substrate: create-ready + graceful-stop + agent-idle-rss
  create-ready    create -> CREATED for 1 VM (x3) and 10 VMs at once (standalone agent)
  graceful-stop   delete of a running VM: stop time, QEMU gone, delete+clean (x3)
  agent-idle-rss  RSS of an idle agent, standalone and heartbeating to etcd
  gc              detached-host GC for N = 1, 5, 10, 20 VMs (cut etcd, fence, clean, rejoin)
  reschedule      partition -> VM running again on another host (3 hosts, controller), default and aggressive timings
  controller-scale  one controller, N = 1000, 5000 simulated hosts (quick: 200, 1000): lease gone -> detached
  fleet           (only when named) N simulated hosts running the production agent cluster code, V VMs each,
                  a controller and a standby: etcd load, expiry -> detached/fenced/placed, takeover
                  (default 1000 x 100, quick 200 x 20)

--quick   smoke run: 1 repetition, 3-VM batch, gc N = 1, 5
--gc-n    the N values of the gc scenario (comma-separated)
--hosts, --vms-per-host   size of the fleet scenario`;

interface Args {
  readonly sections: Section[];
  readonly quick: boolean;
  readonly gcSizes: number[];
  readonly fleet: { hosts?: number; vmsPerHost?: number };
}

function parseArgs(argv: readonly string[]): Args {
  let quick = false;
  let gcSizes: number[] | undefined;
  const fleet: { hosts?: number; vmsPerHost?: number } = {};
  const names: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--quick') quick = true;
    else if (a === '--help' || a === '-h') {
      console.log(USAGE);
      process.exit(0);
    } else if (a === '--gc-n' || a.startsWith('--gc-n=')) {
      const v = a.includes('=') ? a.slice(a.indexOf('=') + 1) : argv[++i];
      gcSizes = (v ?? '').split(',').map(Number);
      if (gcSizes.length === 0 || gcSizes.some((n) => !Number.isInteger(n) || n < 1 || n > 40)) usage(`--gc-n wants integers 1..40, got ${v}`);
    } else if (a === '--hosts' || a.startsWith('--hosts=') || a === '--vms-per-host' || a.startsWith('--vms-per-host=')) {
      const name = a.replace(/=.*/, '');
      const v = a.includes('=') ? a.slice(a.indexOf('=') + 1) : argv[++i];
      const n = Number(v);
      const min = name === '--hosts' ? 10 : 0;
      if (!Number.isInteger(n) || n < min || n > (name === '--hosts' ? 50_000 : 1000)) usage(`${name} wants an integer ${min}..${name === '--hosts' ? 50_000 : 1000}, got ${v}`);
      if (name === '--hosts') fleet.hosts = n;
      else fleet.vmsPerHost = n;
    } else if (a.startsWith('-')) usage(`unknown option ${a}`);
    else if (!(a in SCENARIOS)) usage(`unknown scenario ${a}`);
    else names.push(a);
  }
  const chosen = new Set((names.length ? names : Object.keys(SCENARIOS).filter((n) => !ONLY_WHEN_NAMED.has(n))).flatMap((n) => SCENARIOS[n]!));
  const sections = (Object.keys(RUNNERS) as Section[]).filter((s) => chosen.has(s));
  return { sections, quick, gcSizes: gcSizes ?? (quick ? [1, 5] : [1, 5, 10, 20]), fleet };
}

function usage(message: string): never {
  console.error(`${message}\n\n${USAGE}`);
  process.exit(2);
}

/** QEMU processes on this machine that are not ours (other users of the CPU skew the numbers). */
function foreignQemus(ourIds: readonly string[]): number {
  let n = 0;
  for (const [, argv] of processesWith('qemu-system')) {
    if (!argv[0]?.includes('qemu-system')) continue;
    const joined = argv.join(' ');
    if (!ourIds.some((id) => joined.includes(`tether:${id}:`))) n++;
  }
  return n;
}

/** The commit and the files changed since (the agent under test is whatever dist/ was built from). */
function gitState(root: string): { commit: string; changedFiles: string[] } | undefined {
  try {
    const git = (...a: string[]) => execFileSync('git', ['-C', root, ...a], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
    return { commit: git('rev-parse', 'HEAD').trim(), changedFiles: git('status', '--porcelain').split('\n').filter(Boolean) };
  } catch {
    return undefined;
  }
}

/** 1, 5 and 15 minute load averages. */
function load(): number[] {
  return loadavg().map((x) => Math.round(x * 100) / 100);
}

async function main(): Promise<void> {
  const args = parseArgs(process.argv.slice(2));
  const root = repoRoot();
  const startedAt = new Date();
  const stamp = startedAt.toISOString().replace(/:/g, '-');
  const res = new BenchResources(join(root, 'bench', 'results', 'logs'), stamp);
  const accels = new Set<string>();
  const ctx: BenchContext = {
    res,
    quick: args.quick,
    gcSizes: args.gcSizes,
    fleet: args.fleet,
    etcd: lazyEtcd(res),
    sawAccel: (a) => {
      if (a) accels.add(a);
    },
  };
  const results: Record<string, unknown> = {};
  const failures: string[] = [];
  const tables: Table[] = [];
  const machine = {
    cpus: cpus().length,
    cpuModel: cpus()[0]?.model ?? 'unknown',
    memoryGiB: Math.round(totalmem() / 2 ** 30),
    kernel: release(),
    node: process.version,
    loadAvgAtStart: load(),
    foreignQemuAtStart: foreignQemus([]),
  };

  const finish = async (status: 'complete' | 'interrupted'): Promise<number> => {
    progress('cleaning up: agents, VMs, taps, etcd, proxies, temp folders');
    await res.cleanup();
    const leaks = res.leaks();
    res.releaseReapers();
    if (leaks.length) progress(`LEAKED (${leaks.length}):\n  ${leaks.join('\n  ')}`);
    else progress(`leak check: nothing of ${res.ids.join(', ') || 'the bench'} is left (processes, taps, etcd members, temp folders)`);
    const failed = failures.length > 0;
    const out = {
      schema: 'tether-bench/1',
      status,
      startedAt: startedAt.toISOString(),
      finishedAt: new Date().toISOString(),
      options: { sections: args.sections, quick: args.quick, gcSizes: args.gcSizes, fleet: args.fleet },
      git: gitState(root),
      machine: { ...machine, accel: [...accels], loadAvgAtEnd: load(), foreignQemuAtEnd: foreignQemus(res.ids) },
      hostIds: res.ids,
      results,
      failures,
      leaks,
      ok: status === 'complete' && !failed && leaks.length === 0,
    };
    const dir = join(root, 'bench', 'results');
    mkdirSync(dir, { recursive: true });
    const file = join(dir, `${stamp}.json`);
    const text = `${JSON.stringify(out, null, 2)}\n`;
    writeFileSync(file, text);
    if (status === 'complete') writeFileSync(join(dir, 'latest.json'), text); // an interrupted run is kept, not "latest"
    const header = `Tether bench — ${machine.cpus} × ${machine.cpuModel}, ${machine.memoryGiB} GiB, QEMU accel ${[...accels].join(', ') || 'n/a'}, Node ${machine.node}${args.quick ? ' (--quick)' : ''}`;
    process.stdout.write(`${header}\n\n${tables.map(renderTable).join('\n\n')}${tables.length ? '\n\n' : ''}`);
    for (const f of failures) process.stdout.write(`FAILED: ${f}\n`);
    if (leaks.length) process.stdout.write(`LEAKED: ${leaks.join('; ')}\n`);
    process.stdout.write(`results: ${relative(process.cwd(), file) || file}\n`);
    if (status === 'interrupted') return 130;
    return out.ok ? 0 : 1;
  };

  let interrupted = false;
  const onSignal = (sig: NodeJS.Signals) => {
    if (interrupted) {
      progress(`${sig} again: exiting without waiting (etcd members are killed by their exit hook)`);
      process.exit(130);
    }
    interrupted = true;
    progress(`${sig}: stopping`);
    void finish('interrupted').then((code) => process.exit(code));
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);

  progress(`sections: ${args.sections.join(', ')}${args.quick ? ' (quick)' : ''}; gc N = ${args.gcSizes.join(', ')}`);
  for (const section of args.sections) {
    if (interrupted) break;
    progress(`== ${section} ==`);
    const t0 = performance.now();
    const before = { loadAvg: load(), foreignQemu: foreignQemus(res.ids) };
    try {
      const r = await RUNNERS[section](ctx);
      results[section] = { ...r.data, machineLoad: { before, after: { loadAvg: load(), foreignQemu: foreignQemus(res.ids) } } };
      tables.push(...r.tables);
      failures.push(...(r.failures ?? []));
      progress(`== ${section} done in ${((performance.now() - t0) / 1000).toFixed(1)} s ==`);
    } catch (err) {
      if (interrupted) break;
      results[section] = { error: (err as Error).message };
      failures.push(`${section}: ${(err as Error).message}`);
      progress(`== ${section} FAILED after ${((performance.now() - t0) / 1000).toFixed(1)} s: ${(err as Error).message}`);
    }
  }
  if (interrupted) return; // the signal handler finishes and exits
  process.exit(await finish('complete'));
}

main().catch((err: unknown) => {
  progress(`bench crashed: ${(err as Error).stack ?? String(err)}`);
  process.exitCode = 1;
});
