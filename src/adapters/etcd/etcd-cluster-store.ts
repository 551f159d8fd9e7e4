import type { Etcd3 } from 'etcd3';
import { Keyspace } from '../../domain/keyspace.js';
import { SystemClock } from '../clock/system-clock.js';
import { KvClusterStore } from '../kv/kv-cluster-store.js';
import type { EtcdSecurity } from './etcd-client.js';
import { EtcdKv } from './etcd-kv.js';

/** Options of {@link EtcdClusterStore}. */
export interface EtcdStoreOptions {
  readonly endpoints: readonly string[];
  /** Key prefix, default `/tether/`. */
  readonly prefix?: string;
  /** TLS files and etcd user/password (see {@link EtcdSecurity}); files are read at construction. */
  readonly security?: EtcdSecurity;
}

/** Keys of the Tether keyspace under a prefix (the domain's {@link Keyspace}; this name is kept for older importers). */
export const Keys = Keyspace;
/** @see {@link Keyspace} */
export type Keys = Keyspace;

/**
 * {@link ClusterStore} on etcd (npm etcd3 against etcd 3.4): the store written once over the `Kv`
 * port ({@link KvClusterStore}) on {@link EtcdKv}, with the system clock.
 *
 * etcd3's own retry and circuit-breaker policies are switched off: Tether owns every deadline and
 * every retry, so a call's outcome is known by its deadline and nothing retries behind our back.
 */
export class EtcdClusterStore extends KvClusterStore {
  constructor(opts: EtcdStoreOptions) {
    super(new EtcdKv(opts), { clock: new SystemClock(), ...(opts.prefix !== undefined ? { prefix: opts.prefix } : {}) });
  }

  /** The underlying etcd3 client (tests write hostile values through it directly). */
  get client(): Etcd3 {
    return (this.kv as EtcdKv).client;
  }
}
