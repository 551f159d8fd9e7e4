/**
 * One zod schema per record kind of the keyspace (ARCHITECTURE.md section 2). Used only through
 * the codec (../codec.ts), which adds the key checks, the size bound and the error shape.
 *
 * Rules shared by every schema:
 * - objects are STRICT: an unknown field is refused, never stripped. A field this version does not
 *   know may carry a meaning it would silently ignore (a newer safety flag), and stripping it would
 *   erase it on the next read-modify-write. A reader that meets a newer writer's record therefore
 *   skips it visibly (named error) until it is upgraded: upgrade readers (agents, controllers, CLI)
 *   before a writer starts writing a new field.
 * - every name that reaches a path, a process mark, a device or a command line matches its alphabet
 *   (./names.ts): no `/`, no `..`, no NUL, bounded;
 * - every number is finite and bounded; every string and list is bounded.
 *
 * The compile-time checks at the end of this file make `tsc` fail when a domain type gains a field
 * or an event kind that its schema does not know: add it here too.
 */
import * as z from 'zod';
import type { ClusterEvent } from '../cluster-event.js';
import type { ClusterVmRecord } from '../cluster-vm.js';
import type { GcTimings } from '../gc-timing.js';
import type { HostRecord } from '../host-record.js';
import type { VmSpec } from '../vm.js';
import {
  CMDLINE_KEY_RE,
  CMDLINE_VALUE_RE,
  FREE_TEXT_RE,
  IPV4_CIDR_RE,
  IPV4_RE,
  MAC_RE,
  PRINTABLE_RE,
  RECORD_LIMITS as L,
  isImageName,
  isName,
  nameRule,
  utf8Length,
  type NameKind,
} from './names.js';
import { isPeerAddress, PEER_ADDRESS_RULE } from './peer-address.js';

// ---- building blocks --------------------------------------------------------------------------

/** A name of `kind` (see names.ts); the length is checked first so a huge string fails cheaply. */
export const nameOf = (kind: NameKind) =>
  z
    .string()
    .max(128, { message: `too long: ${nameRule(kind)}`, abort: true })
    .refine((v) => isName(kind, v), { message: nameRule(kind) });

/** One line of text: bounded, no control characters. */
const text = (max: number) => z.string().max(max).regex(PRINTABLE_RE, 'must not contain control characters');
/** Free text (reasons, details, messages): bounded, no control characters but tab and newline. */
const freeText = (max: number) => z.string().max(max).regex(FREE_TEXT_RE, 'must not contain control characters other than tab and newline');

const counter = z.int().min(0).max(L.maxCounter);
const wallMs = z.number().min(0).max(L.maxWallMs);
const duration = z.number().min(0).max(L.maxDurationMs);
const share = z.number().min(0).max(1);

const FORBIDDEN_KEYS = new Set(['__proto__', 'constructor', 'prototype']);

/** A string map (labels, metadata): bounded entries, non-empty printable keys, bounded values. */
const stringMap = z
  .record(
    z
      .string()
      .min(1)
      .max(L.maxMapKeyLength)
      .regex(PRINTABLE_RE, 'keys must not contain control characters')
      .refine((k) => !FORBIDDEN_KEYS.has(k), { message: 'reserved key' }),
    z.string().max(L.maxMapValueLength),
  )
  .refine((m) => Object.keys(m).length <= L.maxMapEntries, { message: `at most ${L.maxMapEntries} entries` });

/** An image name, or '' (the built-in image). */
const imageOrBuiltin = z
  .string()
  .max(255)
  .refine((v) => v === '' || isImageName(v), { message: "must be an image name: '/'-separated segments of letters, digits, '.', '_', '-', ':', '@', '+', none empty, '.' or '..'" });

/** `<namespace>/<name>` of a VM (a key under `vms/`, as events carry it). */
export const vmKeySchema = z
  .string()
  .max(128)
  .refine((v) => {
    const parts = v.split('/');
    return parts.length === 2 && isName('namespace', parts[0]) && isName('name', parts[1]);
  }, { message: 'must be <namespace>/<name>, both DNS labels' });

