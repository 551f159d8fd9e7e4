/**
 * Flintlock `MicroVMSpec` (wire) -> Tether {@link VmSpec} (domain), with validation.
 *
 * Pure: no I/O, no clock. Every rejection is a {@link TetherError} whose `details.field` (and, for
 * INVALID_ARGUMENT, {@link InvalidArgumentError.field}) is the dotted path of the offending field in
 * the Flintlock request, e.g. `microvm.vcpu`, `microvm.interfaces[0].device_id`,
 * `microvm.kernel.cmdline["console"]`. The message always starts with that path.
 *
 * Codes: INVALID_ARGUMENT for malformed input; UNIMPLEMENTED for well-formed input that asks for a
 * feature Tether does not have (macvtap, virtio-fs, volume resizing, guest agent, ...).
 * Fields are checked in proto field order and the first failure wins.
 *
 * What Tether does with the fields it accepts but cannot represent (documented, deliberate):
 * - `created_at`, `updated_at`, `deleted_at`: host-set; ignored on input (as Flintlock does).
 * - `kernel.filename`, `initrd.filename`: ignored. Tether's image store names a single file per
 *   image, so "which file inside the image" has no meaning; clients such as CAPMVM set it anyway.
 * - `kernel.add_network_config`: ignored. Tether always configures the guest network itself from
 *   `interfaces` (static address when given, DHCP otherwise), so the flag is redundant.
 * - `volume.mount_point`: validated (absolute path), then dropped: {@link VmVolume} has no mount
 *   point, so Tether attaches the disk and leaves mounting to the guest.
 * - `provider`: empty or `qemu` only.
 */
import { InvalidArgumentError, TetherError } from '../../domain/errors.js';
import { mapSizeViolation, recordSizeViolation } from '../../domain/codec/vm-limits.js';
import type { VmInterface, VmSpec, VmVolume } from '../../domain/vm.js';
import type { VmFilter } from '../../ports/microvm-service.js';
import type {
  CreateMicroVmRequestIn,
  KernelIn,
  ListMicroVmsRequestIn,
  MicroVmSpecIn,
  NetworkInterfaceIn,
  UidRequestIn,
  VolumeIn,
} from './wire-types.js';

/** Bounds Tether enforces on a spec. Invariant: min <= max for each pair. */
export const SPEC_LIMITS = {
  /** Fewest vCPUs. */
  minVcpu: 1,
  /** Most vCPUs. */
  maxVcpu: 32,
  /** Least guest memory in MiB: below this the guest kernel does not boot. */
  minMemoryMb: 72,
  /** Most guest memory in MiB. */
  maxMemoryMb: 16384,
  /** Most network interfaces per VM. */
  maxInterfaces: 16,
  /** Most additional volumes per VM. */
  maxAdditionalVolumes: 16,
  /** Most bytes of user kernel arguments (the whole command line must fit the kernel's 2 KiB). */
  maxCmdlineBytes: 1024,
  /** Longest id / namespace (a DNS label). */
  maxNameLength: 63,
  /** Longest image name. */
  maxImageNameLength: 255,
} as const;

/** Providers a spec may name; empty means the default (QEMU). */
export const ACCEPTED_PROVIDERS: readonly string[] = ['', 'qemu'];

/** Id of the root volume when the request leaves `root_volume.id` empty or omits `root_volume`. */
export const DEFAULT_ROOT_VOLUME_ID = 'root';

