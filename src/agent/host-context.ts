import { isAbsolute, relative, resolve, sep } from 'node:path';
import { PRINTABLE_RE, isName, nameRule, quoteForLog, type NameKind } from '../domain/codec/names.js';
import { InvalidArgumentError } from '../domain/errors.js';
import type { Clock } from '../ports/clock.js';
import type { Files } from '../ports/files.js';
import type { ImageStore } from '../ports/images.js';
import type { Inventory } from '../ports/inventory.js';
import type { Logger } from '../ports/logger.js';
import type { Network } from '../ports/network.js';
import type { StopOptions, Vmm } from '../ports/vmm.js';
import type { Volumes } from '../ports/volumes.js';

/**
 * Everything the host-side plans need, passed by constructor (never looked up from a context
 * object at run time). One per agent process.
 */
export interface HostContext {
  readonly hostId: string;
  readonly clock: Clock;
  readonly inventory: Inventory;
  readonly vmm: Vmm;
  readonly network: Network;
  readonly volumes: Volumes;
  readonly images: ImageStore;
  readonly files: Files;
  readonly logger: Logger;
  /** How VMs are stopped when deleted. */
  readonly stop: StopOptions;
  /** How long a VM may take from process start to the ready marker. */
  readonly readyTimeoutMs: number;
}

/**
 * `<stateDir>/vm/<namespace>/<name>/<uid>`: the only place a VM's files live.
 *
 * Invariant: never builds a path from an unvalidated field. `namespace` and `name` must be DNS
 * labels and `uid` a VM uid (domain/codec/names.ts: no `/`, no `.` or `..`, no NUL, bounded), and
 * the result must resolve strictly under `<stateDir>/vm`; otherwise INVALID_ARGUMENT naming the
 * field (`spec.id.namespace`, `spec.id.name`, `uid`). A record from etcd cannot make it point at
 * `inventory.db`, another VM's folder or anything outside the state dir.
 */
export function vmDir(files: Files, namespace: string, name: string, uid: string): string {
  checkName('spec.id.namespace', 'namespace', namespace);
  checkName('spec.id.name', 'name', name);
  checkName('uid', 'uid', uid);
  return pathUnder(`${files.root}/vm`, [namespace, name, uid], 'spec.id');
}

/**
 * The VM folder a resource row's path belongs to: `key` must be that VM's own folder (`state-dir`)
 * or lie directly in it (`overlay`: `<vm folder>/<file>`), with a folder of the exact layout
 * `<stateDir>/vm/<ns>/<name>/<vmUid>` (valid names, the row's own uid). INVALID_ARGUMENT (field
 * `key`) otherwise: a row written from a hostile record before records were validated can never
 * make a delete step remove anything but that VM's own files.
 */
export function vmDirOfResource(files: Files, row: { readonly vmUid: string; readonly kind: 'state-dir' | 'overlay'; readonly key: string }): string {
  const prefix = `${files.root}/vm/`;
  const parts = row.key.startsWith(prefix) ? row.key.slice(prefix.length).split('/') : [];
  const want = row.kind === 'state-dir' ? 3 : 4;
  const [ns, name, uid, file] = parts;
  const ok =
    parts.length === want &&
    isName('namespace', ns) &&
    isName('name', name) &&
    uid === row.vmUid &&
    isName('uid', uid) &&
    (row.kind === 'state-dir' || (file !== undefined && file !== '.' && file !== '..' && file.length > 0 && file.length <= 255 && PRINTABLE_RE.test(file)));
  if (!ok) throw new InvalidArgumentError('key', `${row.kind} ${quoteForLog(row.key)} is not inside the folder ${prefix}<ns>/<name>/${quoteForLog(row.vmUid, 64)} of its VM; refusing to touch it`);
  return vmDir(files, ns!, name!, uid!);
}

/** `<root>/<segments…>`, checked to resolve strictly under `root` (INVALID_ARGUMENT naming `field` otherwise). */
export function pathUnder(root: string, segments: readonly string[], field: string): string {
  const path = [root, ...segments].join('/');
  const rel = relative(resolve(root), resolve(path));
  if (rel === '' || rel === '..' || rel.startsWith(`..${sep}`) || isAbsolute(rel)) {
    throw new InvalidArgumentError(field, `${quoteForLog(path)} does not stay under ${root}`);
  }
  return path;
}

function checkName(field: string, kind: NameKind, value: string): void {
  if (!isName(kind, value)) throw new InvalidArgumentError(field, `${JSON.stringify(quoteForLog(String(value), 80))} ${nameRule(kind)}`);
}
