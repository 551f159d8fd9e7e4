import type { StopMethod } from '../domain/vm.js';

/** Everything a VMM needs to launch one VM; all paths are absolute and already exist. */
export interface VmLaunchSpec {
  /** VM uid; appears on the process command line so that the process can be verified. */
  readonly uid: string;
  /** Host id, also on the command line (ownership mark of the process). */
  readonly hostId: string;
  readonly vcpu: number;
  readonly memoryMb: number;
  /** Uncompressed kernel (ELF vmlinux, booted via PVH). */
  readonly kernelPath: string;
  readonly initrdPath?: string;
  /** Full kernel command line. */
  readonly kernelCmdline: string;
  /** Per-VM state folder: holds `qemu.pid`, `qmp.sock`, `serial.log`. */
  readonly stateDir: string;
  /** Disks in order: the guest sees them as vda, vdb, ... */
  readonly disks: readonly { readonly path: string; readonly readOnly: boolean; readonly format: 'qcow2' | 'raw' }[];
  /** Tap devices in order: the guest sees them as eth0, eth1, ... */
  readonly nics: readonly { readonly tap: string; readonly mac: string }[];
}

/** What the VMM knows of a running (or gone) VM process. */
export interface VmProcessStatus {
  /** True when a process whose command line carries this uid is alive. */
  readonly running: boolean;
  readonly pid?: number;
  /** True once the guest printed the ready marker on its serial console. */
  readonly ready: boolean;
}

/** Options for stopping a VM. */
export interface StopOptions {
  /** Milliseconds the guest gets to power off after the ACPI button / ctrl-alt-del. */
  readonly graceMs: number;
  /** Milliseconds for the forced path (QMP quit, then SIGKILL) before giving up. */
  readonly killTimeoutMs: number;
  /** Graceful signal: ACPI power button (default) or ctrl-alt-del. */
  readonly gracefulSignal?: 'acpi' | 'ctrl-alt-del';
  /** Skip the graceful phase. */
  readonly forceOnly?: boolean;
}

/** Result of a stop. */
export interface StopResult {
  readonly method: StopMethod;
  /** Monotonic ms spent. */
  readonly tookMs: number;
}

/**
 * Virtual machine monitor port (QEMU `microvm` in production).
 *
 * Invariants: a process is only ever signalled after its command line was read and found
 * to carry the VM's uid and this host's id (never a bare pid); every method is idempotent.
 */
export interface Vmm {
  /** Launches the VM (daemonised, survives the agent). Resolves once the process runs. */
  start(spec: VmLaunchSpec): Promise<{ pid: number }>;
  /**
   * Resolves when the ready marker appears on the serial log, rejects after `timeoutMs`, or as soon as
   * `abandon()` (checked on every poll) returns true: the VM is no longer wanted (a delete must not
   * wait for a slow boot), rejected with FAILED_PRECONDITION, not retryable.
   */
  waitReady(stateDir: string, timeoutMs: number, abandon?: () => boolean): Promise<void>;
  /** Status of the VM whose state folder is `stateDir` and whose uid is `uid`. */
  status(uid: string, stateDir: string): Promise<VmProcessStatus>;
  /** Graceful stop with a deadline, then forced. Already stopped: `already-stopped`. */
  stop(uid: string, stateDir: string, opts: StopOptions): Promise<StopResult>;
  /** Every VMM process on this machine that carries this host's mark, with its state folder when known. */
  listOwned(hostId: string): Promise<{ uid: string; pid: number; stateDir?: string }[]>;
}