const NAME_RE = /^[a-z0-9]([a-z0-9-]*[a-z0-9])?$/;
const VOLUME_ID_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$/;
/** Linux interface name: at most 15 chars (IFNAMSIZ - 1), no '/', ':', '@' or whitespace. */
const IFNAME_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$/;
const IMAGE_RE = /^[A-Za-z0-9][A-Za-z0-9._\-/:@+]*$/;
const MAC_RE = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/;
const CMDLINE_KEY_RE = /^[^\s="]+$/;
const CMDLINE_VALUE_RE = /^[^\s"]*$/;
const IPV4_RE = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/;

/**
 * A well-formed request for something Tether cannot do: code UNIMPLEMENTED, message
 * `<field>: <message>`, `details.field` = field.
 */
export function unimplementedField(field: string, message: string): TetherError {
  return new TetherError('UNIMPLEMENTED', `${field}: ${message}`, { details: { field } });
}

/**
 * Validates a `CreateMicroVMRequest` and maps its `microvm` to a {@link VmSpec}.
 *
 * Invariants of the result: it satisfies every rule of {@link specFromFlintlock}; it shares no
 * mutable object with the input. Throws INVALID_ARGUMENT with field `microvm` when the spec is missing.
 */
export function specFromCreateRequest(req: CreateMicroVmRequestIn | null | undefined): VmSpec {
  if (!req?.microvm) throw new InvalidArgumentError('microvm', 'required');
  return specFromFlintlock(req.microvm, 'microvm');
}

/**
 * Validates a Flintlock `MicroVMSpec` and maps it to a {@link VmSpec}.
 *
 * Rules (all paths relative to `prefix`):
 * - `id`, `namespace`: required DNS labels (lowercase alnum and '-', no leading/trailing '-', <= 63).
 * - `vcpu` in 1..32; `memory_in_mb` in 72..16384 (0, i.e. unset, is rejected: Tether has no defaults).
 * - `kernel.image`, `initrd.image`: optional image names ('' = built-in); `kernel.cmdline` keys
 *   without whitespace, '=' or '"', values without whitespace or '"', <= 1 KiB in total.
 * - `root_volume`: optional; absent or without a source means the built-in base disk. Its
 *   `source.container_source` and each additional volume's (required there) is an image name in the
 *   local image store. `virtiofs_source` -> UNIMPLEMENTED; both sources -> INVALID_ARGUMENT.
 *   Volume ids unique; `mount_point` absolute; non-empty `partition_id` or non-zero `size_in_mb`
 *   -> UNIMPLEMENTED.
 * - `interfaces[i].device_id`: required, a Linux interface name, unique; it becomes the guest device
 *   name (as in Flintlock). `type` MACVTAP (the proto default!) -> UNIMPLEMENTED, only TAP works.
 *   `guest_mac`: a unicast `xx:xx:xx:xx:xx:xx`, unique. `address.address`: an IPv4 host address in
 *   CIDR form (IPv6 -> UNIMPLEMENTED); `address.gateway`: IPv4, bare or CIDR (stored bare);
 *   `address.nameservers`, `overrides.bridge_name` -> UNIMPLEMENTED.
 * - `uid` must be empty (Tether assigns uids); `provider` empty or `qemu`; `allow_guest_agent` and a
 *   non-empty `cpu_config` -> UNIMPLEMENTED.
 * - `labels` and `metadata` keys must be non-empty; both maps are kept verbatim within the size
 *   limits of src/domain/codec/vm-limits.ts (labels: 256 entries, keys 256 B, values 1 KiB, 16 KiB in
 *   total; metadata: 256 entries, keys 256 B, values and total 64 KiB); the whole record at most
 *   96 KiB (its JSON plus 1 KiB for status). Errors name the field and the limit:
 *   `microvm.metadata["x"]: 70000 bytes, limit 65536`.
 */
export function specFromFlintlock(spec: MicroVmSpecIn, prefix = 'microvm'): VmSpec {
  const f = (name: string): string => `${prefix}.${name}`;

  const name = checkName(spec.id, f('id'));
  const namespace = checkName(spec.namespace, f('namespace'));
  const labels = checkMap(spec.labels, f('labels'), 'labels');
  const vcpu = checkIntRange(spec.vcpu, f('vcpu'), SPEC_LIMITS.minVcpu, SPEC_LIMITS.maxVcpu);
  const memoryMb = checkIntRange(spec.memory_in_mb, f('memory_in_mb'), SPEC_LIMITS.minMemoryMb, SPEC_LIMITS.maxMemoryMb);
  const { kernelImage, kernelCmdline } = mapKernel(spec.kernel, f('kernel'));
  const initrdImage = spec.initrd ? checkImageName(spec.initrd.image, f('initrd.image'), true) : '';
  const volumes = mapVolumes(spec.root_volume, spec.additional_volumes, prefix);
  const interfaces = mapInterfaces(spec.interfaces, f('interfaces'));
  const metadata = checkMap(spec.metadata, f('metadata'), 'metadata');

  if (spec.uid) throw new InvalidArgumentError(f('uid'), 'must be empty: Tether assigns uids');
  const provider = spec.provider ?? '';
  if (!ACCEPTED_PROVIDERS.includes(provider)) {
    throw unimplementedField(f('provider'), `provider ${JSON.stringify(provider)} is not available; Tether runs QEMU microVMs only (leave it empty)`);
  }
  if (spec.allow_guest_agent) throw unimplementedField(f('allow_guest_agent'), 'Tether has no guest-agent vsock device');
  const cpu = spec.cpu_config;
  if (cpu && ((cpu.features_to_enable?.length ?? 0) > 0 || (cpu.kvm_capabilities_to_disable?.length ?? 0) > 0)) {
    throw unimplementedField(f('cpu_config'), 'CPU feature configuration is not supported');
  }

  const out: VmSpec = {
    id: { namespace, name },
    vcpu,
    memoryMb,
    kernelImage,
    kernelCmdline,
    initrdImage,
    volumes,
    interfaces,
    labels,
    metadata,
  };
  const tooBig = recordSizeViolation(out, prefix);
  if (tooBig) throw new InvalidArgumentError(tooBig.field, tooBig.message, { details: { limit: 'record' } });
  return out;
}

/**
 * The uid of a Get/Delete request. Throws INVALID_ARGUMENT (field `uid`) when it is empty.
 * Unknown uids are not checked here: the service answers NOT_FOUND.
 */
export function uidFromRequest(req: UidRequestIn | null | undefined): string {
  const uid = req?.uid ?? '';
  if (uid === '') throw new InvalidArgumentError('uid', 'required');
  return uid;
}

/**
 * The {@link VmFilter} of a List request: an empty namespace lists every namespace; `name` filters
 * only when set and non-empty. Never throws (a filter that matches nothing is not an error).
 */
export function filterFromListRequest(req: ListMicroVmsRequestIn | null | undefined): VmFilter {
  const namespace = req?.namespace ?? '';
  const name = req?.name ?? '';
  return {
    ...(namespace !== '' ? { namespace } : {}),
    ...(name !== '' ? { name } : {}),
  };
}

function checkName(value: string | null | undefined, field: string): string {
  const v = value ?? '';
  if (v === '') throw new InvalidArgumentError(field, 'required');
  if (v.length > SPEC_LIMITS.maxNameLength) throw new InvalidArgumentError(field, `must be at most ${SPEC_LIMITS.maxNameLength} characters`);
  if (!NAME_RE.test(v)) {
    throw new InvalidArgumentError(field, `${JSON.stringify(v)} must consist of lowercase letters, digits and '-', starting and ending with a letter or digit`);
  }
  return v;
}

function checkIntRange(value: number | null | undefined, field: string, min: number, max: number): number {
  const v = value ?? 0;
  if (!Number.isInteger(v) || v < min || v > max) throw new InvalidArgumentError(field, `must be between ${min} and ${max}, got ${v}`);
  return v;
}

/**
 * Labels and metadata within the API's size limits (`VM_SIZE_LIMITS`, src/domain/codec/vm-limits.ts:
 * entries, key and value bytes, total bytes), which stay within what the record codec reads back.
 * The error names the map or the entry (`microvm.metadata["x"]`) and the limit.
 */
function checkMap(map: Readonly<Record<string, string>> | null | undefined, field: string, kind: 'labels' | 'metadata'): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(map ?? {})) {
    if (k === '') throw new InvalidArgumentError(field, 'keys must be non-empty');
    out[k] = v;
  }
  const bad = mapSizeViolation(out, kind, field);
  if (bad) throw new InvalidArgumentError(bad.field, bad.message, { details: { limit: kind } });
  return out;
}

