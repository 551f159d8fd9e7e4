import { describe, expect, expectTypeOf, it } from 'vitest';
import {
  InvalidRecordError,
  KEY_FIELD,
  RECORD_LIMITS,
  VALUE_FIELD,
  decodeAliveValue,
  decodeClusterEvent,
  decodeClusterVm,
  decodeControllerStatus,
  decodeHostRecord,
  decodeLeaderInfo,
  encodeClusterVm,
  encodeHostRecord,
  hostRecordKey,
  parseKey,
  vmRecordKey,
  type ControllerStatusValue,
  type Decoded,
  type LeaderInfoValue,
  type RawValue,
} from '../../src/domain/codec.js';
import { InvalidRecordLog } from '../../src/domain/codec/invalid-record-log.js';
import { toRecordText } from '../../src/domain/codec/names.js';
import type { ClusterEvent } from '../../src/domain/cluster-event.js';
import type { ClusterVmRecord } from '../../src/domain/cluster-vm.js';
import { DEFAULT_TIMINGS } from '../../src/domain/gc-timing.js';
import type { HostRecord } from '../../src/domain/host-record.js';
import type { ControllerStatus, LeaderInfo } from '../../src/ports/controller-store.js';
import { sampleSpec } from '../support/host-harness.js';

/**
 * The record codec against a table of malformed and hostile records, for every record kind: each
 * must be refused with INVALID_RECORD naming the key and the offending field, and never throw.
 */

const UID = '0123456789abcdef0123456789abcdef';
const HOST: HostRecord = {
  hostId: 'h1',
  state: 'attached',
  epoch: 3,
  timings: DEFAULT_TIMINGS,
  hold: false,
  holdSeen: false,
  capacity: { vcpu: 4, memoryMb: 2048 },
  labels: { zone: 'a' },
  agentVersion: '0.1.0',
  updatedAt: 1_700_000_000_000,
};
const VM: ClusterVmRecord = { uid: UID, spec: sampleSpec('web', 'ns'), hostId: 'h1', hostEpoch: 3, phase: 'running', generation: 4, updatedAt: 1_700_000_000_000 };
const ALIVE = { epoch: 3, agentVersion: '0.1.0', agentId: '9b2f6a8e-1111-4c4c-8888-0123456789ab', holder: 'tether agent pid 42 on m1, state dir /var/lib/tether' };
const EVENT: ClusterEvent = { kind: 'host-fenced', hostId: 'h1', epoch: 3, by: 'controller', lostVms: ['ns/web'], at: 1_700_000_000_000, detail: 'host h1 fenced' };
const STATUS: ControllerStatus = {
  controllerId: 'ctl-1',
  leaderSince: 1_700_000_000_000,
  at: 1_700_000_001_000,
  freeze: { mode: 'normal', detached: 0, total: 2, limit: 0.55 },
  hosts: [{ hostId: 'h1', fenceAt: 1_700_000_010_000 }],
};
const LEADER: LeaderInfo = { candidateId: 'ctl-1', since: 1_700_000_000_000 };

const KEYS = { host: 'hosts/h1/record', alive: 'hosts/h1/alive', vm: 'vms/ns/web', event: 'events/001700000000000-0a1b2c3d', status: 'controller/status', leader: 'controller/leader' } as const;
type Kind = keyof typeof KEYS;
const DECODE: Record<Kind, (key: string, raw: RawValue) => Decoded<unknown>> = {
  host: decodeHostRecord,
  alive: decodeAliveValue,
  vm: decodeClusterVm,
  event: decodeClusterEvent,
  status: decodeControllerStatus,
  leader: decodeLeaderInfo,
};
const VALID: Record<Kind, unknown> = { host: HOST, alive: ALIVE, vm: VM, event: EVENT, status: STATUS, leader: LEADER };

/** A deep copy of `v` with `path` set to `value` (`undefined`: the field removed). */
function withField(v: unknown, path: (string | number)[], value: unknown): unknown {
  const copy = JSON.parse(JSON.stringify(v)) as Record<string | number, unknown>;
  let o = copy;
  for (const p of path.slice(0, -1)) o = o[p] as Record<string | number, unknown>;
  const last = path[path.length - 1]!;
  if (value === undefined) delete o[last];
  else o[last] = value;
  return copy;
}

