import { closeSync, mkdirSync, openSync } from 'node:fs';
import { dirname } from 'node:path';
import Database from 'better-sqlite3';
import { TetherError } from '../../domain/errors.js';
import type { VmPhase, VmRecord, VmSpec } from '../../domain/vm.js';
import type {
  DesiredState,
  Inventory,
  InventoryEvent,
  ResourceKind,
  ResourceRow,
  VmRow,
} from '../../ports/inventory.js';
import { PRIVATE_DIR_MODE, PRIVATE_FILE_MODE, tightenFile } from '../fs/private-files.js';

const SCHEMA = `
CREATE TABLE IF NOT EXISTS vms (
  uid TEXT PRIMARY KEY,
  namespace TEXT NOT NULL,
  name TEXT NOT NULL,
  spec TEXT NOT NULL,
  phase TEXT NOT NULL,
  desired TEXT NOT NULL,
  error TEXT,
  nics TEXT NOT NULL DEFAULT '[]',
  created_at INTEGER NOT NULL,
  updated_at INTEGER NOT NULL,
  generation INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS vms_by_name ON vms(namespace, name);
CREATE TABLE IF NOT EXISTS resources (
  vm_uid TEXT NOT NULL,
  kind TEXT NOT NULL,
  key TEXT NOT NULL,
  state TEXT NOT NULL,
  detail TEXT NOT NULL,
  updated_at INTEGER NOT NULL,
  PRIMARY KEY (vm_uid, kind, key)
);
CREATE TABLE IF NOT EXISTS events (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  at INTEGER NOT NULL,
  kind TEXT NOT NULL,
  vm_uid TEXT,
  detail TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
`;

interface VmDbRow {
  uid: string;
  spec: string;
  phase: string;
  desired: string;
  error: string | null;
  nics: string;
  created_at: number;
  updated_at: number;
  generation: number;
}

interface ResourceDbRow {
  vm_uid: string;
  kind: string;
  key: string;
  state: string;
  detail: string;
  updated_at: number;
}

/** Events kept in the inventory; older ones are pruned on insert (bounded retention). */
export const MAX_EVENTS = 10_000;

/**
 * {@link Inventory} on SQLite (better-sqlite3, WAL, synchronous=FULL so that a row written
 * before a resource is created survives a power cut, not only a process crash).
 *
 * Invariant (least privilege): the database file is 0600 before SQLite first opens it (created
 * so, or tightened when found looser), so the `-wal` and `-shm` files SQLite creates beside it take
 * the same mode (SQLite copies the database's mode to them); existing ones found looser are
 * tightened too. VM metadata (which may hold bootstrap secrets) is readable by the agent's user only.
 */
export class SqliteInventory implements Inventory {
  private readonly db: Database.Database;

  constructor(path: string) {
    try {
      if (path !== ':memory:') {
        mkdirSync(dirname(path), { recursive: true, mode: PRIVATE_DIR_MODE });
        closeSync(openSync(path, 'a', PRIVATE_FILE_MODE));
        for (const f of [path, `${path}-wal`, `${path}-shm`, `${path}-journal`]) tightenFile(f);
      }
      this.db = new Database(path);
      this.db.pragma('journal_mode = WAL');
      this.db.pragma('synchronous = FULL');
      this.db.pragma('busy_timeout = 5000');
      this.db.exec(SCHEMA);
      // WAL mode just created the -wal/-shm files (with the database's mode): checked anyway.
      if (path !== ':memory:') for (const f of [`${path}-wal`, `${path}-shm`]) tightenFile(f);
    } catch (cause) {
      throw new TetherError('INVENTORY_ERROR', `opening inventory ${path}: ${String(cause)}`, { cause });
    }
  }

  addVm(uid: string, spec: VmSpec, now: number): VmRow {
    const run = this.db.transaction(() => {
      const clash = this.db
        .prepare(`SELECT uid FROM vms WHERE namespace = ? AND name = ? AND desired = 'present'`)
        .get(spec.id.namespace, spec.id.name) as { uid: string } | undefined;
      if (clash) {
        throw new TetherError('ALREADY_EXISTS', `microvm ${spec.id.namespace}/${spec.id.name} already exists (uid ${clash.uid})`, {
          details: { uid: clash.uid },
        });
      }
      this.db
        .prepare(
          `INSERT INTO vms (uid, namespace, name, spec, phase, desired, created_at, updated_at, generation)
           VALUES (?, ?, ?, ?, 'pending', 'present', ?, ?, 1)`,
        )
        .run(uid, spec.id.namespace, spec.id.name, JSON.stringify(spec), now, now);
    });
    run();
    return this.getVm(uid)!;
  }

  getVm(uid: string): VmRow | undefined {
    const row = this.db.prepare(`SELECT * FROM vms WHERE uid = ?`).get(uid) as VmDbRow | undefined;
    return row ? toVm(row) : undefined;
  }

  listVms(): VmRow[] {
    const rows = this.db.prepare(`SELECT * FROM vms ORDER BY namespace, name, created_at`).all() as VmDbRow[];
    return rows.map(toVm);
  }