const hostId = nameOf('host-id');

// ---- VM spec ----------------------------------------------------------------------------------

const volumeSchema = z
  .strictObject({
    id: nameOf('volume-id'),
    image: imageOrBuiltin,
    readOnly: z.boolean(),
    isRoot: z.boolean(),
  })
  .superRefine((v, ctx) => {
    if (v.image === '' && !v.isRoot) ctx.addIssue({ code: 'custom', path: ['image'], message: 'required for a volume that is not the root volume' });
  });

const interfaceSchema = z.strictObject({
  guestDeviceName: nameOf('ifname'),
  guestMac: z
    .string()
    .max(17)
    .regex(MAC_RE, 'must be a unicast MAC address xx:xx:xx:xx:xx:xx (lowercase)')
    .refine((m) => m !== '00:00:00:00:00:00', { message: 'must not be all zeros' })
    .optional(),
  address: z.string().max(18).regex(IPV4_CIDR_RE, 'must be an IPv4 address in CIDR form').optional(),
  gateway: z.string().max(15).regex(IPV4_RE, 'must be an IPv4 address').optional(),
});

const cmdlineSchema = z
  .record(
    z.string().regex(CMDLINE_KEY_RE, "keys must be 1-256 chars without whitespace, '=', '\"' or control characters"),
    z.string().regex(CMDLINE_VALUE_RE, "values must be at most 1024 chars without whitespace, '\"' or control characters"),
  )
  .refine((m) => Object.entries(m).reduce((n, [k, v]) => n + utf8Length(v === '' ? k : `${k}=${v}`) + 1, 0) <= L.maxCmdlineBytes, {
    message: `must be at most ${L.maxCmdlineBytes} bytes in total`,
  });

/** {@link VmSpec}, with the API's rules (api/grpc/spec-mapping.ts) re-checked. */
export const vmSpecSchema = z
  .strictObject({
    id: z.strictObject({ namespace: nameOf('namespace'), name: nameOf('name') }),
    vcpu: z.int().min(L.minVcpu).max(L.maxVcpu),
    memoryMb: z.int().min(L.minMemoryMb).max(L.maxMemoryMb),
    kernelImage: imageOrBuiltin,
    kernelCmdline: cmdlineSchema,
    initrdImage: imageOrBuiltin,
    volumes: z.array(volumeSchema).max(L.maxVolumes),
    interfaces: z.array(interfaceSchema).max(L.maxInterfaces),
    labels: stringMap,
    metadata: stringMap,
  })
  .superRefine((s, ctx) => {
    const ids = new Set<string>();
    let roots = 0;
    s.volumes.forEach((v, i) => {
      if (ids.has(v.id)) ctx.addIssue({ code: 'custom', path: ['volumes', i, 'id'], message: 'duplicate volume id' });
      ids.add(v.id);
      if (v.isRoot && ++roots > 1) ctx.addIssue({ code: 'custom', path: ['volumes', i, 'isRoot'], message: 'more than one root volume' });
    });
    const names = new Set<string>();
    const macs = new Set<string>();
    s.interfaces.forEach((n, i) => {
      if (names.has(n.guestDeviceName)) ctx.addIssue({ code: 'custom', path: ['interfaces', i, 'guestDeviceName'], message: 'duplicate interface name' });
      names.add(n.guestDeviceName);
      if (n.guestMac !== undefined) {
        if (macs.has(n.guestMac)) ctx.addIssue({ code: 'custom', path: ['interfaces', i, 'guestMac'], message: 'duplicate MAC' });
        macs.add(n.guestMac);
      }
    });
  });

// ---- host record and alive value --------------------------------------------------------------

const timingsSchema = z.strictObject({
  ttl: duration,
  heartbeatInterval: duration,
  detachAfter: duration,
  watchdogTimeout: duration,
  stopGrace: duration,
  killTimeout: duration,
  fenceWindow: duration,
  clockDriftMargin: duration,
  electionTolerance: duration,
});

