import { randomBytes } from 'node:crypto';
import { constants as fsConstants } from 'node:fs';
import { chmod, link, lstat, open, readdir, stat, unlink } from 'node:fs/promises';
import { basename, dirname, isAbsolute, join, relative, resolve, sep } from 'node:path';
import { InvalidArgumentError, NotFoundError, TetherError, messageOf } from '../../domain/errors.js';
import type { Volumes } from '../../ports/volumes.js';
import { runCommand } from '../exec.js';
import { PRIVATE_FILE_MODE, tightenFile } from '../fs/private-files.js';

/** Options of {@link QcowVolumes}. */
export interface QcowVolumesOptions {
  /**
   * When set, overlays may only be created or deleted strictly inside this directory (normally the
   * agent's state dir): anything else is refused (INVALID_ARGUMENT on create, NOT_OWNED on delete).
   */
  readonly root?: string;
  /** The `qemu-img` executable. Default `qemu-img` (found on PATH). */
  readonly qemuImgPath?: string;
  /** Timeout of each `qemu-img` invocation, ms. Default 30 000. */
  readonly timeoutMs?: number;
}

/** Base image formats an overlay may sit on. */
export type BaseFormat = 'raw' | 'qcow2';

/** First four bytes of every qcow2 file. */
const QCOW2_MAGIC = Buffer.from([0x51, 0x46, 0x49, 0xfb]);

/** Prefix of the temporary name of an overlay being created at `path`. */
export function overlayTempPrefix(path: string): string {
  return `.${basename(path)}.tmp-`;
}

/**
 * {@link Volumes} on `qemu-img`: qcow2 copy-on-write overlays over a raw or qcow2 base.
 *
 * Invariants:
 * - **No half file under the final name.** `createOverlay` writes to `.<name>.tmp-<pid>-<rand>` in
 *   the same directory, fsyncs it, then hard-links it to the final name (which, unlike rename,
 *   never replaces an existing file: a concurrent creator or a VM's written overlay is never
 *   clobbered), unlinks the temp name and fsyncs the directory. A crash can leave only a temp
 *   file, which `deleteOverlay` of the same path sweeps.
 * - **Idempotent.** Creating over an existing qcow2 overlay of the same base succeeds without
 *   touching it; an existing file that is anything else fails with ALREADY_EXISTS. Deleting a
 *   missing file succeeds.
 * - **Delete only what looks like ours.** `deleteOverlay` removes only a regular file (not a
 *   symlink, directory or device) that starts with the qcow2 magic, and inside `root` when one is
 *   set; anything else fails with NOT_OWNED. Removal is verified.
 * - The base's format is detected with `qemu-img info` and pinned in the overlay (`-F`), so QEMU
 *   never probes it again. Bases are operator-provided and attached read-only; probing an
 *   untrusted raw file could misread it as qcow2, so do not point this at guest-writable files.
 * - `qemu-img info` runs with `-U` (force-share) so overlays in use by a running VM can be inspected.
 * - **Private.** An overlay holds what the guest wrote: it is 0600 before it gets its final name
 *   (the temp file is tightened before the link), and an existing overlay found looser is tightened.
 * - Paths must be absolute. Errors: VOLUME_ERROR (cause: the `qemu-img` CommandError with stderr),
 *   NOT_FOUND for a missing base, NOT_OWNED / ALREADY_EXISTS / INVALID_ARGUMENT as above.
 */
export class QcowVolumes implements Volumes {
  private readonly root: string | undefined;
  private readonly qemuImg: string;
  private readonly timeoutMs: number;

  constructor(options: QcowVolumesOptions = {}) {
    this.root = options.root === undefined ? undefined : resolve(options.root);
    this.qemuImg = options.qemuImgPath ?? 'qemu-img';
    this.timeoutMs = options.timeoutMs ?? 30_000;
  }