/** '' allowed only when `allowEmpty` (then it means the built-in image). */
function checkImageName(value: string | null | undefined, field: string, allowEmpty: boolean): string {
  const v = value ?? '';
  if (v === '') {
    if (allowEmpty) return '';
    throw new InvalidArgumentError(field, 'required: the name of an image in the local image store');
  }
  if (v.length > SPEC_LIMITS.maxImageNameLength) throw new InvalidArgumentError(field, `must be at most ${SPEC_LIMITS.maxImageNameLength} characters`);
  if (!IMAGE_RE.test(v) || v.split('/').some((seg) => seg === '' || seg === '.' || seg === '..')) {
    throw new InvalidArgumentError(field, `${JSON.stringify(v)} is not a valid image name`);
  }
  return v;
}

function mapKernel(kernel: KernelIn | null | undefined, field: string): { kernelImage: string; kernelCmdline: Record<string, string> } {
  const kernelImage = checkImageName(kernel?.image, `${field}.image`, true);
  const kernelCmdline: Record<string, string> = {};
  let bytes = 0;
  for (const [k, v] of Object.entries(kernel?.cmdline ?? {})) {
    const kf = `${field}.cmdline[${JSON.stringify(k)}]`;
    if (!CMDLINE_KEY_RE.test(k)) throw new InvalidArgumentError(kf, 'key must be non-empty, without whitespace, \'=\' or \'"\'');
    if (!CMDLINE_VALUE_RE.test(v)) throw new InvalidArgumentError(kf, 'value must not contain whitespace or \'"\'');
    bytes += Buffer.byteLength(v === '' ? k : `${k}=${v}`) + 1;
    kernelCmdline[k] = v;
  }
  if (bytes > SPEC_LIMITS.maxCmdlineBytes) throw new InvalidArgumentError(`${field}.cmdline`, `must be at most ${SPEC_LIMITS.maxCmdlineBytes} bytes in total`);
  return { kernelImage, kernelCmdline };
}

