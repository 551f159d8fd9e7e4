/**
 * One machine per epoch (src/domain/registration.ts): a copy of a host's state dir (cloned disk
 * image, restored backup: same host id, epoch and, usually, agent id) booted on another machine
 * never registers at the epoch of the record's machine, and never counts as that machine's agent.
 */
import { describe, expect, it } from 'vitest';
import { MACHINE_ID_SOURCES, readMachineId } from '../../src/adapters/machine-id.js';
import { decodeAliveValue, decodeHostRecord } from '../../src/domain/codec.js';
import { TetherError } from '../../src/domain/errors.js';
import { DEFAULT_TIMINGS } from '../../src/domain/gc-timing.js';
import type { HostRecord } from '../../src/domain/host-record.js';
import { Keyspace } from '../../src/domain/keyspace.js';
import { decideRegistration } from '../../src/domain/registration.js';
import { registrationTxn, type RegistrationInput } from '../../src/domain/registration-txn.js';

describe('registration rules with machine ids', () => {
  const onM1 = { agentId: 'me', machineId: 'm1' };
  const onM2 = { agentId: 'me', machineId: 'm2' };
  const unknown = { agentId: 'me' };
  it.each([
    // [who registers, mode, host epoch, record, alive holder, expected]
    // The record's machine: every rule as before.
    ['m1', 'reattach', 2, { state: 'attached', epoch: 2, machineId: 'm1' }, undefined, 'ok attached 2'],
    ['m1', 'reattach', 2, { state: 'detached', epoch: 2, machineId: 'm1' }, undefined, 'ok attached 2'],
    ['m1', 'reattach', 2, { state: 'attached', epoch: 2, machineId: 'm1' }, { agentId: 'me', machineId: 'm1', lease: '7' }, 'ok attached 2'],
    ['m1', 'ready', 2, { state: 'detached', epoch: 2, machineId: 'm1' }, undefined, 'ok ready 3'],
    ['m1', 'reattach', 2, { state: 'fenced', epoch: 2, machineId: 'm1' }, undefined, 'fenced'],
    // A clone on another machine, same agent id and epoch, while the original heartbeats: duplicate (never fences).
    ['m2', 'reattach', 2, { state: 'attached', epoch: 2, machineId: 'm1' }, { agentId: 'me', machineId: 'm1', lease: '7' }, 'duplicate'],
    ['m2', 'ready', 2, { state: 'fenced', epoch: 2, machineId: 'm1' }, { agentId: 'me', machineId: 'm1', lease: '7' }, 'duplicate'],
    // ... or with its own agent id: duplicate as before.
    ['m2', 'reattach', 2, { state: 'attached', epoch: 2, machineId: 'm1' }, { agentId: 'other', machineId: 'm1', lease: '7' }, 'duplicate'],
    // The original's lease is gone (partitioned, inside its watchdog window): the clone may not take the epoch over.
    ['m2', 'reattach', 2, { state: 'attached', epoch: 2, machineId: 'm1' }, undefined, 'epoch-mismatch'],
    ['m2', 'reattach', 2, { state: 'detached', epoch: 2, machineId: 'm1' }, undefined, 'epoch-mismatch'],
    // ... nor rejoin ready at the same epoch (that would reschedule the original's VMs without a window).
    ['m2', 'ready', 2, { state: 'detached', epoch: 2, machineId: 'm1' }, undefined, 'epoch-mismatch'],
    ['m2', 'ready', 2, { state: 'attached', epoch: 2, machineId: 'm1' }, undefined, 'epoch-mismatch'],
    ['m2', 'ready', 2, { state: 'ready', epoch: 2, machineId: 'm1' }, undefined, 'epoch-mismatch'],
    // Once the cluster fenced that epoch: a new epoch for the other machine.
    ['m2', 'ready', 2, { state: 'fenced', epoch: 2, machineId: 'm1' }, undefined, 'ok ready 3'],
    ['m2', 'reattach', 2, { state: 'fenced', epoch: 2, machineId: 'm1' }, undefined, 'fenced'],
    // An agent that names no machine is never the record's machine.
    ['unknown', 'reattach', 2, { state: 'attached', epoch: 2, machineId: 'm1' }, undefined, 'epoch-mismatch'],
    ['unknown', 'reattach', 2, { state: 'attached', epoch: 2, machineId: 'm1' }, { agentId: 'me', machineId: 'm1', lease: '7' }, 'duplicate'],
    // Legacy record / alive (written before machine ids): as before.
    ['m2', 'reattach', 2, { state: 'attached', epoch: 2 }, undefined, 'ok attached 2'],
    ['m2', 'reattach', 2, { state: 'attached', epoch: 2 }, { agentId: 'me', lease: '7' }, 'ok attached 2'],
    ['m2', 'ready', 2, { state: 'detached', epoch: 2 }, undefined, 'ok ready 3'],
  ] as const)('%s: %s at epoch %i, record %j, alive %j -> %s', (who, mode, epoch, rec, alive, want) => {
    const me = who === 'm1' ? onM1 : who === 'm2' ? onM2 : unknown;
    const d = decideRegistration({ mode, epoch, ...me }, rec, alive);
    expect(d.ok ? `ok ${d.state} ${d.epoch}` : d.reason).toBe(want);
  });

  it('names both machines in the refusals', () => {
    const d = decideRegistration({ mode: 'reattach', epoch: 2, ...onM2 }, { state: 'detached', epoch: 2, machineId: 'm1' });
    expect(d.ok ? '' : d.detail).toMatch(/machine m1, this is machine m2/);
    const dup = decideRegistration({ mode: 'reattach', epoch: 2, ...onM2 }, { state: 'attached', epoch: 2, machineId: 'm1' }, { agentId: 'me', machineId: 'm1', holder: 'pid 1', lease: '7' });
    expect(dup.ok ? '' : dup.detail).toMatch(/another machine .*pid 1 \(machine m1\) on lease 7/);
  });
});