interface Case {
  readonly name: string;
  readonly kind: Kind;
  readonly key?: string;
  /** A value (JSON-encoded) or raw text/bytes. */
  readonly value?: unknown;
  readonly raw?: RawValue;
  /** The field the error must name. */
  readonly field: string;
}

const MiB2 = 'x'.repeat(2 * 1024 * 1024);
const HOSTILE_NAMES: [string, unknown][] = [
  ['empty', ''],
  ['dot', '.'],
  ['dot-dot', '..'],
  ['slash', 'a/b'],
  ['parent path', '../../etc'],
  ['NUL', 'a\u0000b'],
  ['newline', 'a\nb'],
  ['absurdly long', 'a'.repeat(100_000)],
  ['number', 42],
  ['null', null],
];
const NUMBERS: [string, unknown][] = [
  ['huge', 1e308],
  ['negative', -1],
  ['string', '3'],
  ['NaN-like string', 'NaN'],
  ['null', null],
  ['object', { $gt: 0 }],
];

const cases: Case[] = [];
// Whole-value problems, for every kind.
for (const kind of Object.keys(KEYS) as Kind[]) {
  cases.push(
    { name: 'bad JSON', kind, raw: '{"uid": ', field: VALUE_FIELD },
    { name: 'empty value', kind, raw: '', field: VALUE_FIELD },
    { name: 'null', kind, raw: 'null', field: VALUE_FIELD },
    { name: 'array', kind, raw: '[]', field: VALUE_FIELD },
    { name: 'string', kind, raw: '"hello"', field: VALUE_FIELD },
    { name: 'number', kind, raw: '42', field: VALUE_FIELD },
    { name: 'empty object', kind, raw: '{}', field: kind === 'event' ? 'kind' : expect.any(String) as unknown as string },
    { name: '2 MiB value (string)', kind, raw: JSON.stringify({ ...(VALID[kind] as object), pad: MiB2 }), field: VALUE_FIELD },
    { name: '2 MiB value (bytes)', kind, raw: new TextEncoder().encode(JSON.stringify({ ...(VALID[kind] as object), pad: MiB2 })), field: VALUE_FIELD },
    { name: 'invalid UTF-8', kind, raw: new Uint8Array([0x7b, 0xff, 0xfe, 0x7d]), field: VALUE_FIELD },
    { name: 'unknown field', kind, value: { ...(VALID[kind] as object), sneaky: true }, field: 'sneaky' },
    { name: '__proto__ field', kind, raw: JSON.stringify(VALID[kind]).replace(/^\{/, '{"__proto__":{"hold":true},'), field: '__proto__' },
  );
}
// Keys.
const badKeys: [Kind, string][] = [
  ['host', 'hosts/../record'],
  ['host', 'hosts/./record'],
  ['host', 'hosts//record'],
  ['host', 'hosts/a/b/record'],
  ['host', 'hosts/h\u00001/record'],
  ['host', `hosts/${'h'.repeat(64)}/record`],
  ['host', 'hosts/h1/alive'],
  ['alive', 'hosts/../alive'],
  ['vm', 'vms/../web'],
  ['vm', 'vms/ns/..'],
  ['vm', 'vms/ns/a/b'],
  ['vm', 'vms/ns/'],
  ['vm', 'vms//web'],
  ['vm', 'vms/NS/web'],
  ['vm', 'vms/ns/we\u0000b'],
  ['vm', `vms/ns/${'w'.repeat(64)}`],
  ['event', 'events/../x'],
  ['event', 'events/1-2'],
  ['status', 'controller/status/x'],
  ['leader', 'controller/leaders'],
];
for (const [kind, key] of badKeys) cases.push({ name: `bad key ${JSON.stringify(key)}`, kind, key, value: VALID[kind], field: KEY_FIELD });
// Key and value disagree.
cases.push(
  { name: 'host record of another host', kind: 'host', key: 'hosts/h2/record', value: HOST, field: 'hostId' },
  { name: 'VM record of another namespace', kind: 'vm', key: 'vms/other/web', value: VM, field: 'spec.id.namespace' },
  { name: 'VM record of another name', kind: 'vm', key: 'vms/ns/db', value: VM, field: 'spec.id.name' },
);
// Every name / uid / namespace / host id, with every hostile value.
const nameFields: [Kind, (string | number)[]][] = [
  ['host', ['hostId']],
  ['alive', ['agentId']],
  ['vm', ['uid']],
  ['vm', ['hostId']],
  ['vm', ['spec', 'id', 'namespace']],
  ['vm', ['spec', 'id', 'name']],
  ['vm', ['spec', 'volumes', 0, 'id']],
  ['vm', ['spec', 'interfaces', 0, 'guestDeviceName']],
  ['event', ['hostId']],
  ['status', ['hosts', 0, 'hostId']],
];
const hasControl = (s: string) => [...s].some((c) => c.charCodeAt(0) < 0x20 || c.charCodeAt(0) === 0x7f);
const fieldName = (path: (string | number)[]) => path.map((p, i) => (typeof p === 'number' ? `[${p}]` : `${i ? '.' : ''}${p}`)).join('');
for (const [kind, path] of nameFields) {
  for (const [what, v] of HOSTILE_NAMES) cases.push({ name: `${fieldName(path)} ${what}`, kind, value: withField(VALID[kind], path, v), field: fieldName(path) });
}
cases.push(
  { name: 'uid inventory.db', kind: 'vm', value: { ...VM, uid: 'inventory.db' }, field: 'uid' },
  { name: 'image with ..', kind: 'vm', value: withField(VM, ['spec', 'volumes', 1, 'image'], '../../etc/passwd'), field: 'spec.volumes[1].image' },
  { name: 'image absolute', kind: 'vm', value: withField(VM, ['spec', 'kernelImage'], '/etc/passwd'), field: 'spec.kernelImage' },
  { name: 'additional volume without image', kind: 'vm', value: withField(VM, ['spec', 'volumes', 1, 'image'], ''), field: 'spec.volumes[1].image' },
  { name: 'duplicate volume id', kind: 'vm', value: withField(VM, ['spec', 'volumes', 1, 'id'], 'root'), field: 'spec.volumes[1].id' },
  { name: 'kernel cmdline injection', kind: 'vm', value: withField(VM, ['spec', 'kernelCmdline'], { quiet: 'x init=/bin/sh' }), field: 'spec.kernelCmdline.quiet' },
  { name: 'multicast MAC', kind: 'vm', value: withField(VM, ['spec', 'interfaces', 0, 'guestMac'], '01:00:5e:00:00:01'), field: 'spec.interfaces[0].guestMac' },
  { name: 'address not IPv4', kind: 'vm', value: withField(VM, ['spec', 'interfaces', 0, 'address'], '10.0.0.300/24'), field: 'spec.interfaces[0].address' },
  { name: 'too many volumes', kind: 'vm', value: withField(VM, ['spec', 'volumes'], Array.from({ length: 40 }, (_, i) => ({ id: `v${i}`, image: 'data', readOnly: false, isRoot: false }))), field: 'spec.volumes' },
  { name: 'label value of 100 KiB', kind: 'vm', value: withField(VM, ['spec', 'labels'], { big: 'x'.repeat(100 * 1024) }), field: 'spec.labels.big' },
  { name: 'empty label key', kind: 'host', value: withField(HOST, ['labels'], { '': 'x' }), field: 'labels[""]' },
  { name: 'phase unknown', kind: 'vm', value: { ...VM, phase: 'zombie' }, field: 'phase' },
  { name: 'state unknown', kind: 'host', value: { ...HOST, state: 'owned' }, field: 'state' },
  { name: 'hold is a string', kind: 'host', value: { ...HOST, hold: 'false' }, field: 'hold' },
  { name: 'holdSeen is a number', kind: 'host', value: { ...HOST, holdSeen: 1 }, field: 'holdSeen' },
  { name: 'missing timings', kind: 'host', value: withField(HOST, ['timings'], undefined), field: 'timings' },
  { name: 'missing spec', kind: 'vm', value: withField(VM, ['spec'], undefined), field: 'spec' },
  { name: 'missing uid', kind: 'vm', value: withField(VM, ['uid'], undefined), field: 'uid' },
  { name: 'unknown field deep inside', kind: 'vm', value: withField(VM, ['spec', 'volumes', 0, 'path'], '/etc/shadow'), field: 'spec.volumes[0].path' },
  { name: 'unknown timing', kind: 'host', value: withField(HOST, ['timings', 'extra'], 1), field: 'timings.extra' },
  { name: 'reason of 1 MiB', kind: 'vm', value: { ...VM, reason: 'r'.repeat(1024 * 1023) }, field: 'reason' },
  { name: 'reason with an escape sequence', kind: 'vm', value: { ...VM, reason: 'fine\u001b[2J' }, field: 'reason' },
  { name: 'reason with a carriage return', kind: 'vm', value: { ...VM, reason: 'fine\rforged' }, field: 'reason' },
  { name: 'controller id with a newline', kind: 'leader', value: { ...LEADER, candidateId: 'a\nb' }, field: 'candidateId' },
  { name: 'agentVersion with NUL', kind: 'alive', value: { ...ALIVE, agentVersion: 'v\u0000' }, field: 'agentVersion' },
  { name: 'unknown event kind', kind: 'event', value: { ...EVENT, kind: 'host-pwned' }, field: 'kind' },
  { name: 'lost VM key with ..', kind: 'event', value: { ...EVENT, lostVms: ['../etc'] }, field: 'lostVms[0]' },
  { name: 'lostVms not a list', kind: 'event', value: { ...EVENT, lostVms: 'ns/web' }, field: 'lostVms' },
  { name: 'freeze limit above 1', kind: 'status', value: withField(STATUS, ['freeze', 'limit'], 55), field: 'freeze.limit' },
  { name: 'too many status hosts', kind: 'status', value: { ...STATUS, hosts: Array.from({ length: 100_001 }, () => ({ hostId: 'h' })) }, field: expect.any(String) as unknown as string },
);
// Numbers: finite, bounded, of the right type.
const numberFields: [Kind, (string | number)[]][] = [
  ['host', ['epoch']],
  ['host', ['timings', 'ttl']],
  ['host', ['capacity', 'memoryMb']],
  ['host', ['updatedAt']],
  ['alive', ['epoch']],
  ['vm', ['generation']],
  ['vm', ['hostEpoch']],
  ['vm', ['spec', 'vcpu']],
  ['vm', ['spec', 'memoryMb']],
  ['event', ['at']],
  ['event', ['epoch']],
  ['status', ['freeze', 'total']],
  ['leader', ['since']],
];
for (const [kind, path] of numberFields) {
  for (const [what, v] of NUMBERS) cases.push({ name: `${fieldName(path)} ${what}`, kind, value: withField(VALID[kind], path, v), field: fieldName(path) });
  // 1e999 is valid JSON that parses to Infinity.
  cases.push({ name: `${fieldName(path)} 1e999 (Infinity)`, kind, raw: JSON.stringify(withField(VALID[kind], path, 7)).replace(/:7([,}])/, ':1e999$1'), field: fieldName(path) });
}
cases.push(
  { name: 'epoch not an integer', kind: 'host', value: { ...HOST, epoch: 1.5 }, field: 'epoch' },
  { name: 'epoch above 2^53', kind: 'host', value: { ...HOST, epoch: 2 ** 60 }, field: 'epoch' },
  { name: 'vcpu 0', kind: 'vm', value: withField(VM, ['spec', 'vcpu'], 0), field: 'spec.vcpu' },
  { name: 'memory 1 TiB', kind: 'vm', value: withField(VM, ['spec', 'memoryMb'], 1024 * 1024), field: 'spec.memoryMb' },
);