function mapVolumes(root: VolumeIn | null | undefined, additional: readonly VolumeIn[] | null | undefined, prefix: string): VmVolume[] {
  const volumes: VmVolume[] = [mapVolume(root ?? {}, `${prefix}.root_volume`, true)];
  const list = additional ?? [];
  if (list.length > SPEC_LIMITS.maxAdditionalVolumes) {
    throw new InvalidArgumentError(`${prefix}.additional_volumes`, `at most ${SPEC_LIMITS.maxAdditionalVolumes} volumes`);
  }
  const seen = new Set([volumes[0]!.id]);
  list.forEach((vol, i) => {
    const field = `${prefix}.additional_volumes[${i}]`;
    const mapped = mapVolume(vol, field, false);
    if (seen.has(mapped.id)) throw new InvalidArgumentError(`${field}.id`, `duplicate volume id ${JSON.stringify(mapped.id)}`);
    seen.add(mapped.id);
    volumes.push(mapped);
  });
  return volumes;
}

function mapVolume(vol: VolumeIn, field: string, isRoot: boolean): VmVolume {
  const rawId = vol.id ?? '';
  const id = rawId === '' && isRoot ? DEFAULT_ROOT_VOLUME_ID : rawId;
  if (id === '') throw new InvalidArgumentError(`${field}.id`, 'required');
  if (!VOLUME_ID_RE.test(id)) {
    throw new InvalidArgumentError(`${field}.id`, `${JSON.stringify(id)} must be 1-63 letters, digits, '_', '.' or '-', starting with a letter or digit`);
  }

  const mountPoint = vol.mount_point ?? '';
  if (mountPoint !== '') {
    if (!mountPoint.startsWith('/') || /\s/.test(mountPoint) || mountPoint.split('/').some((seg) => seg === '.' || seg === '..')) {
      throw new InvalidArgumentError(`${field}.mount_point`, `${JSON.stringify(mountPoint)} must be an absolute path without '.' or '..' segments or whitespace`);
    }
  }

  const container = vol.source?.container_source ?? '';
  const virtiofs = vol.source?.virtiofs_source ?? '';
  if (container !== '' && virtiofs !== '') {
    throw new InvalidArgumentError(`${field}.source`, 'at most one of container_source and virtiofs_source may be set');
  }
  if (virtiofs !== '') throw unimplementedField(`${field}.source.virtiofs_source`, 'virtio-fs volumes are not supported; use container_source');
  const image = checkImageName(container, `${field}.source.container_source`, isRoot);

  if ((vol.partition_id ?? '') !== '') throw unimplementedField(`${field}.partition_id`, 'choosing the boot partition is not supported');
  const size = vol.size_in_mb ?? 0;
  if (size < 0) throw new InvalidArgumentError(`${field}.size_in_mb`, 'must not be negative');
  if (size !== 0) throw unimplementedField(`${field}.size_in_mb`, 'resizing volumes is not supported');

  return { id, image, readOnly: vol.is_read_only === true, isRoot };
}

