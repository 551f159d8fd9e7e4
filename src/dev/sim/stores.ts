/**
 * The real stores the simulator runs: `KvClusterStore` and `KvControllerStore` (src/adapters/kv),
 * the same code production runs over real etcd, here over the etcd model's `Kv` clients.
 */
import { KvClusterStore } from '../../adapters/kv/kv-cluster-store.js';
import { KvControllerStore } from '../../adapters/kv/kv-controller-store.js';
import type { SimStores } from './world.js';

/** The key prefix of the simulated cluster. */
export const SIM_PREFIX = '/tether/';

/** Production's stores over the model. */
export const kvStores: SimStores = {
  prefix: SIM_PREFIX,
  cluster: (kv, clock) => new KvClusterStore(kv, { prefix: SIM_PREFIX, clock }),
  controller: (kv, clock, ids, txnLimits) => new KvControllerStore(kv, { prefix: SIM_PREFIX, clock, idSource: ids, ...(txnLimits ? { txnLimits } : {}) }),
};