  /**
   * Creates a qcow2 overlay at `path` backed by `basePath` (absolute; recorded as given).
   * @throws NotFoundError when the base does not exist.
   * @throws TetherError ALREADY_EXISTS when `path` exists and is not an overlay of `basePath`.
   */
  async createOverlay(basePath: string, path: string): Promise<void> {
    checkAbsolute('basePath', basePath);
    checkAbsolute('path', path);
    if (this.root && !isInside(this.root, path)) {
      throw new InvalidArgumentError('path', `overlay ${path} is outside ${this.root}`);
    }
    if (await exists(path)) {
      if (await this.isOverlay(path, basePath)) {
        await guard(`tightening ${path}`, path, async () => tightenFile(path));
        return;
      }
      throw new TetherError('ALREADY_EXISTS', `${path} exists and is not a qcow2 overlay of ${basePath}; refusing to overwrite it`, {
        details: { path, basePath },
      });
    }
    const format = await this.baseFormat(basePath);
    const dir = dirname(path);
    const tmp = join(dir, `${overlayTempPrefix(path)}${process.pid}-${randomBytes(4).toString('hex')}`);
    try {
      await this.qemu(['create', '-q', '-f', 'qcow2', '-F', format, '-b', basePath, tmp], `creating overlay ${path}`, path);
      await guard(`making ${tmp} private`, path, () => chmod(tmp, PRIVATE_FILE_MODE));
      await guard(`syncing ${tmp}`, path, () => fsyncPath(tmp));
      try {
        await link(tmp, path);
      } catch (err) {
        // Someone else created it meanwhile: theirs stands if it is the same overlay.
        if ((err as NodeJS.ErrnoException).code === 'EEXIST' && (await this.isOverlay(path, basePath))) return;
        throw volumeError(`publishing overlay ${path}`, err, path);
      }
    } finally {
      await unlink(tmp).catch(() => undefined);
    }
    await guard(`syncing ${dir}`, path, () => fsyncPath(dir));
    if (!(await this.isOverlay(path, basePath))) {
      throw new TetherError('VOLUME_ERROR', `overlay ${path} does not read back as a qcow2 overlay of ${basePath}`, { details: { path, basePath } });
    }
  }

  /**
   * True when `path` is a regular file in qcow2 format whose backing file is `basePath` (compared
   * after resolving both to absolute paths). False when `path` is missing, a symlink or anything
   * else; throws VOLUME_ERROR when `qemu-img info` cannot read an existing file.
   */
  async isOverlay(path: string, basePath: string): Promise<boolean> {
    const st = await lstat(path).catch((err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT') return undefined;
      throw volumeError(`inspecting ${path}`, err, path);
    });
    if (!st || !st.isFile()) return false;
    const info = await this.info(path);
    if (info.format !== 'qcow2') return false;
    const backing = typeof info['backing-filename'] === 'string' ? info['backing-filename'] : undefined;
    if (!backing) return false;
    return resolve(dirname(path), backing) === resolve(basePath);
  }

  /**
   * Removes the overlay at `path` and any temp file a crashed `createOverlay` of it left, then
   * verifies both are gone. A missing file is success.
   * @throws TetherError NOT_OWNED when `path` is not a regular qcow2 file (or is outside `root`).
   */
  async deleteOverlay(path: string): Promise<void> {
    checkAbsolute('path', path);
    if (this.root && !isInside(this.root, path)) {
      throw new TetherError('NOT_OWNED', `${path} is outside ${this.root}; refusing to delete it`, { details: { path } });
    }
    const st = await lstat(path).catch((err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT') return undefined;
      throw volumeError(`inspecting ${path}`, err, path);
    });
    if (st) {
      if (!st.isFile()) throw new TetherError('NOT_OWNED', `${path} is not a regular file; refusing to delete it`, { details: { path } });
      if (!(await guard(`reading ${path}`, path, () => hasQcow2Magic(path)))) {
        throw new TetherError('NOT_OWNED', `${path} is not a qcow2 file; refusing to delete it`, { details: { path } });
      }
      await unlink(path).catch((err: NodeJS.ErrnoException) => {
        if (err.code !== 'ENOENT') throw volumeError(`deleting overlay ${path}`, err, path);
      });
    }
    await this.sweepTemps(path);
    if (await exists(path)) throw new TetherError('VOLUME_ERROR', `overlay ${path} is still present after unlink`, { details: { path } });
  }

