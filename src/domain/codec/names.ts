/**
 * The alphabets and bounds of every name that reaches a path, a process mark, a device name or a
 * command line. One place, used by the record codec (what etcd may hand us) and by the agent's path
 * builders (what the agent may turn into a path), so the two can never disagree.
 *
 * Invariant: a value accepted here contains no `/`, no NUL or other control character, is never
 * `.` or `..`, is never empty, and is bounded in length — so `<root>/<a>/<b>/<c>` built from accepted
 * segments always stays strictly under `<root>`.
 */

/** Longest free text of a record (reasons, messages). */
const RECORD_LIMITS_TEXT = 8192;

/** Host ids: letters, digits, `.`, `_`, `-` (the owner-mark alphabet, see adapters/qemu/owner-mark.ts), 1-63 chars, not `.` or `..`. */
export const HOST_ID_RE = /^[A-Za-z0-9._-]{1,63}$/;

/** VM namespaces and names: DNS labels, as the API accepts them (lowercase alnum and `-`, no leading/trailing `-`, 1-63 chars). */
export const VM_NAME_RE = /^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$/;

/**
 * VM uids: letters, digits and `-` (the owner-mark alphabet), starting with a letter or digit,
 * 1-64 chars. Tether makes 32 lowercase hex chars; tap names need exactly that (see tap-name.ts).
 */
export const VM_UID_RE = /^[A-Za-z0-9][A-Za-z0-9-]{0,63}$/;

/** Volume ids (part of an overlay's file name): 1-63 letters, digits, `_`, `.`, `-`, starting with a letter or digit. */
export const VOLUME_ID_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$/;

/** Linux interface names (guest device names, tap names): 1-15 chars, no `/`, `:`, `@` or whitespace. */
export const IFNAME_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$/;

/** Image names in the local image store: `/`-separated segments, none empty, `.` or `..`. */
export const IMAGE_RE = /^[A-Za-z0-9][A-Za-z0-9._\-/:@+]{0,254}$/;

/** Agent instance ids (a UUID today). */
export const AGENT_ID_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/;

/** Unicast MAC, lowercase. */
export const MAC_RE = /^[0-9a-f][02468ace](?::[0-9a-f]{2}){5}$/;

