import { join } from 'node:path';
import type { VmLaunchSpec } from '../../ports/vmm.js';
import { InvalidArgumentError } from '../../domain/errors.js';
import { HOST_ID_PATTERN, VM_UID_PATTERN, qemuNameArg } from './owner-mark.js';
import { CONSOLE_DEVICE, CONSOLE_RING_BYTES } from './serial-console.js';

/** Accelerator QEMU runs the guest with. */
export type Accel = 'kvm' | 'tcg';

/**
 * Files of one VM inside its state folder (0700; every file in it 0600). Names are fixed: other
 * components rely on them.
 */
export interface VmStatePaths {
  /** Written by QEMU (`-pidfile`) once it has daemonised. */
  readonly pidFile: string;
  /** QMP server socket (`-qmp unix:…,server=on,wait=off`): stop, power button. */
  readonly qmpSocket: string;
  /** Second QMP monitor, used only to drain the console ring (serial-console.ts). */
  readonly consoleSocket: string;
  /** Guest serial console as drained by the agent (capped, see serial-console.ts); removed by each start. */
  readonly serialLog: string;
  /** The previous `serial.log` after a rotation. */
  readonly serialLogOld: string;
  /** Written (empty) once the ready marker passed on the console; removed by each start. */
  readonly readyFile: string;
  /** QEMU's own stdout/stderr until it daemonises (start errors land here). */
  readonly qemuLog: string;
}

/** The fixed file names of a VM's state folder. */
export function vmStatePaths(stateDir: string): VmStatePaths {
  return {
    pidFile: join(stateDir, 'qemu.pid'),
    qmpSocket: join(stateDir, 'qmp.sock'),
    consoleSocket: join(stateDir, 'con.sock'),
    serialLog: join(stateDir, 'serial.log'),
    serialLogOld: join(stateDir, 'serial.log.1'),
    readyFile: join(stateDir, 'ready'),
    qemuLog: join(stateDir, 'qemu.log'),
  };
}

/** Longest unix socket path Linux accepts (sun_path is 108 bytes with the NUL). */
export const MAX_UNIX_SOCKET_PATH = 107;

const MAC_PATTERN = /^[0-9a-fA-F]{2}(?::[0-9a-fA-F]{2}){5}$/;
const TAP_PATTERN = /^[A-Za-z0-9._-]{1,15}$/;

function checkPath(field: string, path: string): void {
  if (!path.startsWith('/')) throw new InvalidArgumentError(field, `must be an absolute path, got ${JSON.stringify(path)}`);
  // Commas split QEMU option strings; rejecting them is simpler and safer than escaping.
  if (/[,\n\0]/.test(path)) throw new InvalidArgumentError(field, `must not contain a comma or control character: ${JSON.stringify(path)}`);
}

/**
 * Rejects (InvalidArgumentError) a spec QEMU could misread: ids outside the owner-mark alphabet,
 * relative paths or paths with commas, a QMP socket path too long for a unix socket, bad MAC or
 * tap names, vcpu < 1, memory < 1.
 */
export function validateLaunchSpec(spec: VmLaunchSpec): void {
  if (!VM_UID_PATTERN.test(spec.uid)) throw new InvalidArgumentError('uid', `must match ${VM_UID_PATTERN}`);
  if (!HOST_ID_PATTERN.test(spec.hostId)) throw new InvalidArgumentError('hostId', `must match ${HOST_ID_PATTERN}`);
  if (!Number.isInteger(spec.vcpu) || spec.vcpu < 1) throw new InvalidArgumentError('vcpu', 'must be an integer >= 1');
  if (!Number.isInteger(spec.memoryMb) || spec.memoryMb < 1) throw new InvalidArgumentError('memoryMb', 'must be an integer >= 1');
  checkPath('stateDir', spec.stateDir);
  checkPath('kernelPath', spec.kernelPath);
  if (spec.initrdPath !== undefined) checkPath('initrdPath', spec.initrdPath);
  const paths = vmStatePaths(spec.stateDir);
  for (const sock of [paths.qmpSocket, paths.consoleSocket]) {
    if (Buffer.byteLength(sock) > MAX_UNIX_SOCKET_PATH) {
      throw new InvalidArgumentError('stateDir', `too long: the QMP socket path ${sock} exceeds ${MAX_UNIX_SOCKET_PATH} bytes`);
    }
  }
  spec.disks.forEach((d, i) => checkPath(`disks[${i}].path`, d.path));
  spec.nics.forEach((n, i) => {
    if (!TAP_PATTERN.test(n.tap)) throw new InvalidArgumentError(`nics[${i}].tap`, `must match ${TAP_PATTERN}`);
    if (!MAC_PATTERN.test(n.mac)) throw new InvalidArgumentError(`nics[${i}].mac`, 'must be a MAC address aa:bb:cc:dd:ee:ff');
  });
}

