/**
 * Host substrate: how long the agent takes to create and delete real QEMU microVMs (standalone
 * agent, its gRPC API, readiness = API state CREATED), how it stops a guest that honours ACPI, and
 * how much memory an idle agent holds.
 */
import { qemusOf, tapsOf } from '../../src/dev/host-probe.js';
import type { FlintlockMicroVM } from '../../src/api/grpc/wire-types.js';
import type { BenchContext, ScenarioResult } from '../lib/context.js';
import { benchVmSpec, BENCH_NAMESPACE, BenchHost, pidAlive, rssOf } from '../lib/host.js';
import { progress, sleep } from '../lib/progress.js';
import { countBy, fmtCounts, fmtMs, fmtSummary, summarize } from '../lib/stats.js';

/** Poll period of Get while timing one VM: bounds the error of a readiness time. */
const SINGLE_POLL_MS = 20;
/** Poll period of List while timing a batch. */
const BATCH_POLL_MS = 100;

/** Throws when any of `vms` left a process, tap or folder behind. */
function assertNothingLeft(host: BenchHost, vms: readonly FlintlockMicroVM[], what: string): void {
  const left = vms.flatMap((vm) => host.leftoversOf(vm));
  if (left.length > 0) throw new Error(`${what}: left on the system: ${left.join(', ')}`);
}

/** `create`: create → CREATED for 1 VM (repeated) and for a batch created at once. */
export async function runCreateReady(ctx: BenchContext): Promise<ScenarioResult> {
  const reps = ctx.quick ? 1 : 3;
  const batch = ctx.quick ? 3 : 10;
  const host = await BenchHost.start(ctx.res, 'create');
  try {
    const single: { rpcMs: number; readyMs: number }[] = [];
    for (let i = 0; i < reps; i++) {
      const label = `create 1 VM (${i + 1}/${reps})`;
      const t0 = performance.now();
      const vm = await host.api.create(benchVmSpec(`single-${i}`));
      const rpcMs = performance.now() - t0;
      const ready = await host.waitAllCreated([vm.spec.uid], t0, { everyMs: SINGLE_POLL_MS, timeoutMs: 90_000, label });
      const readyMs = ready.get(vm.spec.uid)!;
      single.push({ rpcMs, readyMs });
      ctx.sawAccel(host.accel());
      progress(`${label}: CREATED after ${Math.round(readyMs)} ms (create RPC ${Math.round(rpcMs)} ms)`);
      const full = await host.api.get(vm.spec.uid);
      await host.api.delete(vm.spec.uid);
      await host.waitAllGone([vm.spec.uid], performance.now(), { everyMs: 50, timeoutMs: 60_000, label: `${label}: delete` });
      assertNothingLeft(host, [full], label);
    }

    const label = `create ${batch} VMs at once`;
    progress(`${label} ...`);
    const t0 = performance.now();
    const created = await Promise.all(Array.from({ length: batch }, (_, i) => host.api.create(benchVmSpec(`batch-${i}`))));
    const rpcAllMs = performance.now() - t0;
    const uids = created.map((v) => v.spec.uid);
    const readyAt = await host.waitAllCreated(uids, t0, { everyMs: BATCH_POLL_MS, timeoutMs: 240_000, label });
    const perVm = [...readyAt.values()];
    const allMs = Math.max(...perVm);
    progress(`${label}: all CREATED after ${Math.round(allMs)} ms`);
    const running = qemusOf(host.hostId).size;
    const taps = tapsOf(host.hostId).length;
    if (running !== batch || taps !== batch) throw new Error(`${label}: expected ${batch} QEMU processes and taps, found ${running} and ${taps}`);
    const vms = await host.api.list(BENCH_NAMESPACE);

    progress(`delete ${batch} VMs at once ...`);
    const t1 = performance.now();
    await Promise.all(uids.map((u) => host.api.delete(u)));
    const goneAt = await host.waitAllGone(uids, t1, { everyMs: BATCH_POLL_MS, timeoutMs: 120_000, label: `delete ${batch}` });
    const deleteAllMs = Math.max(...goneAt.values());
    assertNothingLeft(host, vms, `delete ${batch}`);
    progress(`delete ${batch} VMs at once: all NOT_FOUND after ${Math.round(deleteAllMs)} ms; processes, taps, folders gone`);

    const singleSum = summarize(single.map((s) => s.readyMs));
    const data = {
      vmSpec: benchVmSpec('<name>'),
      pollMs: { single: SINGLE_POLL_MS, batch: BATCH_POLL_MS },
      single: { runs: single.map((s) => ({ createRpcMs: Math.round(s.rpcMs), readyMs: Math.round(s.readyMs) })), readyMs: singleSum },
      batch: {
        n: batch,
        createRpcsMs: Math.round(rpcAllMs),
        allCreatedMs: Math.round(allMs),
        perVmReadyMs: summarize(perVm),
        deleteAllNotFoundMs: Math.round(deleteAllMs),
        perVmDeleteMs: summarize([...goneAt.values()]),
      },
    };
    return {
      data,
      tables: [
        {
          title: 'create → ready (standalone agent, gRPC Create → Get/List says CREATED)',
          headers: ['case', 'time (min / median / max)', 'detail'],
          rows: [
            [`1 VM (×${reps})`, fmtSummary(singleSum), `create RPC ${fmtSummary(summarize(single.map((s) => s.rpcMs)))}`],
            [`${batch} VMs at once`, fmtMs(allMs), `until all CREATED; per VM ${fmtSummary(summarize(perVm))}`],
            [`delete ${batch} at once`, fmtMs(deleteAllMs), 'until all NOT_FOUND (process, taps, folders verified gone)'],
          ],
          notes: [
            `VM: built-in guest, 1 vCPU, 96 MiB, qcow2 root overlay, 1 TAP; ready = guest's ready line seen by the agent.`,
            `Error bar: one poll (${SINGLE_POLL_MS} ms single, ${BATCH_POLL_MS} ms batch) plus one RPC.`,
          ],
        },
      ],
    };
  } catch (err) {
    host.reportFailure('create-ready');
    throw err;
  } finally {
    await host.stop();
  }
}

