import { LocalEtcdCluster } from '../../src/dev/etcd-cluster.js';
import { progress } from './progress.js';
import type { BenchResources } from './resources.js';
import type { Table } from './table.js';

/** What every scenario gets. */
export interface BenchContext {
  readonly res: BenchResources;
  /** Smoke run: fewer repetitions, smaller N. */
  readonly quick: boolean;
  /** N values of the gc scenario. */
  readonly gcSizes: readonly number[];
  /** Size of the `fleet` scenario (`--hosts`, `--vms-per-host`); its defaults when absent. */
  readonly fleet?: { readonly hosts?: number; readonly vmsPerHost?: number };
  /** The run's 3-member loopback etcd cluster, started on first use and stopped by the cleanup. */
  etcd(): Promise<LocalEtcdCluster>;
  /** Notes what QEMU accelerator the VMs ran with (read from a QEMU command line). */
  sawAccel(accel: string | undefined): void;
}

/** What a scenario hands back: JSON-able data and the tables to print. */
export interface ScenarioResult {
  readonly data: Record<string, unknown>;
  readonly tables: readonly Table[];
  /** Parts that failed while the rest was measured (the run then exits non-zero). */
  readonly failures?: readonly string[];
}

/** A lazily started etcd cluster registered with the cleanup. */
export function lazyEtcd(res: BenchResources): () => Promise<LocalEtcdCluster> {
  let started: Promise<LocalEtcdCluster> | undefined;
  return () => {
    started ??= (async () => {
      const cluster = new LocalEtcdCluster({ tag: 'bench' });
      res.watchMark(cluster.mark);
      res.onCleanup(`etcd ${cluster.clusterId}`, () => cluster.stop());
      progress(`starting a 3-member etcd cluster (${cluster.clusterId}) on loopback`);
      const t0 = performance.now();
      await cluster.start();
      progress(`etcd healthy in ${Math.round(performance.now() - t0)} ms: ${cluster.endpoints().join(', ')}`);
      return cluster;
    })();
    return started;
  };
}