function mapInterfaces(list: readonly NetworkInterfaceIn[] | null | undefined, field: string): VmInterface[] {
  const ifaces = list ?? [];
  if (ifaces.length > SPEC_LIMITS.maxInterfaces) throw new InvalidArgumentError(field, `at most ${SPEC_LIMITS.maxInterfaces} interfaces`);
  const names = new Set<string>();
  const macs = new Set<string>();
  return ifaces.map((iface, i) => {
    const f = `${field}[${i}]`;
    const name = iface.device_id ?? '';
    if (name === '') throw new InvalidArgumentError(`${f}.device_id`, 'required: the guest device name, e.g. eth0');
    if (!IFNAME_RE.test(name)) {
      throw new InvalidArgumentError(`${f}.device_id`, `${JSON.stringify(name)} is not a valid interface name (1-15 letters, digits, '_', '.', '-')`);
    }
    if (names.has(name)) throw new InvalidArgumentError(`${f}.device_id`, `duplicate interface ${JSON.stringify(name)}`);
    names.add(name);

    // Numbers appear only for values outside the enum (or hand-built objects): 0 and 1 are its members.
    const rawType = iface.type ?? 'MACVTAP';
    const type = rawType === 0 ? 'MACVTAP' : rawType === 1 ? 'TAP' : rawType;
    if (type === 'MACVTAP') throw unimplementedField(`${f}.type`, 'macvtap interfaces are not supported; set type to TAP');
    if (type !== 'TAP') throw new InvalidArgumentError(`${f}.type`, `unknown interface type ${JSON.stringify(type)}`);

    let guestMac: string | undefined;
    if ((iface.guest_mac ?? '') !== '') {
      guestMac = checkMac(iface.guest_mac!, `${f}.guest_mac`);
      if (macs.has(guestMac)) throw new InvalidArgumentError(`${f}.guest_mac`, `duplicate MAC ${guestMac}`);
      macs.add(guestMac);
    }

    if ((iface.overrides?.bridge_name ?? '') !== '') {
      throw unimplementedField(`${f}.overrides.bridge_name`, 'attaching taps to a bridge is not supported');
    }

    const out: { guestDeviceName: string; guestMac?: string; address?: string; gateway?: string } = { guestDeviceName: name };
    if (guestMac !== undefined) out.guestMac = guestMac;
    if (iface.address) {
      const { address, gateway } = checkStaticAddress(iface.address, `${f}.address`);
      out.address = address;
      if (gateway !== undefined) out.gateway = gateway;
    }
    return out;
  });
}