/** Inputs of {@link buildQemuArgs} besides the spec. */
export interface QemuArgsOptions {
  readonly accel: Accel;
  /**
   * Host TSC frequency in kHz. Under TCG it is passed to the guest as `tsc_early_khz`
   * (without it about 1 boot in 6 hangs in TSC calibration). Ignored under KVM.
   */
  readonly tscKhz?: number;
}

/** The kernel command line QEMU gets: the spec's, plus `tsc_early_khz` under TCG unless present. */
export function effectiveKernelCmdline(spec: VmLaunchSpec, options: QemuArgsOptions): string {
  const base = spec.kernelCmdline.trim();
  if (options.accel !== 'tcg' || options.tscKhz === undefined || /(?:^|\s)tsc_early_khz=/.test(base)) return base;
  return `${base} tsc_early_khz=${Math.round(options.tscKhz)}`.trim();
}

/**
 * QEMU `microvm` argv (without the binary) for `spec`. Pure.
 *
 * Invariants: the VM daemonises (`-daemonize`, survives the agent) and writes its pid to
 * `<stateDir>/qemu.pid`; `-no-reboot` makes QEMU exit when the guest powers off or reboots;
 * the `-name` value carries the owner mark `tether:<hostId>:<uid>` (see owner-mark.ts);
 * disk i is drive `d<i>` and NIC i is netdev `n<i>`, in spec order (vda…, eth0…); the serial port
 * is a {@link CONSOLE_RING_BYTES} ring buffer (`con0`) that QEMU never writes to disk, drained
 * through a second QMP monitor at `con.sock` (serial-console.ts).
 * Call {@link validateLaunchSpec} first: this function does not escape anything.
 */
export function buildQemuArgs(spec: VmLaunchSpec, options: QemuArgsOptions): string[] {
  const paths = vmStatePaths(spec.stateDir);
  const args: string[] = [
    '-name', qemuNameArg({ hostId: spec.hostId, uid: spec.uid }),
    '-M', 'microvm,x-option-roms=off,isa-serial=on,rtc=on',
    ...(options.accel === 'kvm' ? ['-accel', 'kvm', '-cpu', 'host'] : ['-accel', 'tcg,tb-size=64']),
    '-m', String(spec.memoryMb),
    '-smp', String(spec.vcpu),
    '-nodefaults', '-no-user-config', '-nographic', '-no-reboot',
    '-chardev', `ringbuf,id=${CONSOLE_DEVICE},size=${CONSOLE_RING_BYTES}`,
    '-serial', `chardev:${CONSOLE_DEVICE}`,
    '-kernel', spec.kernelPath,
  ];
  if (spec.initrdPath !== undefined) args.push('-initrd', spec.initrdPath);
  args.push('-append', effectiveKernelCmdline(spec, options));
  args.push('-qmp', `unix:${paths.qmpSocket},server=on,wait=off`);
  args.push('-chardev', `socket,id=conmon,path=${paths.consoleSocket},server=on,wait=off`, '-mon', 'chardev=conmon,mode=control');
  args.push('-device', 'i8042');
  spec.disks.forEach((d, i) => {
    args.push(
      '-drive', `file=${d.path},if=none,id=d${i},format=${d.format},readonly=${d.readOnly ? 'on' : 'off'}`,
      '-device', `virtio-blk-device,drive=d${i}`,
    );
  });
  spec.nics.forEach((n, i) => {
    args.push(
      '-netdev', `tap,id=n${i},ifname=${n.tap},script=no,downscript=no`,
      '-device', `virtio-net-device,netdev=n${i},mac=${n.mac.toLowerCase()}`,
    );
  });
  args.push('-daemonize', '-pidfile', paths.pidFile);
  return args;
}

/** Parses the first `cpu MHz` of a `/proc/cpuinfo` text into kHz; undefined when absent. */
export function tscKhzFromCpuinfo(cpuinfo: string): number | undefined {
  const m = /^cpu MHz\s*:\s*([0-9.]+)/m.exec(cpuinfo);
  if (!m) return undefined;
  const mhz = Number(m[1]);
  return Number.isFinite(mhz) && mhz > 0 ? Math.round(mhz * 1000) : undefined;
}
