/**
 * LocalImageStore on a real temp directory (no dependency on scripts/build-guest.sh having run).
 */
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import { homedir, tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { builtinGuestPaths, defaultCacheDir, isValidImageName, LocalImageStore } from '../../src/adapters/images/local-image-store.js';
import { InvalidArgumentError, NotFoundError, TetherError } from '../../src/domain/errors.js';

let dir = '';
let storeDir = '';
let cacheDir = '';

async function rejection(p: Promise<unknown>): Promise<TetherError> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(TetherError);
  return err as TetherError;
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'tether-test-images-'));
  storeDir = join(dir, 'store');
  cacheDir = join(dir, 'cache');
  for (const sub of ['kernels', 'initrds', 'disks']) await mkdir(join(storeDir, sub), { recursive: true });
  await writeFile(join(storeDir, 'kernels', 'vmlinux-6.1'), 'k');
  await writeFile(join(storeDir, 'initrds', 'tiny.img'), 'i');
  await writeFile(join(storeDir, 'disks', 'ubuntu_22.04-a'), 'd');
  await mkdir(join(storeDir, 'disks', 'a-directory'));
  await writeFile(join(dir, 'outside'), 'secret');
  await symlink(join(dir, 'outside'), join(storeDir, 'kernels', 'linked'));
  const guest = join(cacheDir, 'guest');
  await mkdir(guest, { recursive: true });
  await writeFile(join(guest, 'vmlinux'), 'K');
  await writeFile(join(guest, 'initrd.img'), 'I');
  await writeFile(join(guest, 'rootfs.img'), 'R');
});

afterAll(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
  expect(dir === '' || !existsSync(dir)).toBe(true);
});

describe('defaultCacheDir / builtinGuestPaths', () => {
  it('follows ${TETHER_CACHE_DIR:-$HOME/.cache/tether}', () => {
    expect(defaultCacheDir({ TETHER_CACHE_DIR: '/var/cache/t' })).toBe('/var/cache/t');
    expect(defaultCacheDir({ TETHER_CACHE_DIR: '', HOME: '/home/u' })).toBe('/home/u/.cache/tether');
    expect(defaultCacheDir({ HOME: '/home/u' })).toBe('/home/u/.cache/tether');
    expect(defaultCacheDir({})).toBe(join(homedir(), '.cache', 'tether'));
  });

  it('names the files scripts/build-guest.sh produces', () => {
    expect(builtinGuestPaths('/c')).toEqual({
      kernel: '/c/guest/vmlinux',
      initrd: '/c/guest/initrd.img',
      disk: '/c/guest/rootfs.img',
    });
  });
});

describe('LocalImageStore', () => {
  const store = () => new LocalImageStore({ storeDir, builtin: builtinGuestPaths(cacheDir) });

  it('resolves the built-in guest for "" and "builtin"', async () => {
    const s = store();
    for (const name of ['', 'builtin']) {
      expect(await s.kernel(name)).toEqual({ name: 'builtin', path: join(cacheDir, 'guest', 'vmlinux') });
      expect(await s.initrd(name)).toEqual({ name: 'builtin', path: join(cacheDir, 'guest', 'initrd.img') });
      expect(await s.disk(name)).toEqual({ name: 'builtin', path: join(cacheDir, 'guest', 'rootfs.img') });
    }
  });

  it('resolves named images in their kind directory only', async () => {
    const s = store();
    expect(await s.kernel('vmlinux-6.1')).toEqual({ name: 'vmlinux-6.1', path: join(storeDir, 'kernels', 'vmlinux-6.1') });
    expect(await s.initrd('tiny.img')).toEqual({ name: 'tiny.img', path: join(storeDir, 'initrds', 'tiny.img') });
    expect(await s.disk('ubuntu_22.04-a')).toEqual({ name: 'ubuntu_22.04-a', path: join(storeDir, 'disks', 'ubuntu_22.04-a') });
    // A symlink placed in the store by the operator is followed.
    expect((await s.kernel('linked')).path).toBe(join(storeDir, 'kernels', 'linked'));
    // Kinds do not mix.
    expect((await rejection(s.disk('vmlinux-6.1'))).code).toBe('NOT_FOUND');
  });

  it.each(['../outside', '..', '.', 'a/b', '/etc/passwd', 'x..y', 'a b', 'naïve', 'a\\b', 'x\n'])('refuses name %j', async (name) => {
    const err = await rejection(store().kernel(name));
    expect(err).toBeInstanceOf(InvalidArgumentError);
    expect(err.code).toBe('INVALID_ARGUMENT');
    expect((err as InvalidArgumentError).field).toBe('kernel');
    expect(isValidImageName(name)).toBe(false);
  });

  it('reports a missing named image as NOT_FOUND naming it', async () => {
    const s = store();
    const k = await rejection(s.kernel('foo'));
    expect(k).toBeInstanceOf(NotFoundError);
    expect(k.message).toContain('kernel image "foo"');
    expect((await rejection(s.initrd('bar'))).message).toContain('initrd image "bar"');
    const d = await rejection(s.disk('a-directory'));
    expect(d.code).toBe('NOT_FOUND');
    expect(d.message).toContain('disk image "a-directory"');
  });

  it('reports a missing built-in as FAILED_PRECONDITION pointing at build-guest.sh', async () => {
    const s = new LocalImageStore({ storeDir, builtin: builtinGuestPaths(join(dir, 'empty-cache')) });
    for (const err of [await rejection(s.kernel('')), await rejection(s.initrd('builtin')), await rejection(s.disk(''))]) {
      expect(err.code).toBe('FAILED_PRECONDITION');
      expect(err.message).toContain('scripts/build-guest.sh');
    }
    // Named images still resolve.
    expect((await s.kernel('vmlinux-6.1')).name).toBe('vmlinux-6.1');
  });
});
