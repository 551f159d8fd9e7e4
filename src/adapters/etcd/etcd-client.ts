import { noop } from 'cockatiel';
import { Etcd3 } from 'etcd3';
import { TetherError } from '../../domain/errors.js';

/**
 * An etcd3 client with etcd3's own retry and circuit-breaker policies switched off: Tether owns
 * every deadline and every retry. (With the defaults, one missed deadline is retried at once and
 * opens the host's circuit breaker for 5 s — every call then fails fast even after the network is
 * back; measured in test/integration/tcp-proxy.test.ts.)
 */
export function createEtcdClient(endpoints: readonly string[]): Etcd3 {
  if (endpoints.length === 0) throw new TetherError('INVALID_ARGUMENT', 'no etcd endpoints given (--etcd-endpoints)');
  return new Etcd3({ hosts: [...endpoints], dialTimeout: 1000, faultHandling: { host: () => noop, global: noop } });
}
