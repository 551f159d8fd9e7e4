import { existsSync, rmSync } from 'node:fs';
import { expect } from 'vitest';
import { findProcessesByMark } from '../../src/dev/child-guard.js';
import type { LocalEtcdCluster } from '../../src/dev/etcd-cluster.js';

/**
 * Stops a test's etcd cluster and checks the cleanup: no process carries its mark and its data dir
 * is gone. A cluster that never started (`undefined`): its data dir is removed.
 */
export async function stopTestEtcd(cluster: LocalEtcdCluster | undefined, dataDir: string): Promise<void> {
  if (!cluster) {
    rmSync(dataDir, { recursive: true, force: true });
    return;
  }
  await cluster.stop();
  expect(findProcessesByMark(cluster.mark)).toEqual([]);
  expect(existsSync(dataDir)).toBe(false);
}