  /** The format of the base image: `raw` or `qcow2`. NOT_FOUND when missing, VOLUME_ERROR otherwise. */
  async baseFormat(basePath: string): Promise<BaseFormat> {
    checkAbsolute('basePath', basePath);
    const st = await stat(basePath).catch((err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT') return undefined;
      throw volumeError(`inspecting base ${basePath}`, err, basePath);
    });
    if (!st) throw new NotFoundError(`base image ${basePath}`);
    if (!st.isFile()) throw new TetherError('VOLUME_ERROR', `base image ${basePath} is not a regular file`, { details: { path: basePath } });
    const { format } = await this.info(basePath);
    if (format !== 'raw' && format !== 'qcow2') {
      throw new TetherError('VOLUME_ERROR', `base image ${basePath} has format ${String(format)}; only raw and qcow2 are supported`, {
        details: { path: basePath, format },
      });
    }
    return format;
  }

  private async sweepTemps(path: string): Promise<void> {
    const dir = dirname(path);
    const prefix = overlayTempPrefix(path);
    const names = await readdir(dir).catch((err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT') return [] as string[];
      throw volumeError(`listing ${dir}`, err, path);
    });
    for (const name of names.filter((n) => n.startsWith(prefix))) {
      const p = join(dir, name);
      const st = await lstat(p).catch(() => undefined);
      if (!st?.isFile()) continue;
      await unlink(p).catch((err: NodeJS.ErrnoException) => {
        if (err.code !== 'ENOENT') throw volumeError(`deleting temp file ${p}`, err, path);
      });
    }
  }

  private async info(path: string): Promise<Record<string, unknown>> {
    const { stdout } = await this.qemu(['info', '-U', '--output=json', path], `reading image info of ${path}`, path);
    try {
      const data: unknown = JSON.parse(stdout);
      if (typeof data !== 'object' || data === null || Array.isArray(data)) throw new TypeError('not an object');
      return data as Record<string, unknown>;
    } catch (err) {
      throw volumeError(`unreadable "qemu-img info" output for ${path}`, err, path);
    }
  }

  private async qemu(args: readonly string[], what: string, path: string) {
    try {
      return await runCommand(this.qemuImg, args, { timeoutMs: this.timeoutMs });
    } catch (err) {
      throw volumeError(what, err, path);
    }
  }
}

function checkAbsolute(field: string, p: string): void {
  if (!isAbsolute(p)) throw new InvalidArgumentError(field, `"${p}" must be an absolute path`);
}

/** True when `p` resolves strictly inside `root`. */
function isInside(root: string, p: string): boolean {
  const rel = relative(root, resolve(p));
  return rel !== '' && !rel.startsWith(`..${sep}`) && rel !== '..' && !isAbsolute(rel);
}

async function exists(p: string): Promise<boolean> {
  try {
    await lstat(p);
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw volumeError(`inspecting ${p}`, err, p);
  }
}

async function hasQcow2Magic(p: string): Promise<boolean> {
  const fh = await open(p, fsConstants.O_RDONLY | fsConstants.O_NOFOLLOW);
  try {
    const buf = Buffer.alloc(QCOW2_MAGIC.length);
    const { bytesRead } = await fh.read(buf, 0, buf.length, 0);
    return bytesRead === buf.length && buf.equals(QCOW2_MAGIC);
  } finally {
    await fh.close();
  }
}

/** fsync a file or directory so a crash cannot lose what was just written or linked. */
async function fsyncPath(p: string): Promise<void> {
  const fh = await open(p, fsConstants.O_RDONLY);
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/** Runs `fn`, turning any error that is not already a TetherError into VOLUME_ERROR. */
async function guard<T>(what: string, path: string, fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    throw err instanceof TetherError ? err : volumeError(what, err, path);
  }
}

function volumeError(what: string, err: unknown, path: string): TetherError {
  if (err instanceof TetherError && err.code === 'VOLUME_ERROR') return err;
  return new TetherError('VOLUME_ERROR', `${what}: ${messageOf(err)}`, {
    cause: err,
    retryable: err instanceof TetherError && err.retryable,
    details: { path },
  });
}