/** IPv4 host address in CIDR form. */
export const IPV4_CIDR_RE = /^(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\/(?:3[0-2]|[12]?\d)$/;

/** IPv4 address. */
export const IPV4_RE = /^(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)$/;

/** Kernel command-line keys (no whitespace, `=` or `"`) and values (no whitespace or `"`), as the API accepts them. */
export const CMDLINE_KEY_RE = /^[^\s="\p{Cc}]{1,256}$/u;
/** See {@link CMDLINE_KEY_RE}. */
export const CMDLINE_VALUE_RE = /^[^\s"\p{Cc}]{0,1024}$/u;

/** Printable text: no control characters (C0, DEL, C1). Bounded separately. */
export const PRINTABLE_RE = /^[^\p{Cc}]*$/u;

/** Free text (reasons, details, error messages): printable plus tab and newline; no ESC, NUL, CR or other controls. */
export const FREE_TEXT_RE = /^(?:[\t\n]|[^\p{Cc}])*$/u;

/**
 * `s` made acceptable as a record's free text: controls other than tab and newline replaced by `?`,
 * cut to `max` characters. Writers use it for text they do not control (an error message), so a
 * record never becomes unreadable because of what it quotes.
 */
export function toRecordText(s: string, max: number = RECORD_LIMITS_TEXT): string {
  // eslint-disable-next-line no-control-regex
  const clean = s.replace(/[\u0000-\u0008\u000b-\u001f\u007f-\u009f]/g, '?');
  return clean.length > max ? `${clean.slice(0, max - 1)}…` : clean;
}

/** Bounds of records read from etcd. Invariant: each is at least what the writers of the record produce. */
export const RECORD_LIMITS = {
  /** Largest raw value (UTF-8 bytes) decoded at all; etcd's own request limit is 1.5 MiB. */
  maxRecordBytes: 1024 * 1024,
  /** VM spec bounds (the API's, see api/grpc/spec-mapping.ts SPEC_LIMITS). */
  minVcpu: 1,
  maxVcpu: 32,
  minMemoryMb: 72,
  maxMemoryMb: 16384,
  maxInterfaces: 16,
  /** Root volume plus 16 additional ones. */
  maxVolumes: 17,
  /** Bytes of user kernel arguments. */
  maxCmdlineBytes: 1024,
  /** Entries of a labels / metadata map. */
  maxMapEntries: 1024,
  /** Length of a map key. */
  maxMapKeyLength: 1024,
  /** Length of a map value. */
  maxMapValueLength: 65536,
  /** Length of a one-line free text (reason, version, holder, ids of controllers). */
  maxTextLength: RECORD_LIMITS_TEXT,
  /** Length of a machine id (`/etc/machine-id` is 32 hex digits, a boot id 36 characters). */
  maxMachineIdLength: 128,
  /** Length of an event's `detail` (it may list every lost VM of a fenced host). */
  maxDetailLength: 262144,
  /** Entries of a list inside a record (lost VMs of an event, hosts of the status document). */
  maxListEntries: 100_000,
  /** Largest epoch / generation / count. */
  maxCounter: Number.MAX_SAFE_INTEGER,
  /** Largest wall-clock ms (Date's own limit, year 275760). */
  maxWallMs: 8.64e15,
  /** Largest duration in a host's published timings (30 days, ms). */
  maxDurationMs: 30 * 24 * 3600 * 1000,
  /** Largest host capacity: vCPUs. */
  maxHostVcpu: 65536,
  /** Largest host capacity: MiB of memory (64 TiB). */
  maxHostMemoryMb: 64 * 1024 * 1024,
} as const;

/** Kinds of name the agent turns into paths or marks, each with its alphabet. */
export type NameKind = 'host-id' | 'namespace' | 'name' | 'uid' | 'volume-id' | 'ifname' | 'agent-id';

const BY_KIND: Record<NameKind, { re: RegExp; what: string }> = {
  'host-id': { re: HOST_ID_RE, what: "1-63 letters, digits, '.', '_' or '-', not '.' or '..'" },
  namespace: { re: VM_NAME_RE, what: "a DNS label: 1-63 lowercase letters, digits or '-', starting and ending with a letter or digit" },
  name: { re: VM_NAME_RE, what: "a DNS label: 1-63 lowercase letters, digits or '-', starting and ending with a letter or digit" },
  uid: { re: VM_UID_RE, what: "1-64 letters, digits or '-', starting with a letter or digit" },
  'volume-id': { re: VOLUME_ID_RE, what: "1-63 letters, digits, '_', '.' or '-', starting with a letter or digit" },
  ifname: { re: IFNAME_RE, what: "1-15 letters, digits, '_', '.' or '-', starting with a letter or digit" },
  'agent-id': { re: AGENT_ID_RE, what: "1-128 letters, digits, '_', '.' or '-', starting with a letter or digit" },
};

/** True when `value` is a valid name of `kind` (see the module invariant). */
export function isName(kind: NameKind, value: unknown): value is string {
  return typeof value === 'string' && BY_KIND[kind].re.test(value) && value !== '.' && value !== '..';
}

/** Why a value is not a name of `kind`, for messages ("must be …"). */
export function nameRule(kind: NameKind): string {
  return `must be ${BY_KIND[kind].what}`;
}

/** True for an image name: {@link IMAGE_RE} with no empty, `.` or `..` segment. */
export function isImageName(value: string): boolean {
  return IMAGE_RE.test(value) && value.split('/').every((seg) => seg !== '' && seg !== '.' && seg !== '..');
}

/** UTF-8 byte length of `s`, without Node's Buffer (the domain imports nothing from Node). */
export function utf8Length(s: string): number {
  let n = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x80) n += 1;
    else if (c < 0x800) n += 2;
    else if (c >= 0xd800 && c <= 0xdbff && i + 1 < s.length && (s.charCodeAt(i + 1) & 0xfc00) === 0xdc00) {
      n += 4;
      i++;
    } else n += 3;
  }
  return n;
}

/**
 * A value made safe to quote in a message or log line: control characters escaped (JSON style) and
 * at most `max` characters kept, so a hostile key or field name can neither forge log lines nor
 * flood them.
 */
export function quoteForLog(value: string, max = 200): string {
  const head = value.slice(0, max);
  const escaped = PRINTABLE_RE.test(head) ? head : JSON.stringify(head).slice(1, -1);
  if (value.length <= max && escaped.length <= max) return escaped;
  return `${escaped.slice(0, max)}…(${value.length} chars)`;
}