describe('record codec: valid records', () => {
  it('decodes every valid record kind to an equal, fresh value', () => {
    for (const kind of Object.keys(KEYS) as Kind[]) {
      const raw = JSON.stringify(VALID[kind]);
      const d = DECODE[kind](KEYS[kind], raw);
      expect(d, kind).toEqual({ ok: true, value: VALID[kind] });
      if (d.ok) expect(d.value).not.toBe(VALID[kind]);
      const bytes = DECODE[kind](KEYS[kind], new TextEncoder().encode(raw));
      expect(bytes.ok, `${kind} from bytes`).toBe(true);
    }
  });

  it('accepts records as the rest of Tether writes them (no optional fields, a placed VM without a host, every event kind)', () => {
    const { holdSeen: _s, ...bare } = HOST;
    expect(decodeHostRecord('hosts/h1/record', JSON.stringify(bare)).ok).toBe(true);
    const pending: ClusterVmRecord = { uid: UID, spec: sampleSpec('web', 'ns'), phase: 'pending', generation: 1, reason: 'no schedulable host' };
    expect(decodeClusterVm('vms/ns/web', JSON.stringify(pending)).ok).toBe(true);
    const events: ClusterEvent[] = [
      { kind: 'controller-elected', controllerId: 'c', at: 1, detail: 'd' },
      { kind: 'host-detached', hostId: 'h1', epoch: 1, fenceDeadline: 5, heldAtDetach: false, at: 1, detail: 'd' },
      { kind: 'fence-deadline-extended', hostId: 'h1', epoch: 1, from: null, to: 9, at: 1, detail: 'd' },
      { kind: 'host-fence-blocked', hostId: 'h1', epoch: 1, blockers: ['held', 'unsafe-timings'], at: 1, detail: 'd' },
      { kind: 'freeze-entered', detached: 3, total: 5, limit: 0.55, at: 1, detail: 'd' },
      { kind: 'freeze-resumed', at: 1, detail: 'd' },
      { kind: 'vm-rescheduled', vm: 'ns/web', fromHost: null, toHost: 'h2', uid: UID, at: 1, detail: 'd' },
      { kind: 'vm-lost-kept', vm: 'ns/web', hostId: null, at: 1, detail: 'd' },
    ];
    for (const e of events) expect(decodeClusterEvent(KEYS.event, JSON.stringify(e)), e.kind).toMatchObject({ ok: true });
    // The memory store's event keys (decimal counter) are event keys too.
    expect(parseKey('events/001700000000000-00000012')).toEqual({ kind: 'event', id: '001700000000000-00000012' });
  });

  it('accepts the uids the rest of the code uses (32 hex, and test-style ids), and 1 MiB exactly', () => {
    for (const uid of [UID, 'uid-1', 'orig-web', 'u']) expect(decodeClusterVm(KEYS.vm, JSON.stringify({ ...VM, uid })).ok, uid).toBe(true);
    const pad = 'p'.repeat(RECORD_LIMITS.maxRecordBytes - JSON.stringify({ ...HOST, labels: { pad: '' } }).length);
    const exact = JSON.stringify({ ...HOST, labels: { pad: pad.slice(0, 65536) } });
    expect(decodeHostRecord(KEYS.host, exact).ok).toBe(true);
  });
});

