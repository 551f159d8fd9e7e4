/**
 * QcowVolumes against the real qemu-img. Without qemu-img this file FAILS (it never skips).
 * Everything lives in one temp dir, removed (and checked removed) at the end.
 */
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, readFile, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { overlayTempPrefix, QcowVolumes } from '../../src/adapters/disk/qcow-volumes.js';
import { expectCode } from '../support/expect-code.js';

let dir = '';
let base = '';
let baseQcow = '';
let stateDir = '';

function qemuImg(...args: string[]): string {
  return execFileSync('qemu-img', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

function info(path: string): Record<string, unknown> {
  return JSON.parse(qemuImg('info', '-U', '--output=json', path)) as Record<string, unknown>;
}


/** Why the fixtures could not be built (e.g. qemu-img missing), or undefined. */
let setupError: string | undefined;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'tether-test-volumes-'));
  try {
    qemuImg('--version');
  } catch (err) {
    setupError = `qemu-img is not usable (install qemu-utils): ${String(err)}`;
    return;
  }
  base = join(dir, 'base.raw');
  qemuImg('create', '-q', '-f', 'raw', base, '4M');
  baseQcow = join(dir, 'base.qcow2');
  qemuImg('create', '-q', '-f', 'qcow2', baseQcow, '4M');
  stateDir = join(dir, 'state');
  await mkdir(join(stateDir, 'vm1'), { recursive: true });
});

// In beforeEach, not beforeAll: a failing beforeAll makes vitest count the tests as skipped; here
// every test FAILS with the reason.
beforeEach(() => {
  if (setupError) throw new Error(setupError);
});

afterAll(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
  expect(dir === '' || !existsSync(dir)).toBe(true);
});