/** A machine id (`/etc/machine-id`: 32 hex digits; a boot id: a UUID): bounded, a safe alphabet. */
const machineIdSchema = z.string().min(1).max(L.maxMachineIdLength).regex(/^[A-Za-z0-9._:-]+$/, "must be letters, digits, '.', '_', ':' or '-'");

/** `hosts/<id>/record`: {@link HostRecord}. */
export const hostRecordSchema = z.strictObject({
  hostId,
  state: z.enum(['attached', 'detached', 'fenced', 'ready', 'retired']),
  epoch: counter,
  timings: timingsSchema,
  hold: z.boolean(),
  holdSeen: z.boolean().optional(),
  draining: z.boolean().optional(),
  heldAtDetach: z.boolean().optional(),
  detachedAt: wallMs.optional(),
  fenceDeadline: wallMs.optional(),
  capacity: z.strictObject({ vcpu: z.int().min(0).max(L.maxHostVcpu), memoryMb: z.int().min(0).max(L.maxHostMemoryMb) }),
  labels: stringMap,
  agentVersion: text(128),
  machineId: machineIdSchema.optional(),
  peerAddress: z.string().max(300).refine(isPeerAddress, { message: PEER_ADDRESS_RULE }).optional(),
  freezeContractSeen: counter.optional(),
  updatedAt: wallMs,
});

/** The value of `hosts/<id>/alive` (the lease it is on comes from etcd, not from the value). */
export const aliveValueSchema = z.strictObject({
  epoch: counter,
  agentVersion: text(128),
  /** The agent instance that wrote it (absent when written by an older agent). */
  agentId: nameOf('agent-id').optional(),
  /** The machine the writer runs on (absent when written by an older agent). */
  machineId: machineIdSchema.optional(),
  /** Human description of the writer (pid, machine, state dir). */
  holder: text(L.maxTextLength).optional(),
});

/** The value of `hosts/<id>/alive`. */
export type AliveValue = z.infer<typeof aliveValueSchema>;

// ---- cluster VM record ------------------------------------------------------------------------

/** `vms/<ns>/<name>`: {@link ClusterVmRecord}. */
export const clusterVmSchema = z.strictObject({
  uid: nameOf('uid'),
  spec: vmSpecSchema,
  hostId: hostId.optional(),
  hostEpoch: counter.optional(),
  phase: z.enum(['pending', 'creating', 'running', 'stopped', 'failed', 'deleting', 'lost']),
  generation: counter,
  restartPolicy: z.enum(['reschedule', 'none']).optional(),
  drain: z.boolean().optional(),
  reason: freeText(L.maxTextLength).optional(),
  updatedAt: wallMs.optional(),
});

// ---- events -----------------------------------------------------------------------------------

const base = { at: wallMs, detail: freeText(L.maxDetailLength) };
const ev = <K extends string, S extends z.ZodRawShape>(kind: K, shape: S) => z.strictObject({ kind: z.literal(kind), ...base, ...shape });