function checkMac(value: string, field: string): string {
  const mac = value.toLowerCase();
  if (!MAC_RE.test(mac)) throw new InvalidArgumentError(field, `${JSON.stringify(value)} is not a MAC address (xx:xx:xx:xx:xx:xx)`);
  const first = parseInt(mac.slice(0, 2), 16);
  if ((first & 1) === 1) throw new InvalidArgumentError(field, `${value} is a multicast address`);
  if (mac === '00:00:00:00:00:00') throw new InvalidArgumentError(field, 'must not be all zeros');
  return mac;
}

function parseIpv4(text: string): number | undefined {
  const m = IPV4_RE.exec(text);
  if (!m) return undefined;
  const octets = m.slice(1, 5).map(Number);
  if (octets.some((o, i) => o > 255 || String(o) !== m[i + 1])) return undefined;
  return ((octets[0]! << 24) | (octets[1]! << 16) | (octets[2]! << 8) | octets[3]!) >>> 0;
}

function checkStaticAddress(addr: { address?: string | null; gateway?: string | null; nameservers?: readonly string[] | null }, field: string): { address: string; gateway?: string } {
  const cidr = addr.address ?? '';
  if (cidr === '') throw new InvalidArgumentError(`${field}.address`, 'required: an IPv4 address in CIDR notation, e.g. 10.0.0.2/24');
  const slash = cidr.indexOf('/');
  const ipText = slash < 0 ? cidr : cidr.slice(0, slash);
  if (ipText.includes(':')) throw unimplementedField(`${field}.address`, 'IPv6 addresses are not supported');
  const ip = parseIpv4(ipText);
  const prefixText = slash < 0 ? '' : cidr.slice(slash + 1);
  const prefix = /^\d{1,2}$/.test(prefixText) ? Number(prefixText) : NaN;
  if (ip === undefined || !(prefix >= 1 && prefix <= 32)) {
    throw new InvalidArgumentError(`${field}.address`, `${JSON.stringify(cidr)} is not an IPv4 address in CIDR notation (e.g. 10.0.0.2/24)`);
  }
  if (prefix <= 30) {
    const hostMask = (2 ** (32 - prefix) - 1) >>> 0;
    const host = (ip & hostMask) >>> 0;
    if (host === 0 || host === hostMask) throw new InvalidArgumentError(`${field}.address`, `${cidr} is the network or broadcast address of its subnet`);
  }

  let gateway: string | undefined;
  const gwText = addr.gateway ?? '';
  if (gwText !== '') {
    const gwIpText = gwText.includes('/') ? gwText.slice(0, gwText.indexOf('/')) : gwText;
    if (gwIpText.includes(':')) throw unimplementedField(`${field}.gateway`, 'IPv6 gateways are not supported');
    const gwPrefix = gwText.includes('/') ? gwText.slice(gwText.indexOf('/') + 1) : '32';
    const gwIp = parseIpv4(gwIpText);
    if (gwIp === undefined || !/^\d{1,2}$/.test(gwPrefix) || Number(gwPrefix) > 32) {
      throw new InvalidArgumentError(`${field}.gateway`, `${JSON.stringify(gwText)} is not an IPv4 address`);
    }
    if (gwIp === ip) throw new InvalidArgumentError(`${field}.gateway`, 'must differ from the interface address');
    gateway = gwIpText;
  }

  if ((addr.nameservers?.length ?? 0) > 0) throw unimplementedField(`${field}.nameservers`, 'per-interface nameservers are not supported');
  return gateway === undefined ? { address: cidr } : { address: cidr, gateway };
}
