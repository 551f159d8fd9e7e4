import { describe, expect, it } from 'vitest';
import { argvCarriesMark, isQemuArgv0, parseOwnerFromArgv, qemuNameArg } from '../../src/adapters/qemu/owner-mark.js';

const qemu = (name: string): string[] => ['/usr/bin/qemu-system-x86_64', '-M', 'microvm', '-name', name, '-S'];

describe('owner mark', () => {
  it('round-trips through qemuNameArg', () => {
    const name = qemuNameArg({ hostId: 'h.1_a', uid: 'abc-123' });
    expect(name).toBe('tether:h.1_a:abc-123,process=tether-abc-123');
    expect(parseOwnerFromArgv(qemu(name))).toEqual({ hostId: 'h.1_a', uid: 'abc-123' });
  });

  it('requires a QEMU argv[0]', () => {
    expect(isQemuArgv0('qemu-system-x86_64')).toBe(true);
    expect(isQemuArgv0('/opt/q/qemu-system-aarch64')).toBe(true);
    expect(isQemuArgv0('/bin/sleep')).toBe(false);
    expect(isQemuArgv0('/opt/my-qemu', '/usr/local/bin/my-qemu')).toBe(true);
    const decoy = ['/usr/bin/node', '-e', 'x', '-name', 'tether:h:u1'];
    expect(parseOwnerFromArgv(decoy)).toBeUndefined();
  });

  it('matches the uid exactly, never a prefix or a mention elsewhere', () => {
    expect(argvCarriesMark(qemu('tether:h:u1'), 'u1', 'h')).toBe(true);
    expect(argvCarriesMark(qemu('tether:h:u1,process=x'), 'u1', 'h')).toBe(true);
    expect(argvCarriesMark(qemu('tether:h:u12'), 'u1', 'h')).toBe(false);
    expect(argvCarriesMark(qemu('tether:h:u1'), 'u12', 'h')).toBe(false);
    expect(argvCarriesMark(qemu('tether:other:u1'), 'u1', 'h')).toBe(false);
    expect(argvCarriesMark(qemu('tether:other:u1'), 'u1', undefined)).toBe(true);
    expect(argvCarriesMark(qemu('vm-u1'), 'u1', 'h')).toBe(false);
    expect(argvCarriesMark(['/usr/bin/qemu-system-x86_64', '-append', 'tether:h:u1'], 'u1', 'h')).toBe(false);
  });
});
