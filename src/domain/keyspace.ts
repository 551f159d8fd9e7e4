/**
 * Tether's etcd keyspace under a prefix (ARCHITECTURE.md section 2), in one place: key builders for
 * hosts (`hosts/<id>/record`, `hosts/<id>/alive`), cluster VMs (`vms/<ns>/<name>`), the per-host VM
 * index (`hostvms/<hostId>/<ns>/<name>`, a copy of each placed record), events
 * (`events/<15-digit ms>-<8 hex>`) and the controller (`controller/leader`, `controller/status`),
 * and the parsers back. Pure: the random part of an event key comes from an injected `idSource`,
 * so a simulation that seeds it is deterministic.
 *
 * Invariants: every key built starts with `prefix`; `rel(k)` is the key the codec names (relative
 * to the prefix); event keys sort lexically in time order (the ms part is zero-padded to 15 digits).
 */
import { TetherError } from './errors.js';

/** Makes the random part of an event key: 8 lowercase hex digits (the codec refuses any other). */
export type IdSource = () => string;

const EVENT_SUFFIX_RE = /^[0-9a-f]{8}$/;

/** Keys of the Tether keyspace under a prefix. */
export class Keyspace {
  /**
   * @param prefix e.g. `/tether/`: every key starts with it.
   * @param idSource the 8-hex-digit suffix of event keys; needed only by {@link event}.
   */
  constructor(
    readonly prefix: string,
    private readonly idSource?: IdSource,
  ) {}

  hostRecord(id: string): string {
    return `${this.prefix}hosts/${id}/record`;
  }
  hostAlive(id: string): string {
    return `${this.prefix}hosts/${id}/alive`;
  }
  /** Prefix of every host key. */
  hosts(): string {
    return `${this.prefix}hosts/`;
  }
  /** Prefix of one host's keys (`hosts/<id>/`). */
  host(id: string): string {
    return `${this.prefix}hosts/${id}/`;
  }
  /** Prefix of every cluster VM record. */
  vms(): string {
    return `${this.prefix}vms/`;
  }
  /** `vms/<ns>/<name>` for `key` = `<ns>/<name>`. */
  vm(key: string): string {
    return `${this.prefix}vms/${key}`;
  }
  /**
   * Prefix of every per-host VM index entry (`hostvms/`): see {@link hostVm}.
   */
  hostVmsAll(): string {
    return `${this.prefix}hostvms/`;
  }
  /**
   * Prefix of host `hostId`'s VM index (`hostvms/<hostId>/`): the only prefix an agent lists or
   * watches. Ends with `/`, so host `h1` never matches `h10`.
   */
  hostVms(hostId: string): string {
    return `${this.prefix}hostvms/${hostId}/`;
  }
  /**
   * `hostvms/<hostId>/<ns>/<name>` for `key` = `<ns>/<name>`: the per-host index entry of a VM record.
   * Invariant (kept by `changeTxn`, which writes it in the record's own txn): it exists exactly when
   * `vms/<key>` exists with `hostId` = `hostId`, and holds a byte-identical copy of that record with
   * the same `mod_revision`.
   */
  hostVm(hostId: string, key: string): string {
    return `${this.prefix}hostvms/${hostId}/${key}`;
  }
  /** `placements/<hostId>`: bumped by every capacity-guarded placement onto the host (see `ClusterChange.capacityGuards`). */
  hostPlacements(hostId: string): string {
    return `${this.prefix}placements/${hostId}`;
  }
  /** Prefix of every event. */
  events(): string {
    return `${this.prefix}events/`;
  }
  /**
   * `events/<15-digit ms>-<8 hex>`: lexical order is time order.
   * @throws TetherError INTERNAL when this keyspace has no id source or it returned no 8 hex digits.
   */
  event(at: number): string {
    if (!this.idSource) throw new TetherError('INTERNAL', 'keyspace: event keys need an id source');
    const id = this.idSource();
    if (!EVENT_SUFFIX_RE.test(id)) throw new TetherError('INTERNAL', `keyspace: event id source returned ${JSON.stringify(id)}, not 8 hex digits`);
    return `${this.prefix}events/${String(Math.max(0, Math.floor(at))).padStart(15, '0')}-${id}`;
  }
  /** The election key, on the leader's lease. */
  leader(): string {
    return `${this.prefix}controller/leader`;
  }
  /** The active controller's status document, on the leader's lease. */
  status(): string {
    return `${this.prefix}controller/status`;
  }
  /** The freeze contract (issue 11, `domain/freeze-contract.ts`): written by the leader, on no lease (it outlives any controller). */
  freezeContract(): string {
    return `${this.prefix}controller/freeze-contract`;
  }
  /**
   * The controller's host-view barrier, under `hosts/` but never a host key ({@link parseHostKey}
   * refuses it): seeing its write on the host watch proves every earlier change under `hosts/` was
   * delivered (C2 of docs/peer-check.md).
   */
  hostsBarrier(): string {
    return `${this.prefix}hosts/.controller-sync`;
  }
  /** `key` relative to the prefix, as the codec names it. */
  rel(key: string): string {
    return key.startsWith(this.prefix) ? key.slice(this.prefix.length) : key;
  }
  /** `{hostId, part}` of a key under `hosts/`, or undefined for anything else. */
  parseHostKey(key: string): { hostId: string; part: 'record' | 'alive' } | undefined {
    if (!key.startsWith(this.prefix)) return undefined;
    const m = /^hosts\/([^/]+)\/(record|alive)$/.exec(key.slice(this.prefix.length));
    return m ? { hostId: m[1]!, part: m[2] as 'record' | 'alive' } : undefined;
  }
  /** `<ns>/<name>` of a key under `vms/`, or undefined. */
  parseVmKey(key: string): string | undefined {
    return key.startsWith(this.vms()) ? key.slice(this.vms().length) : undefined;
  }
  /** `{hostId, key}` (key = `<ns>/<name>`) of a key under `hostvms/`, or undefined for anything else. */
  parseHostVmKey(key: string): { hostId: string; key: string } | undefined {
    if (!key.startsWith(this.hostVmsAll())) return undefined;
    const m = /^([^/]+)\/([^/]+\/[^/]+)$/.exec(key.slice(this.hostVmsAll().length));
    return m ? { hostId: m[1]!, key: m[2]! } : undefined;
  }
  /** `<ms>-<hex>` of a key under `events/`, or undefined. */
  parseEventKey(key: string): string | undefined {
    return key.startsWith(this.events()) ? key.slice(this.events().length) : undefined;
  }
}
