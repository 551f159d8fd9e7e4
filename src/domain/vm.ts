/**
 * The microVM model, independent of any wire format. The gRPC layer maps Flintlock's
 * `flintlock.types.MicroVMSpec` to and from these types.
 */

/** Identity of a VM: `namespace/name` is the user's handle, `uid` is unique per incarnation. */
export interface VmId {
  readonly namespace: string;
  readonly name: string;
}

/** A network interface of the guest, backed by one tap device on the host. */
export interface VmInterface {
  /** Name of the device inside the guest, e.g. `eth0`. */
  readonly guestDeviceName: string;
  /** MAC address inside the guest; generated from the uid when absent. */
  readonly guestMac?: string;
  /** Static IPv4 CIDR for the guest, e.g. `10.0.0.2/24` (optional). */
  readonly address?: string;
  /** Gateway for the static address (optional). */
  readonly gateway?: string;
}

/** A disk attached through virtio-blk, as a copy-on-write overlay over an image. */
export interface VmVolume {
  /** Volume id, unique within the VM. */
  readonly id: string;
  /** Name of the base image in the local image store. */
  readonly image: string;
  /** Mounted read-only in the guest. */
  readonly readOnly: boolean;
  /** True for the root volume. */
  readonly isRoot: boolean;
}

/** What the user asked for. Immutable once accepted. */
export interface VmSpec {
  readonly id: VmId;
  /** Number of virtual CPUs, >= 1. */
  readonly vcpu: number;
  /** Guest memory in MiB (the guest kernel needs at least 72). */
  readonly memoryMb: number;
  /** Kernel image name in the image store (empty: the built-in guest kernel). */
  readonly kernelImage: string;
  /** Extra kernel command-line arguments, appended to Tether's own. */
  readonly kernelCmdline: Readonly<Record<string, string>>;
  /** Initrd image name in the image store (empty: the built-in guest initrd). */
  readonly initrdImage: string;
  readonly volumes: readonly VmVolume[];
  readonly interfaces: readonly VmInterface[];
  readonly labels: Readonly<Record<string, string>>;
  readonly metadata: Readonly<Record<string, string>>;
}

/** Lifecycle of a VM on this host. */
export type VmPhase = 'pending' | 'creating' | 'running' | 'failed' | 'deleting' | 'stopped' | 'deleted';

/** How a VM was stopped, for the GC report. */
export type StopMethod = 'graceful' | 'forced-quit' | 'forced-kill' | 'already-stopped';

/** A VM as this host knows it. */
export interface VmRecord {
  readonly uid: string;
  readonly spec: VmSpec;
  readonly phase: VmPhase;
  /** Last error, when phase is `failed`. */
  readonly error?: string;
  /** Wall-clock ms of creation (for display only; never for deadlines). */
  readonly createdAt: number;
  readonly updatedAt: number;
  /** Bumped on every change; lets API streams and clients notice updates. */
  readonly generation: number;
  /** Host devices backing each guest interface, once created. */
  readonly nics: readonly { readonly guestDeviceName: string; readonly hostDeviceName: string; readonly mac: string }[];
}

/** `namespace/name`. */
export function vmKey(id: VmId): string {
  return `${id.namespace}/${id.name}`;
}
