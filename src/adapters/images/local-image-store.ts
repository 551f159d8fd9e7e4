import { stat } from 'node:fs/promises';
import { homedir } from 'node:os';
import { join, resolve } from 'node:path';
import { InvalidArgumentError, NotFoundError, TetherError, messageOf } from '../../domain/errors.js';
import type { ImageStore, ResolvedImage } from '../../ports/images.js';

/** Kinds of image the store holds; each has its own sub-directory. */
export type ImageKind = 'kernel' | 'initrd' | 'disk';

/** Paths of the built-in guest: what a spec gets when it leaves an image name empty. */
export interface BuiltinGuestPaths {
  readonly kernel: string;
  readonly initrd: string;
  readonly disk: string;
}

/** Options of {@link LocalImageStore}. */
export interface LocalImageStoreOptions {
  /** Root of the named images: `<storeDir>/kernels/`, `<storeDir>/initrds/`, `<storeDir>/disks/`. */
  readonly storeDir: string;
  /** The built-in guest, normally `builtinGuestPaths(defaultCacheDir())`. */
  readonly builtin: BuiltinGuestPaths;
}

/** Name that selects the built-in image (as does the empty string). */
export const BUILTIN_IMAGE_NAME = 'builtin';

/** Sub-directory of the store for each kind. */
export const IMAGE_SUBDIRS: Readonly<Record<ImageKind, string>> = { kernel: 'kernels', initrd: 'initrds', disk: 'disks' };

const NAME_RE = /^[A-Za-z0-9._-]+$/;

/**
 * Tether's cache directory: `$TETHER_CACHE_DIR` when set and non-empty, else `$HOME/.cache/tether`
 * (the same rule as `${TETHER_CACHE_DIR:-$HOME/.cache/tether}` in scripts/build-guest.sh).
 */
export function defaultCacheDir(env: NodeJS.ProcessEnv = process.env): string {
  const fromEnv = env.TETHER_CACHE_DIR;
  if (fromEnv) return resolve(fromEnv);
  return join(env.HOME || homedir(), '.cache', 'tether');
}

/**
 * Where scripts/build-guest.sh puts the built-in guest under `cacheDir`:
 * `guest/vmlinux`, `guest/initrd.img`, `guest/rootfs.img`.
 */
export function builtinGuestPaths(cacheDir: string): BuiltinGuestPaths {
  const guest = join(resolve(cacheDir), 'guest');
  return { kernel: join(guest, 'vmlinux'), initrd: join(guest, 'initrd.img'), disk: join(guest, 'rootfs.img') };
}

/**
 * True when `name` may name an image in the store: 1+ chars of `[A-Za-z0-9._-]`, no `..`, not `.`.
 * Such a name is a single path component, so it can never leave its kind's directory.
 */
export function isValidImageName(name: string): boolean {
  return NAME_RE.test(name) && !name.includes('..') && name !== '.';
}

/**
 * {@link ImageStore} on a local directory; no registry is involved.
 *
 * Invariants:
 * - `''` and `'builtin'` resolve to the built-in guest files; any other name `n` of kind `k`
 *   resolves to `<storeDir>/<k>s/<n>` and to nothing else (names are single path components).
 * - A result always names an existing regular file (symlinks followed), checked at call time;
 *   the image may still change afterwards, the store takes no lock.
 * - Errors: INVALID_ARGUMENT (field `kernel`/`initrd`/`disk`) for a bad name; NOT_FOUND naming
 *   the image (`kernel image "foo" not found`) for a missing named image; FAILED_PRECONDITION
 *   telling the operator to run scripts/build-guest.sh for a missing built-in.
 */
export class LocalImageStore implements ImageStore {
  private readonly storeDir: string;
  private readonly builtin: BuiltinGuestPaths;

  constructor(options: LocalImageStoreOptions) {
    this.storeDir = resolve(options.storeDir);
    this.builtin = {
      kernel: resolve(options.builtin.kernel),
      initrd: resolve(options.builtin.initrd),
      disk: resolve(options.builtin.disk),
    };
  }

  /** The kernel named `name` ('' or 'builtin': the built-in guest kernel). */
  kernel(name: string): Promise<ResolvedImage> {
    return this.resolveImage('kernel', name);
  }

  /** The initrd named `name` ('' or 'builtin': the built-in guest initrd). */
  initrd(name: string): Promise<ResolvedImage> {
    return this.resolveImage('initrd', name);
  }

  /** The base disk named `name` ('' or 'builtin': the built-in guest root filesystem). */
  disk(name: string): Promise<ResolvedImage> {
    return this.resolveImage('disk', name);
  }

  /** The path a name maps to, without checking that it exists. Validates the name. */
  pathOf(kind: ImageKind, name: string): string {
    if (name === '' || name === BUILTIN_IMAGE_NAME) return this.builtin[kind];
    if (!isValidImageName(name)) {
      throw new InvalidArgumentError(kind, `invalid ${kind} image name "${name}": use [A-Za-z0-9._-] and no ".."`);
    }
    return join(this.storeDir, IMAGE_SUBDIRS[kind], name);
  }

  private async resolveImage(kind: ImageKind, name: string): Promise<ResolvedImage> {
    const isBuiltin = name === '' || name === BUILTIN_IMAGE_NAME;
    const path = this.pathOf(kind, name);
    const found = await isRegularFile(path);
    if (found) return { name: isBuiltin ? BUILTIN_IMAGE_NAME : name, path };
    if (isBuiltin) {
      throw new TetherError('FAILED_PRECONDITION', `built-in guest ${kind} ${path} is missing: run scripts/build-guest.sh to build the guest`, {
        details: { kind, path },
      });
    }
    throw new NotFoundError(`${kind} image "${name}" (looked for ${path})`, { details: { kind, name, path } });
  }
}

async function isRegularFile(path: string): Promise<boolean> {
  try {
    return (await stat(path)).isFile();
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') return false;
    throw new TetherError('INTERNAL', `inspecting image ${path}: ${messageOf(err)}`, { cause: err, details: { path } });
  }
}
