/**
 * The etcd model (see model.ts): an etcd 3.4 cluster as a deterministic state machine, its `Kv`
 * clients and their transports.
 */
export { EtcdModel, type EtcdModelOptions, type ModelLease, type ModelMember, type NoQuorumMode } from './model.js';
export { ModelKv, NoQuorumSignal } from './client.js';
export { ControlledTransport, immediateTransport, type DeliveryMode, type ModelTransport } from './transport.js';
export { ETCD_34_LIMITS, type EtcdLimits } from './txn-checks.js';