describe('registration txn with machine ids', () => {
  const keys = new Keyspace('/t/', () => '00000000');
  const rec = (over: Partial<HostRecord> = {}): HostRecord => ({
    hostId: 'h1', state: 'attached', epoch: 3, hold: false, updatedAt: 1, agentVersion: '0.1.0', capacity: { vcpu: 4, memoryMb: 4096 }, labels: {}, timings: DEFAULT_TIMINGS, ...over,
  });
  const reg = (over: Partial<RegistrationInput> = {}): RegistrationInput => {
    const { state: _s, epoch: _e, hold: _h, updatedAt: _u, ...rest } = rec();
    return { hostId: 'h1', mode: 'reattach', epoch: 3, agentId: 'agent-1', machineId: 'm1', holder: 'pid 1', holdApplied: false, record: rest, lease: '77', ...over };
  };

  it('writes the registering machine on the record and on alive; both decode; a legacy record gains it', () => {
    const plan = registrationTxn(keys, reg(), { record: rec(), modRevision: 5 }, undefined, 2);
    expect(plan).toMatchObject({ ok: true, record: { epoch: 3, machineId: 'm1' } });
    if (!plan.ok) return;
    const [r, a] = plan.txn.success as readonly unknown[] as readonly { value: string }[];
    expect(decodeHostRecord('hosts/h1/record', r!.value)).toMatchObject({ ok: true, value: { machineId: 'm1' } });
    expect(decodeAliveValue('hosts/h1/alive', a!.value)).toMatchObject({ ok: true, value: { agentId: 'agent-1', machineId: 'm1' } });
  });

  it('never carries a machine id over from the registration record fields, and refuses a clone before building a txn', () => {
    const base = reg();
    const plan = registrationTxn(keys, reg({ machineId: 'm1', record: { ...base.record, machineId: 'm9' } }), undefined, undefined, 2);
    expect(plan).toMatchObject({ ok: false, reason: 'fenced' });
    const first = registrationTxn(keys, reg({ epoch: 0, record: { ...base.record, machineId: 'm9' } }), undefined, undefined, 2);
    expect(first).toMatchObject({ ok: true, record: { machineId: 'm1', epoch: 1 } });
    expect(registrationTxn(keys, reg({ machineId: 'm2' }), { record: rec({ machineId: 'm1' }), modRevision: 5 }, undefined, 2)).toMatchObject({ ok: false, reason: 'epoch-mismatch' });
  });

  it('refuses a malformed machine id in a record (schema)', () => {
    const bad = JSON.stringify({ ...rec(), machineId: 'a/b' });
    expect(decodeHostRecord('hosts/h1/record', bad).ok).toBe(false);
    expect(decodeHostRecord('hosts/h1/record', JSON.stringify(rec())).ok).toBe(true);
  });
});

describe('machine id adapter', () => {
  const files = (m: Record<string, string>) => (p: string) => {
    const v = m[p];
    if (v === undefined) throw Object.assign(new Error('ENOENT'), { code: 'ENOENT' });
    return v;
  };
  it('prefers /etc/machine-id, falls back to dbus then the boot id (tagged), refuses garbage', () => {
    const mid = '0123456789abcdef0123456789abcdef';
    expect(readMachineId(MACHINE_ID_SOURCES, files({ '/etc/machine-id': `${mid}\n`, '/proc/sys/kernel/random/boot_id': 'x' }))).toBe(mid);
    expect(readMachineId(MACHINE_ID_SOURCES, files({ '/etc/machine-id': '\n', '/var/lib/dbus/machine-id': mid }))).toBe(mid);
    expect(readMachineId(MACHINE_ID_SOURCES, files({ '/proc/sys/kernel/random/boot_id': '5f0c7d9a-1b2c-4d5e-8f90-a1b2c3d4e5f6\n' }))).toBe('boot:5f0c7d9a-1b2c-4d5e-8f90-a1b2c3d4e5f6');
    expect(() => readMachineId(MACHINE_ID_SOURCES, files({}))).toThrow(TetherError);
  });
  it('reads this machine (the adapter on the real files)', () => {
    const id = readMachineId();
    expect(id).toMatch(/^(boot:)?[A-Za-z0-9-]{8,64}$/);
    expect(decodeAliveValue('hosts/h1/alive', JSON.stringify({ epoch: 1, agentVersion: 'v', machineId: id })).ok).toBe(true);
  });
});
