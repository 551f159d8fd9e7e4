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

/**
 * A one-line statement of what is assumed for etcd `version` (as reported by its status call;
 * undefined when it could not be read). The mitigations are on whatever it says: the exact releases
 * that carry the fixes are not relied on.
 */
export function describeEtcdAssumptions(version: string | undefined): string {
  const v = version === undefined ? undefined : parseEtcdVersion(version);
  const known = v === undefined ? 'version unknown: assuming the 3.4 lease anomalies (#15247 early revoke after a leader change, #14758 renew after revoke) are possible'
    : v[0] === 3 && v[1] <= 4 ? 'known to revoke leases early after a leader change (#15247) and to renew revoked leases (#14758)'
    : 'the 3.4 lease anomalies (#15247, #14758) may or may not be fixed in this build';
  return (
    `etcd ${version ?? '(unknown)'}: ${known}; ` +
    'mitigations always on: a keepalive counts only when a linearizable read finds the alive key on its lease, and a lease lost within one TTL of a raft term change gets the TTL on top of its fence window'
  );
}