/** `graceful-stop`: delete of a running VM whose guest honours ACPI. */
export async function runGracefulStop(ctx: BenchContext): Promise<ScenarioResult> {
  const reps = ctx.quick ? 1 : 3;
  const host = await BenchHost.start(ctx.res, 'stop');
  try {
    const runs: { method: string; agentStopMs: number; procGoneMs: number; deleteRpcMs: number; notFoundMs: number }[] = [];
    for (let i = 0; i < reps; i++) {
      const label = `graceful stop (${i + 1}/${reps})`;
      const created = await host.api.create(benchVmSpec(`stop-${i}`));
      await host.waitAllCreated([created.spec.uid], performance.now(), { everyMs: 50, timeoutMs: 90_000, label: `${label}: create` });
      ctx.sawAccel(host.accel());
      const vm = await host.api.get(created.spec.uid);
      const pid = qemusOf(host.hostId).get(vm.spec.uid);
      if (pid === undefined) throw new Error(`${label}: no QEMU process for ${vm.spec.uid}`);
      await sleep(1000); // a running guest, not one that just printed its ready line

      const t0 = performance.now();
      let procGoneMs = NaN;
      const watch = (async () => {
        while (pidAlive(pid) && performance.now() - t0 < 60_000) await sleep(5);
        procGoneMs = performance.now() - t0;
      })();
      await host.api.delete(vm.spec.uid);
      const deleteRpcMs = performance.now() - t0;
      const gone = await host.waitAllGone([vm.spec.uid], t0, { everyMs: SINGLE_POLL_MS, timeoutMs: 60_000, label });
      await watch;
      assertNothingLeft(host, [vm], label);
      const ev = (await host.events(200)).find((e) => e.kind === 'vm-stopped' && e.vmUid === vm.spec.uid);
      if (!ev) throw new Error(`${label}: no vm-stopped event for ${vm.spec.uid}`);
      const run = {
        method: String(ev.detail.method),
        agentStopMs: Number(ev.detail.tookMs),
        procGoneMs: Math.round(procGoneMs),
        deleteRpcMs: Math.round(deleteRpcMs),
        notFoundMs: Math.round(gone.get(vm.spec.uid)!),
      };
      runs.push(run);
      progress(`${label}: ${run.method} in ${run.agentStopMs} ms (agent), QEMU gone after ${run.procGoneMs} ms, NOT_FOUND after ${run.notFoundMs} ms`);
    }
    const stop = summarize(runs.map((r) => r.agentStopMs));
    const proc = summarize(runs.map((r) => r.procGoneMs));
    const notFound = summarize(runs.map((r) => r.notFoundMs));
    const methods = countBy(runs.map((r) => r.method));
    return {
      data: { runs, agentStopMs: stop, processGoneMs: proc, deleteCleanMs: notFound, methods, verified: 'process, taps and folder gone after each delete' },
      tables: [
        {
          title: 'graceful stop and delete+clean (guest honours the ACPI power button)',
          headers: ['measure', 'time (min / median / max)', 'how'],
          rows: [
            ['stop', fmtSummary(stop), `agent's vm-stopped event (tookMs); methods ${fmtCounts(methods)}`],
            ['QEMU process gone', fmtSummary(proc), 'delete request → /proc/<pid> gone (5 ms poll)'],
            ['delete+clean', fmtSummary(notFound), `delete request → Get NOT_FOUND (${SINGLE_POLL_MS} ms poll); process, taps, folder verified gone`],
          ],
        },
      ],
    };
  } catch (err) {
    host.reportFailure('graceful-stop');
    throw err;
  } finally {
    await host.stop();
  }
}