describe('record codec: malformed and hostile records are refused with a named field', () => {
  it.each(cases.map((c) => [`${c.kind}: ${c.name}`, c] as const))('%s', (_n, c) => {
    const raw = c.raw ?? JSON.stringify(c.value);
    const key = c.key ?? KEYS[c.kind];
    let d: Decoded<unknown> | undefined;
    expect(() => (d = DECODE[c.kind](key, raw))).not.toThrow();
    expect(d!.ok).toBe(false);
    if (d!.ok) return;
    const err = d!.error;
    expect(err).toBeInstanceOf(InvalidRecordError);
    expect(err.code).toBe('INVALID_RECORD');
    expect(err.retryable).toBe(false);
    expect(err.field).toEqual(c.field);
    expect(err.details).toMatchObject({ key: err.key, field: err.field });
    // The message names the key and the field, and stays one bounded line whatever the input.
    expect(err.message.startsWith(`${err.key}: ${err.field}: `)).toBe(true);
    expect(hasControl(err.message)).toBe(false);
    expect(err.message.length).toBeLessThan(2000);
  });

  it('says what was expected and what came, e.g. hosts/h1/record: timings.ttl: expected number, received string', () => {
    const d = decodeHostRecord('hosts/h1/record', JSON.stringify(withField(HOST, ['timings', 'ttl'], '6s')));
    expect(d.ok).toBe(false);
    if (!d.ok) expect(d.error.message).toBe('hosts/h1/record: timings.ttl: expected number, received string');
  });

  it('lists every problem, and the message names the first', () => {
    const d = decodeClusterVm(KEYS.vm, JSON.stringify({ ...VM, uid: '../x', phase: 'zombie', extra: 1 }));
    expect(d.ok).toBe(false);
    if (!d.ok) {
      expect(d.error.problems.length).toBeGreaterThanOrEqual(3);
      expect(d.error.problems.join('\n')).toMatch(/uid: [\s\S]*phase: [\s\S]*extra: unknown field/);
    }
  });

  it('quotes a hostile key in the error (control characters escaped, length bounded)', () => {
    const d = decodeClusterVm(`vms/ns/${'\u001b[31m'.repeat(1000)}`, JSON.stringify(VM));
    expect(d.ok).toBe(false);
    if (!d.ok) {
      expect(hasControl(d.error.key)).toBe(false);
      expect(d.error.key.length).toBeLessThan(300);
    }
  });
});

