import { describe, expect, it } from 'vitest';
import {
  buildQemuArgs,
  effectiveKernelCmdline,
  tscKhzFromCpuinfo,
  validateLaunchSpec,
  vmStatePaths,
} from '../../src/adapters/qemu/qemu-args.js';
import type { VmLaunchSpec } from '../../src/ports/vmm.js';
import { InvalidArgumentError } from '../../src/domain/errors.js';

const spec: VmLaunchSpec = {
  uid: '0b5e7c1a-1111-2222-3333-444455556666',
  hostId: 'host-a',
  vcpu: 2,
  memoryMb: 96,
  kernelPath: '/img/vmlinux',
  initrdPath: '/img/initrd.img',
  kernelCmdline: 'console=ttyS0 quiet panic=-1',
  stateDir: '/var/lib/tether/vms/x',
  disks: [
    { path: '/vols/root.qcow2', readOnly: false, format: 'qcow2' },
    { path: '/vols/data.img', readOnly: true, format: 'raw' },
  ],
  nics: [{ tap: 'tt0abc', mac: 'AA:BB:CC:00:11:22' }],
};

/** The value following `flag` (first occurrence). */
function after(args: string[], flag: string): string | undefined {
  const i = args.indexOf(flag);
  return i < 0 ? undefined : args[i + 1];
}

describe('buildQemuArgs', () => {
  it('builds the measured microvm command line under TCG', () => {
    const args = buildQemuArgs(spec, { accel: 'tcg', tscKhz: 2096020 });
    expect(after(args, '-M')).toBe('microvm,x-option-roms=off,isa-serial=on,rtc=on');
    expect(after(args, '-accel')).toBe('tcg,tb-size=64');
    expect(args).not.toContain('-cpu');
    expect(after(args, '-m')).toBe('96');
    expect(after(args, '-smp')).toBe('2');
    for (const f of ['-nodefaults', '-no-user-config', '-nographic', '-no-reboot', '-daemonize']) expect(args).toContain(f);
    // The console is a ring in QEMU's memory (never a file QEMU writes), drained through a second monitor.
    expect(after(args, '-serial')).toBe('chardev:con0');
    const chardevs = args.filter((_, i) => args[i - 1] === '-chardev');
    expect(chardevs).toEqual(['ringbuf,id=con0,size=65536', 'socket,id=conmon,path=/var/lib/tether/vms/x/con.sock,server=on,wait=off']);
    expect(after(args, '-mon')).toBe('chardev=conmon,mode=control');
    expect(args.join(' ')).not.toMatch(/file:|logfile=/);
    expect(after(args, '-kernel')).toBe('/img/vmlinux');
    expect(after(args, '-initrd')).toBe('/img/initrd.img');
    expect(after(args, '-append')).toBe('console=ttyS0 quiet panic=-1 tsc_early_khz=2096020');
    expect(after(args, '-qmp')).toBe('unix:/var/lib/tether/vms/x/qmp.sock,server=on,wait=off');
    expect(after(args, '-pidfile')).toBe('/var/lib/tether/vms/x/qemu.pid');
    expect(after(args, '-name')).toBe('tether:host-a:0b5e7c1a-1111-2222-3333-444455556666,process=tether-0b5e7c1a');
  });

  it('orders disks and NICs as in the spec, with readonly and format per drive', () => {
    const args = buildQemuArgs(spec, { accel: 'tcg' });
    const devices = args.filter((_, i) => args[i - 1] === '-device');
    const drives = args.filter((_, i) => args[i - 1] === '-drive');
    expect(drives).toEqual([
      'file=/vols/root.qcow2,if=none,id=d0,format=qcow2,readonly=off',
      'file=/vols/data.img,if=none,id=d1,format=raw,readonly=on',
    ]);
    expect(devices).toEqual([
      'i8042',
      'virtio-blk-device,drive=d0',
      'virtio-blk-device,drive=d1',
      'virtio-net-device,netdev=n0,mac=aa:bb:cc:00:11:22',
    ]);
    expect(after(args, '-netdev')).toBe('tap,id=n0,ifname=tt0abc,script=no,downscript=no');
  });

  it('uses KVM with the host CPU and no tsc_early_khz under KVM', () => {
    const args = buildQemuArgs(spec, { accel: 'kvm', tscKhz: 2096020 });
    expect(after(args, '-accel')).toBe('kvm');
    expect(after(args, '-cpu')).toBe('host');
    expect(after(args, '-append')).toBe('console=ttyS0 quiet panic=-1');
  });

  it('omits -initrd, disks and NICs when absent', () => {
    const args = buildQemuArgs({ ...spec, initrdPath: undefined, disks: [], nics: [] }, { accel: 'tcg' });
    expect(args).not.toContain('-initrd');
    expect(args).not.toContain('-drive');
    expect(args).not.toContain('-netdev');
  });
});

