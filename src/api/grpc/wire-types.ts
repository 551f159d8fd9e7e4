/**
 * TypeScript shapes of the Flintlock-compatible messages as they cross the wire through
 * `@grpc/proto-loader` with Tether's load options ({@link PROTO_LOADER_OPTIONS}: `keepCase`,
 * `longs: String`, `enums: String`, `defaults: true`, `oneofs: true`).
 *
 * Input shapes (`*In`) are deliberately loose: every field may be missing or `null`, because the
 * mapping code must cope with what any client sends (and with hand-written test objects). With
 * proto-loader, an unset proto3 `optional` scalar or message is `undefined`, an unset plain message
 * field is `null`, an unset plain scalar carries its default, and an enum the proto does not know
 * arrives as its number.
 *
 * Output shapes (`FlintlockMicroVM` and friends) are what Tether writes; optional fields are left
 * out rather than sent empty, so their presence bit stays clear on the wire.
 */

/** `flintlock.types.NetworkInterface.IfaceType` as text; a number when the value is unknown. */
export type IfaceTypeWire = 'MACVTAP' | 'TAP' | number;

/** `flintlock.types.MicroVMStatus.MicroVMState` as text. */
export type MicroVmStateWire = 'PENDING' | 'CREATED' | 'FAILED' | 'DELETING';

/** `google.protobuf.Timestamp`; `seconds` is an int64 rendered as a decimal string. */
export interface TimestampWire {
  readonly seconds: string;
  readonly nanos: number;
}

/** Loose input form of `flintlock.types.Kernel`. */
export interface KernelIn {
  readonly image?: string | null;
  readonly cmdline?: Readonly<Record<string, string>> | null;
  readonly filename?: string | null;
  readonly add_network_config?: boolean | null;
}

/** Loose input form of `flintlock.types.Initrd`. */
export interface InitrdIn {
  readonly image?: string | null;
  readonly filename?: string | null;
}

/** Loose input form of `flintlock.types.VolumeSource`. */
export interface VolumeSourceIn {
  readonly container_source?: string | null;
  readonly virtiofs_source?: string | null;
}

/** Loose input form of `flintlock.types.Volume`. */
export interface VolumeIn {
  readonly id?: string | null;
  readonly is_read_only?: boolean | null;
  readonly mount_point?: string | null;
  readonly source?: VolumeSourceIn | null;
  readonly partition_id?: string | null;
  readonly size_in_mb?: number | null;
}

/** Loose input form of `flintlock.types.StaticAddress`. */
export interface StaticAddressIn {
  readonly address?: string | null;
  readonly gateway?: string | null;
  readonly nameservers?: readonly string[] | null;
}

/** Loose input form of `flintlock.types.NetworkOverrides`. */
export interface NetworkOverridesIn {
  readonly bridge_name?: string | null;
}

/** Loose input form of `flintlock.types.NetworkInterface`. */
export interface NetworkInterfaceIn {
  readonly device_id?: string | null;
  readonly type?: IfaceTypeWire | null;
  readonly guest_mac?: string | null;
  readonly address?: StaticAddressIn | null;
  readonly overrides?: NetworkOverridesIn | null;
}

/** Loose input form of `flintlock.types.CPUConfig`. */
export interface CpuConfigIn {
  readonly features_to_enable?: readonly string[] | null;
  readonly kvm_capabilities_to_disable?: readonly string[] | null;
}

/** Loose input form of `flintlock.types.MicroVMSpec` (host-set timestamps are ignored on input). */
export interface MicroVmSpecIn {
  readonly id?: string | null;
  readonly namespace?: string | null;
  readonly labels?: Readonly<Record<string, string>> | null;
  readonly vcpu?: number | null;
  readonly memory_in_mb?: number | null;
  readonly kernel?: KernelIn | null;
  readonly initrd?: InitrdIn | null;
  readonly root_volume?: VolumeIn | null;
  readonly additional_volumes?: readonly VolumeIn[] | null;
  readonly interfaces?: readonly NetworkInterfaceIn[] | null;
  readonly metadata?: Readonly<Record<string, string>> | null;
  readonly created_at?: TimestampWire | null;
  readonly updated_at?: TimestampWire | null;
  readonly deleted_at?: TimestampWire | null;
  readonly uid?: string | null;
  readonly provider?: string | null;
  readonly allow_guest_agent?: boolean | null;
  readonly cpu_config?: CpuConfigIn | null;
}

/** `microvm.services.api.v1alpha1.CreateMicroVMRequest`; the request-level `metadata` is ignored. */
export interface CreateMicroVmRequestIn {
  readonly microvm?: MicroVmSpecIn | null;
  readonly metadata?: Readonly<Record<string, unknown>> | null;
}

/** `GetMicroVMRequest` and `DeleteMicroVMRequest`. */
export interface UidRequestIn {
  readonly uid?: string | null;
}

/** `ListMicroVMsRequest`; `name` is a proto3 `optional`. */
export interface ListMicroVmsRequestIn {
  readonly namespace?: string | null;
  readonly name?: string | null;
}

/** Output form of `flintlock.types.Kernel`. */
export interface KernelOut {
  image: string;
  cmdline: Record<string, string>;
  add_network_config: boolean;
}

/** Output form of `flintlock.types.Volume`. */
export interface VolumeOut {
  id: string;
  is_read_only: boolean;
  source: { container_source: string };
}

/** Output form of `flintlock.types.NetworkInterface`. */
export interface NetworkInterfaceOut {
  device_id: string;
  type: 'TAP';
  guest_mac?: string;
  address?: { address: string; gateway?: string; nameservers: string[] };
}

/** Output form of `flintlock.types.MicroVMSpec`. */
export interface MicroVmSpecOut {
  id: string;
  namespace: string;
  labels: Record<string, string>;
  vcpu: number;
  memory_in_mb: number;
  kernel: KernelOut;
  initrd?: { image: string };
  root_volume?: VolumeOut;
  additional_volumes: VolumeOut[];
  interfaces: NetworkInterfaceOut[];
  metadata: Record<string, string>;
  created_at: TimestampWire;
  updated_at: TimestampWire;
  uid: string;
}

/** Output form of `flintlock.types.NetworkInterfaceStatus`. */
export interface NetworkInterfaceStatusOut {
  host_device_name: string;
  index: number;
  mac_address: string;
}

/** Output form of `flintlock.types.MicroVMStatus`. */
export interface MicroVmStatusOut {
  state: MicroVmStateWire;
  volumes: Record<string, never>;
  network_interfaces: Record<string, NetworkInterfaceStatusOut>;
  retry: number;
}

/** Output form of `flintlock.types.MicroVM`. */
export interface FlintlockMicroVM {
  version: number;
  spec: MicroVmSpecOut;
  status: MicroVmStatusOut;
}