describe('record codec: encode goes through the same schema', () => {
  it('encodes what decode accepts, and round-trips', () => {
    const json = encodeClusterVm(KEYS.vm, VM);
    expect(decodeClusterVm(KEYS.vm, json)).toEqual({ ok: true, value: VM });
    expect(encodeHostRecord(KEYS.host, HOST)).toBe(JSON.stringify(HOST));
  });

  it('refuses to encode what decode would refuse (Tether never writes a record it cannot read)', () => {
    expect(() => encodeClusterVm(KEYS.vm, { ...VM, uid: 'inventory.db' })).toThrow(InvalidRecordError);
    expect(() => encodeClusterVm('vms/../web', VM)).toThrow(/\(key\)/);
    expect(() => encodeHostRecord(KEYS.host, { ...HOST, epoch: Number.NaN })).toThrow(/epoch/);
    expect(() => encodeHostRecord(KEYS.host, { ...HOST, extra: 1 } as HostRecord)).toThrow(/extra: unknown field/);
  });

  it('toRecordText makes any error message a readable reason (controls replaced, bounded)', () => {
    const msg = `qemu: failed\r\n\u001b[31mboom\u0000 ${'x'.repeat(20_000)}`;
    const reason = toRecordText(msg);
    expect(reason.length).toBeLessThanOrEqual(RECORD_LIMITS.maxTextLength);
    expect(decodeClusterVm(KEYS.vm, JSON.stringify({ ...VM, phase: 'failed', reason })).ok).toBe(true);
    expect(toRecordText('two\nlines\tok')).toBe('two\nlines\tok');
  });

  it('builds keys only from valid ids', () => {
    expect(hostRecordKey('h1')).toBe('hosts/h1/record');
    expect(vmRecordKey('ns/web')).toBe('vms/ns/web');
    for (const bad of ['..', 'a/b', '', 'h\u0000']) expect(() => hostRecordKey(bad)).toThrow(InvalidRecordError);
    for (const bad of ['../web', 'ns/..', 'ns/a/b', 'ns']) expect(() => vmRecordKey(bad)).toThrow(InvalidRecordError);
  });
});