describe('effectiveKernelCmdline', () => {
  it('keeps a tsc_early_khz the caller set', () => {
    expect(effectiveKernelCmdline({ ...spec, kernelCmdline: 'a tsc_early_khz=1000' }, { accel: 'tcg', tscKhz: 5 })).toBe('a tsc_early_khz=1000');
  });
  it('adds nothing when the host frequency is unknown', () => {
    expect(effectiveKernelCmdline(spec, { accel: 'tcg' })).toBe('console=ttyS0 quiet panic=-1');
  });
});

describe('validateLaunchSpec', () => {
  it('accepts a good spec', () => {
    expect(() => validateLaunchSpec(spec)).not.toThrow();
  });
  it.each([
    ['uid', { uid: 'a:b' }],
    ['uid', { uid: 'a,b' }],
    ['hostId', { hostId: 'h:1' }],
    ['hostId', { hostId: '' }],
    ['vcpu', { vcpu: 0 }],
    ['memoryMb', { memoryMb: 1.5 }],
    ['stateDir', { stateDir: 'relative/dir' }],
    ['stateDir', { stateDir: '/a,b' }],
    ['stateDir', { stateDir: `/${'x'.repeat(100)}` }],
    ['kernelPath', { kernelPath: '/k,ernel' }],
    ['disks[0].path', { disks: [{ path: '/a,b', readOnly: true, format: 'raw' as const }] }],
    ['nics[0].tap', { nics: [{ tap: 'way-too-long-tap-name', mac: 'aa:bb:cc:dd:ee:ff' }] }],
    ['nics[0].mac', { nics: [{ tap: 't0', mac: 'aa:bb:cc:dd:ee' }] }],
  ])('rejects a bad %s', (field, patch) => {
    const err = (() => {
      try {
        validateLaunchSpec({ ...spec, ...patch } as VmLaunchSpec);
      } catch (e) {
        return e;
      }
      return undefined;
    })();
    expect(err).toBeInstanceOf(InvalidArgumentError);
    expect((err as InvalidArgumentError).field).toBe(field);
  });
});

describe('tscKhzFromCpuinfo / vmStatePaths', () => {
  it('parses the first cpu MHz line', () => {
    expect(tscKhzFromCpuinfo('processor\t: 0\ncpu MHz\t\t: 2096.020\ncpu MHz\t\t: 1.0\n')).toBe(2096020);
    expect(tscKhzFromCpuinfo('processor\t: 0\n')).toBeUndefined();
  });
  it('names the state files', () => {
    expect(vmStatePaths('/s')).toEqual({
      pidFile: '/s/qemu.pid', qmpSocket: '/s/qmp.sock', consoleSocket: '/s/con.sock', serialLog: '/s/serial.log',
      serialLogOld: '/s/serial.log.1', readyFile: '/s/ready', qemuLog: '/s/qemu.log',
    });
    // Both sockets have names of the same length: one path-length check covers both.
    expect('con.sock'.length).toBe('qmp.sock'.length);
  });
});