/** `events/<ms>-<rand>`: {@link ClusterEvent}. */
export const clusterEventSchema = z.discriminatedUnion('kind', [
  ev('controller-elected', { controllerId: text(256) }),
  ev('host-detached', {
    hostId,
    epoch: counter,
    fenceDeadline: wallMs,
    heldAtDetach: z.boolean(),
    termChange: z.strictObject({ term: counter, extendedByMs: duration }).optional(),
  }),
  ev('host-returned', { hostId, epoch: counter }),
  ev('host-fence-blocked', { hostId, epoch: counter, blockers: z.array(z.enum(['held', 'held-at-detach', 'unsafe-timings'])).max(8) }),
  ev('host-unsafe-timings', { hostId, epoch: counter, violations: freeText(L.maxTextLength) }),
  ev('fence-deadline-extended', { hostId, epoch: counter, from: wallMs.nullable(), to: wallMs, why: z.enum(['takeover', 'raft-term-change']).optional() }),
  ev('host-fenced', { hostId, epoch: counter, by: z.enum(['controller', 'operator']), lostVms: z.array(vmKeySchema).max(L.maxListEntries), lostVmCount: counter.optional() }),
  ev('host-vms-lost', { hostId, epoch: counter, by: z.enum(['controller', 'operator']), vms: z.array(vmKeySchema).max(L.maxListEntries) }),
  ev('controller-error', { hostId: hostId.nullable(), action: text(256), code: text(64) }),
  ev('host-hold-changed', { hostId, hold: z.boolean() }),
  ev('host-retired', { hostId, epoch: counter }),
  ev('host-removed', { hostId }),
  ev('freeze-entered', { detached: counter, total: counter, limit: share }),
  ev('freeze-lifted', { detached: counter, total: counter, resumeAt: wallMs }),
  ev('freeze-resumed', {}),
  ev('vm-lost', { vm: vmKeySchema, hostId, hostEpoch: counter, hostRejoinedEpoch: counter }),
  ev('vm-rescheduled', { vm: vmKeySchema, fromHost: hostId.nullable(), toHost: hostId, uid: nameOf('uid') }),
  ev('vm-pending', { vm: vmKeySchema, reason: freeText(L.maxTextLength) }),
  ev('vm-lost-kept', { vm: vmKeySchema, hostId: hostId.nullable() }),
]);

// ---- controller values ------------------------------------------------------------------------

/** `controller/status`: the controller's published status document. */
export const controllerStatusSchema = z.strictObject({
  controllerId: text(256),
  leaderSince: wallMs,
  at: wallMs,
  freeze: z.strictObject({
    mode: z.enum(['normal', 'frozen', 'resuming']),
    detached: counter,
    total: counter,
    limit: share,
    resumeAt: wallMs.optional(),
    reason: freeText(L.maxTextLength).optional(),
  }),
  hosts: z
    .array(
      z.strictObject({
        hostId,
        fenceAt: wallMs.optional(),
        blocked: freeText(L.maxTextLength).optional(),
        unsafeTimings: freeText(L.maxTextLength).optional(),
      }),
    )
    .max(L.maxListEntries),
  failures: z
    .array(z.strictObject({ hostId: hostId.nullable(), action: text(256), code: text(64), message: freeText(L.maxTextLength), at: wallMs }))
    .max(1000)
    .optional(),
  store: z.strictObject({ version: text(64), assumption: freeText(L.maxTextLength) }).optional(),
});

/** `controller/leader`: who leads. */
export const leaderInfoSchema = z.strictObject({ candidateId: text(256), since: wallMs });

// ---- compile-time agreement with the domain types ---------------------------------------------

/** True when `A` is assignable to `B`. */
type Assignable<A, B> = [A] extends [B] ? true : false;
/** Every key of `T` (optional ones included) that `S` lacks. */
type MissingKeys<T, S> = Exclude<keyof T, keyof S>;
const agree = <_ extends true>(): void => undefined;

agree<Assignable<z.infer<typeof hostRecordSchema>, HostRecord>>();
agree<Assignable<MissingKeys<HostRecord, z.infer<typeof hostRecordSchema>>, never>>();
agree<Assignable<MissingKeys<GcTimings, z.infer<typeof timingsSchema>>, never>>();
agree<Assignable<z.infer<typeof clusterVmSchema>, ClusterVmRecord>>();
agree<Assignable<MissingKeys<ClusterVmRecord, z.infer<typeof clusterVmSchema>>, never>>();
agree<Assignable<z.infer<typeof vmSpecSchema>, VmSpec>>();
agree<Assignable<MissingKeys<VmSpec, z.infer<typeof vmSpecSchema>>, never>>();
agree<Assignable<z.infer<typeof clusterEventSchema>, ClusterEvent>>();
agree<Assignable<Exclude<ClusterEvent['kind'], z.infer<typeof clusterEventSchema>['kind']>, never>>();
type EventInfer = z.infer<typeof clusterEventSchema>;
agree<Assignable<{ [K in ClusterEvent['kind']]: MissingKeys<Extract<ClusterEvent, { kind: K }>, Extract<EventInfer, { kind: K }>> }[ClusterEvent['kind']], never>>();