/** Samples the agent's VmRSS `count` times, `everyMs` apart. */
async function sampleRss(host: BenchHost, count: number, everyMs: number): Promise<{ rssKiB: number[]; hwmKiB: number }> {
  const rss: number[] = [];
  let hwm = 0;
  for (let i = 0; i < count; i++) {
    if (i > 0) await sleep(everyMs);
    const r = rssOf(host.pid);
    rss.push(r.rssKiB);
    hwm = Math.max(hwm, r.hwmKiB);
  }
  return { rssKiB: rss, hwmKiB: hwm };
}

const mib = (kib: number) => Math.round((kib / 1024) * 10) / 10;

/** `agent-idle-rss`: RSS of an idle agent (0 VMs), standalone and with the etcd heartbeat running. */
export async function runAgentIdleRss(ctx: BenchContext): Promise<ScenarioResult> {
  const settleMs = 3000;
  const samples = ctx.quick ? 3 : 6;
  const rows: string[][] = [];
  const data: Record<string, unknown> = { settleMs, samples, sampleEveryMs: 500 };

  const standalone = await BenchHost.start(ctx.res, 'rss');
  try {
    await sleep(settleMs);
    const s = await sampleRss(standalone, samples, 500);
    const sum = summarize(s.rssKiB.map(mib), 1);
    data.standalone = { rssMiB: sum, peakMiB: mib(s.hwmKiB) };
    rows.push(['standalone (no etcd), 0 VMs', `${sum.median} MiB`, `${sum.min}–${sum.max} MiB`, `${mib(s.hwmKiB)} MiB`]);
    progress(`idle agent RSS, standalone: ${sum.median} MiB`);
  } finally {
    await standalone.stop();
  }

  const etcd = await ctx.etcd();
  const attached = await BenchHost.start(ctx.res, 'rss-etcd', etcd.agentArgs());
  try {
    const t0 = performance.now();
    for (;;) {
      const st = await attached.status().catch(() => undefined);
      if (st?.phase === 'attached') break;
      if (performance.now() - t0 > 30_000) throw new Error(`agent ${attached.hostId} not attached after 30 s (phase ${st?.phase})`);
      await sleep(100);
    }
    await sleep(settleMs);
    const s = await sampleRss(attached, samples, 500);
    const st = await attached.status();
    if (st.phase !== 'attached') throw new Error(`agent ${attached.hostId} left attached while sampled (${st.phase})`);
    const sum = summarize(s.rssKiB.map(mib), 1);
    data.withEtcdHeartbeat = { rssMiB: sum, peakMiB: mib(s.hwmKiB), heartbeatIntervalMs: st.timings.heartbeatInterval };
    rows.push([`etcd heartbeat every ${st.timings.heartbeatInterval} ms, 0 VMs`, `${sum.median} MiB`, `${sum.min}–${sum.max} MiB`, `${mib(s.hwmKiB)} MiB`]);
    progress(`idle agent RSS, attached to etcd: ${sum.median} MiB`);
  } finally {
    await attached.stop();
  }
  return {
    data,
    tables: [
      {
        title: 'idle agent memory (VmRSS from /proc/<pid>/status)',
        headers: ['agent', 'RSS median', 'range', 'peak (VmHWM)'],
        rows,
        notes: [`${samples} samples 500 ms apart, after ${settleMs / 1000} s idle; peak includes start-up.`],
      },
    ],
  };
}