describe('InvalidRecordLog: once per record revision', () => {
  const bad = (key: string) => {
    const d = decodeClusterVm(key, '{');
    if (d.ok) throw new Error('expected a refusal');
    return d.error;
  };

  it('reports a (key, revision) once, again when the revision changes or after the key was cleared', () => {
    const log = new InvalidRecordLog();
    const seen: string[] = [];
    log.subscribe((r) => seen.push(`${r.key}@${r.revision}`));
    expect(log.report(bad(KEYS.vm), '10')).toBe(true);
    for (let i = 0; i < 100; i++) expect(log.report(bad(KEYS.vm), '10')).toBe(false);
    expect(log.report(bad(KEYS.vm), '11')).toBe(true);
    log.clear(KEYS.vm);
    expect(log.isBad(KEYS.vm)).toBe(false);
    expect(log.report(bad(KEYS.vm), '11')).toBe(true);
    expect(seen).toEqual(['vms/ns/web@10', 'vms/ns/web@11', 'vms/ns/web@11']);
    expect(log.total).toBe(3);
  });

  it('stays bounded under a flood of distinct bad keys, and a throwing listener hides nothing', () => {
    const log = new InvalidRecordLog(100);
    let n = 0;
    log.subscribe(() => {
      throw new Error('broken listener');
    });
    log.subscribe(() => n++);
    for (let i = 0; i < 1000; i++) log.report(bad(`vms/ns/v${i}`), '1');
    expect(log.badKeys).toBe(100);
    expect(n).toBe(1000);
  });
});

describe('record codec: decoded types are the store types', () => {
  it('controller status and leader values', () => {
    expectTypeOf<ControllerStatusValue>().toMatchTypeOf<ControllerStatus>();
    expectTypeOf<LeaderInfoValue>().toMatchTypeOf<LeaderInfo>();
    expectTypeOf<keyof ControllerStatus>().toEqualTypeOf<keyof ControllerStatusValue>();
    expectTypeOf<keyof LeaderInfo>().toEqualTypeOf<keyof LeaderInfoValue>();
  });
});