  setPhase(uid: string, phase: VmPhase, now: number, error?: string): void {
    this.updateVm(uid, `phase = ?, error = ?`, [phase, error ?? null], now);
  }

  setDesired(uid: string, desired: DesiredState, now: number): void {
    this.updateVm(uid, `desired = ?`, [desired], now);
  }

  setNics(uid: string, nics: VmRecord['nics'], now: number): void {
    this.updateVm(uid, `nics = ?`, [JSON.stringify(nics)], now);
  }

  removeVm(uid: string): void {
    const left = this.listResources(uid);
    if (left.length > 0) {
      throw new TetherError('FAILED_PRECONDITION', `vm ${uid} still has ${left.length} resource row(s): ${left.map((r) => `${r.kind}:${r.key}`).join(', ')}`);
    }
    this.db.prepare(`DELETE FROM vms WHERE uid = ?`).run(uid);
  }

  putResource(row: Omit<ResourceRow, 'updatedAt'>, now: number): void {
    this.db
      .prepare(
        `INSERT INTO resources (vm_uid, kind, key, state, detail, updated_at) VALUES (?, ?, ?, ?, ?, ?)
         ON CONFLICT (vm_uid, kind, key) DO UPDATE SET state = excluded.state, detail = excluded.detail, updated_at = excluded.updated_at`,
      )
      .run(row.vmUid, row.kind, row.key, row.state, JSON.stringify(row.detail), now);
  }

  getResource(vmUid: string, kind: ResourceKind, key: string): ResourceRow | undefined {
    const row = this.db
      .prepare(`SELECT * FROM resources WHERE vm_uid = ? AND kind = ? AND key = ?`)
      .get(vmUid, kind, key) as ResourceDbRow | undefined;
    return row ? toResource(row) : undefined;
  }

  listResources(vmUid?: string): ResourceRow[] {
    const rows = (
      vmUid === undefined
        ? this.db.prepare(`SELECT * FROM resources ORDER BY vm_uid, kind, key`).all()
        : this.db.prepare(`SELECT * FROM resources WHERE vm_uid = ? ORDER BY kind, key`).all(vmUid)
    ) as ResourceDbRow[];
    return rows.map(toResource);
  }

  deleteResource(vmUid: string, kind: ResourceKind, key: string): void {
    this.db.prepare(`DELETE FROM resources WHERE vm_uid = ? AND kind = ? AND key = ?`).run(vmUid, kind, key);
  }

  addEvent(kind: string, now: number, detail: Record<string, unknown>, vmUid?: string): number {
    const info = this.db
      .prepare(`INSERT INTO events (at, kind, vm_uid, detail) VALUES (?, ?, ?, ?)`)
      .run(now, kind, vmUid ?? null, JSON.stringify(detail));
    const id = Number(info.lastInsertRowid);
    if (id % 100 === 0) this.db.prepare(`DELETE FROM events WHERE id <= ?`).run(id - MAX_EVENTS);
    return id;
  }

  listEvents(limit: number, vmUid?: string): InventoryEvent[] {
    const rows = (
      vmUid === undefined
        ? this.db.prepare(`SELECT * FROM events ORDER BY id DESC LIMIT ?`).all(limit)
        : this.db.prepare(`SELECT * FROM events WHERE vm_uid = ? ORDER BY id DESC LIMIT ?`).all(vmUid, limit)
    ) as { id: number; at: number; kind: string; vm_uid: string | null; detail: string }[];
    return rows.map((r) => ({
      id: r.id,
      at: r.at,
      kind: r.kind,
      ...(r.vm_uid === null ? {} : { vmUid: r.vm_uid }),
      detail: JSON.parse(r.detail) as Record<string, unknown>,
    }));
  }

  getMeta(key: string): string | undefined {
    const row = this.db.prepare(`SELECT value FROM meta WHERE key = ?`).get(key) as { value: string } | undefined;
    return row?.value;
  }

  setMeta(key: string, value: string): void {
    this.db.prepare(`INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value`).run(key, value);
  }

  close(): void {
    this.db.close();
  }

  private updateVm(uid: string, set: string, values: unknown[], now: number): void {
    const info = this.db
      .prepare(`UPDATE vms SET ${set}, updated_at = ?, generation = generation + 1 WHERE uid = ?`)
      .run(...values, now, uid);
    if (info.changes === 0) throw new TetherError('NOT_FOUND', `vm ${uid} not found in inventory`);
  }
}

function toVm(row: VmDbRow): VmRow {
  return {
    uid: row.uid,
    spec: JSON.parse(row.spec) as VmSpec,
    phase: row.phase as VmPhase,
    desired: row.desired as DesiredState,
    ...(row.error === null ? {} : { error: row.error }),
    nics: JSON.parse(row.nics) as VmRecord['nics'],
    createdAt: row.created_at,
    updatedAt: row.updated_at,
    generation: row.generation,
  };
}

function toResource(row: ResourceDbRow): ResourceRow {
  return {
    vmUid: row.vm_uid,
    kind: row.kind as ResourceKind,
    key: row.key,
    state: row.state as ResourceRow['state'],
    detail: JSON.parse(row.detail) as Record<string, unknown>,
    updatedAt: row.updated_at,
  };
}
