import { randomBytes } from 'node:crypto';
import type { Etcd3 } from 'etcd3';
import type { TxnLimits } from '../../domain/cluster-change.js';
import { Keyspace } from '../../domain/keyspace.js';
import { SystemClock } from '../clock/system-clock.js';
import { KvControllerStore } from '../kv/kv-controller-store.js';
import type { EtcdStoreOptions } from './etcd-cluster-store.js';
import { EtcdKv } from './etcd-kv.js';

/** Keys of the controller's part of the keyspace (the domain's {@link Keyspace}; this name is kept for older importers). */
export const ControllerKeys = Keyspace;
/** @see {@link Keyspace} */
export type ControllerKeys = Keyspace;

/** Options of {@link EtcdControllerStore}. */
export interface EtcdControllerStoreOptions extends EtcdStoreOptions {
  /**
   * The etcd servers' txn limits (`--max-txn-ops`, request bytes). Default `DEFAULT_TXN_LIMITS`
   * (etcd 3.4's defaults); set it when the servers run with other values.
   */
  readonly txnLimits?: TxnLimits;
}

/** 8 random hex digits: the random part of an event key. */
export function randomEventId(): string {
  return randomBytes(4).toString('hex');
}

/**
 * {@link ControllerStore} on etcd (npm etcd3 against etcd 3.4): the store written once over the
 * `Kv` port ({@link KvControllerStore}) on {@link EtcdKv}, with the system clock and random event
 * key suffixes.
 *
 * Like `EtcdClusterStore`, etcd3's retry and circuit-breaker policies are off: every call is
 * bounded by its own deadline, and a miss is a retryable error for the caller to handle.
 */
export class EtcdControllerStore extends KvControllerStore {
  constructor(opts: EtcdControllerStoreOptions) {
    super(new EtcdKv(opts), {
      clock: new SystemClock(),
      idSource: randomEventId,
      ...(opts.prefix !== undefined ? { prefix: opts.prefix } : {}),
      ...(opts.txnLimits !== undefined ? { txnLimits: opts.txnLimits } : {}),
    });
  }

  /** The underlying etcd3 client (tests write directly through it). */
  get client(): Etcd3 {
    return (this.kv as EtcdKv).client;
  }
}
