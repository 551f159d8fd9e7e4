import type { Command } from 'commander';
import { SystemClock } from '../../adapters/clock/system-clock.js';
import { reindexHostVms, type ReindexResult } from '../../adapters/kv/host-vm-index.js';
import { TetherError } from '../../domain/errors.js';
import { addEtcdSecurityOptions } from '../etcd-options.js';
import { printJson } from '../output.js';
import { withStore, type StoreFlags } from './host.js';

/** Deadline of each read page and txn of `tether admin reindex` (a whole pass may take longer). */
const REINDEX_DEADLINE_MS = 60_000;

/**
 * `tether admin reindex`: builds the per-host VM index (`hostvms/<hostId>/<ns>/<name>`) from the
 * `vms/` records, for a cluster written by a Tether without it (run once after upgrading, before or
 * after the agents: an agent never deletes a local VM whose record exists on its host but is missing
 * from the index). Idempotent, safe beside running agents and controllers; exits 1 when the cluster
 * kept changing under {@link REINDEX_PASSES} passes (run it again).
 */
export function registerAdminCommands(program: Command): void {
  const admin = program.command('admin').description('cluster maintenance');
  addEtcdSecurityOptions(
    admin
      .command('reindex')
      .description('build the per-host VM index (hostvms/) from the VM records (vms/): once after an upgrade; idempotent')
      .option('--etcd-endpoints <urls>', 'etcd client URLs, comma-separated (or TETHER_ETCD_ENDPOINTS)')
      .option('--etcd-prefix <prefix>', 'key prefix in etcd (or TETHER_ETCD_PREFIX)')
      .option('--json', 'print the result as JSON'),
  ).action(async (o: StoreFlags) => {
    const res: ReindexResult = await withStore(o, (s) =>
      reindexHostVms({ kv: s.kv, keys: s.keys, invalidRecords: s.invalidRecords, clock: new SystemClock() }, s.txnLimits, REINDEX_DEADLINE_MS),
    );
    if (o.json) printJson(res);
    else {
      process.stdout.write(
        `index ${res.complete ? 'complete' : 'NOT complete'} after ${res.passes} pass(es): ${res.copies} cop${res.copies === 1 ? 'y' : 'ies'} written, ${res.orphans} orphan entr${res.orphans === 1 ? 'y' : 'ies'} removed, ${res.conflicts} txn(s) raced a writer, ${res.unreadable} unreadable record(s) left alone\n`,
      );
    }
    if (!res.complete) throw new TetherError('UNAVAILABLE', 'the VM records kept changing during the reindex: run it again', { retryable: true });
  });
}