describe('QcowVolumes (real qemu-img)', () => {
  const volumes = () => new QcowVolumes({ root: stateDir });

  it('creates a qcow2 overlay over a raw base, pinning the base format', async () => {
    const v = volumes();
    const overlay = join(stateDir, 'vm1', 'root.qcow2');
    const t0 = performance.now();
    await v.createOverlay(base, overlay);
    const createMs = performance.now() - t0;
    const i = info(overlay);
    expect(i.format).toBe('qcow2');
    expect(i['backing-filename']).toBe(base);
    expect(i['backing-filename-format']).toBe('raw');
    expect(i['virtual-size']).toBe(4 * 1024 * 1024);
    expect(await v.isOverlay(overlay, base)).toBe(true);
    expect(await v.isOverlay(overlay, baseQcow)).toBe(false);
    // No temp file left behind.
    expect((await readdir(join(stateDir, 'vm1'))).filter((n) => n.startsWith('.'))).toEqual([]);

    // Idempotent: the existing overlay (with guest data in it) is kept as is.
    qemuImg('resize', '-q', overlay, '8M');
    await v.createOverlay(base, overlay);
    expect(info(overlay)['virtual-size']).toBe(8 * 1024 * 1024);

    const t1 = performance.now();
    await v.deleteOverlay(overlay);
    const deleteMs = performance.now() - t1;
    expect(existsSync(overlay)).toBe(false);
    expect(await v.isOverlay(overlay, base)).toBe(false);
    // Missing: success.
    await v.deleteOverlay(overlay);
    await v.deleteOverlay(join(stateDir, 'vm1', 'never-existed.qcow2'));
    await v.deleteOverlay(join(stateDir, 'no-such-dir', 'x.qcow2'));
    console.log(`[volumes] createOverlay ${createMs.toFixed(1)} ms, deleteOverlay ${deleteMs.toFixed(1)} ms`);
  });

  it('detects a qcow2 base too', async () => {
    const v = volumes();
    expect(await v.baseFormat(base)).toBe('raw');
    expect(await v.baseFormat(baseQcow)).toBe('qcow2');
    const overlay = join(stateDir, 'vm1', 'over-qcow.qcow2');
    await v.createOverlay(baseQcow, overlay);
    expect(info(overlay)['backing-filename-format']).toBe('qcow2');
    expect(await v.isOverlay(overlay, baseQcow)).toBe(true);
    await v.deleteOverlay(overlay);
  });

  it('concurrent creates of one overlay yield one valid overlay', async () => {
    const v = volumes();
    const overlay = join(stateDir, 'vm1', 'race.qcow2');
    await Promise.all([v.createOverlay(base, overlay), v.createOverlay(base, overlay), v.createOverlay(base, overlay)]);
    expect(await v.isOverlay(overlay, base)).toBe(true);
    expect((await readdir(join(stateDir, 'vm1'))).filter((n) => n.startsWith('.'))).toEqual([]);
    await v.deleteOverlay(overlay);
  });

  it('refuses to overwrite or delete what is not its overlay', async () => {
    const v = volumes();
    const vmDir = join(stateDir, 'vm1');
    const plain = join(vmDir, 'notes.txt');
    await writeFile(plain, 'operator data\n');
    await expectCode(v.createOverlay(base, plain), 'ALREADY_EXISTS');
    await expectCode(v.deleteOverlay(plain), 'NOT_OWNED');
    expect(await readFile(plain, 'utf8')).toBe('operator data\n');

    // An empty file (never produced by createOverlay, which publishes only synced, complete files).
    const empty = join(vmDir, 'empty.qcow2');
    await writeFile(empty, '');
    await expectCode(v.createOverlay(base, empty), 'ALREADY_EXISTS');
    await expectCode(v.deleteOverlay(empty), 'NOT_OWNED');
    expect(existsSync(empty)).toBe(true);

    // An overlay of another base is not overwritten.
    const other = join(vmDir, 'other.qcow2');
    await v.createOverlay(baseQcow, other);
    await expectCode(v.createOverlay(base, other), 'ALREADY_EXISTS');
    expect(await v.isOverlay(other, baseQcow)).toBe(true);
    await v.deleteOverlay(other);

    // Symlinks and directories are never followed or removed.
    const link = join(vmDir, 'link.qcow2');
    await symlink(baseQcow, link);
    expect(await v.isOverlay(link, base)).toBe(false);
    await expectCode(v.deleteOverlay(link), 'NOT_OWNED');
    expect((await stat(baseQcow)).isFile()).toBe(true);
    const sub = join(vmDir, 'sub.qcow2');
    await mkdir(sub);
    await expectCode(v.deleteOverlay(sub), 'NOT_OWNED');

    // Outside the root: refused both ways; the base itself is never deletable.
    await expectCode(v.deleteOverlay(baseQcow), 'NOT_OWNED');
    await expectCode(v.deleteOverlay(join(stateDir, '..', 'base.qcow2')), 'NOT_OWNED');
    await expectCode(v.createOverlay(base, join(dir, 'outside.qcow2')), 'INVALID_ARGUMENT');
    expect(existsSync(join(dir, 'outside.qcow2'))).toBe(false);
    expect(existsSync(baseQcow)).toBe(true);
  });

  it('sweeps a temp file left by a crashed create', async () => {
    const v = volumes();
    const overlay = join(stateDir, 'vm1', 'crashed.qcow2');
    const leftover = join(stateDir, 'vm1', `${overlayTempPrefix(overlay)}999999-deadbeef`);
    qemuImg('create', '-q', '-f', 'qcow2', '-F', 'raw', '-b', base, leftover);
    await v.deleteOverlay(overlay);
    expect(existsSync(leftover)).toBe(false);
  });

  it('reports bad input and failures with codes', async () => {
    const v = volumes();
    await expectCode(v.createOverlay('relative/base.raw', join(stateDir, 'vm1', 'x.qcow2')), 'INVALID_ARGUMENT');
    await expectCode(v.createOverlay(base, 'relative.qcow2'), 'INVALID_ARGUMENT');
    await expectCode(v.createOverlay(join(dir, 'missing.raw'), join(stateDir, 'vm1', 'x.qcow2')), 'NOT_FOUND');
    // Directory of the overlay missing: qemu-img fails, stderr is in the message.
    const err = await expectCode(v.createOverlay(base, join(stateDir, 'nodir', 'x.qcow2')), 'VOLUME_ERROR');
    expect(err.message).toMatch(/qemu-img/);
    const broken = new QcowVolumes({ qemuImgPath: '/nonexistent/qemu-img' });
    await expectCode(broken.createOverlay(base, join(stateDir, 'vm1', 'y.qcow2')), 'VOLUME_ERROR');
    expect(existsSync(join(stateDir, 'vm1', 'x.qcow2'))).toBe(false);
    expect(existsSync(join(stateDir, 'vm1', 'y.qcow2'))).toBe(false);
  });
});
