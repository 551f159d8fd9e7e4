/**
 * What Tether assumes of the etcd it talks to, logged at start by the agent and the controller.
 *
 * Debian's etcd-server 3.4.23 has two lease anomalies that later releases fixed: a deposed leader
 * can revoke a lease early after a leader change (etcd #15247; fix #16822, 3.4 backport #17465), and
 * a keepalive can succeed for a lease that was already revoked (#14758; fix #20590). Tether does not
 * trust the version to tell: its mitigations are always on (the host counts a keepalive only when a
 * linearizable read shows its `alive` key still on its lease; the controller extends the fence window
 * of a lease that vanished near a raft term change). This only says which anomalies the version is
 * known to have.
 */

/** Parsed `major.minor.patch`, or undefined when the text is not a version. */
export function parseEtcdVersion(v: string): readonly [number, number, number] | undefined {
  const m = /^v?(\d+)\.(\d+)\.(\d+)/.exec(v.trim());
  return m ? [Number(m[1]), Number(m[2]), Number(m[3])] : undefined;
}

/** A one-line statement of what is assumed for etcd `version` (as reported by its status call). */
export function describeEtcdAssumptions(version: string): string {
  const v = parseEtcdVersion(version);
  const known34 = v !== undefined && v[0] === 3 && v[1] <= 4;
  return (
    `etcd ${version}: ${known34 ? 'known to revoke leases early after a leader change (#15247) and to renew revoked leases (#14758)' : 'lease anomalies of 3.4 (#15247, #14758) may or may not be fixed in this build'}; ` +
    'mitigations always on: a keepalive counts only when a linearizable read finds the alive key on its lease, and the controller extends the fence window of a lease lost within a TTL of a raft term change'
  );
}
