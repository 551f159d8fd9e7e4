import { chmod, mkdir, readdir, rm, rmdir, stat } from 'node:fs/promises';
import { isAbsolute, relative, resolve } from 'node:path';
import { TetherError } from '../../domain/errors.js';
import type { Files } from '../../ports/files.js';
import { PRIVATE_DIR_MODE } from './private-files.js';

/**
 * {@link Files} on the local disk, confined to `root`. Folders it creates are 0700 (missing
 * parents included), and `ensureDir` tightens an existing folder found looser (see private-files.ts).
 */
export class LocalFiles implements Files {
  readonly root: string;

  constructor(root: string) {
    this.root = resolve(root);
  }

  async ensureDir(path: string): Promise<void> {
    const abs = this.inside(path);
    await mkdir(abs, { recursive: true, mode: PRIVATE_DIR_MODE });
    const st = await stat(abs);
    if ((st.mode & 0o077) !== 0) await chmod(abs, PRIVATE_DIR_MODE);
  }

  async exists(path: string): Promise<boolean> {
    try {
      await stat(path);
      return true;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
      throw new TetherError('INTERNAL', `stat ${path}: ${String(err)}`, { cause: err });
    }
  }

  async removeTree(path: string): Promise<void> {
    await rm(this.inside(path), { recursive: true, force: true });
  }

  async removeEmptyDir(path: string): Promise<void> {
    try {
      await rmdir(this.inside(path));
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code !== 'ENOENT' && code !== 'ENOTEMPTY' && code !== 'EEXIST') throw new TetherError('INTERNAL', `rmdir ${path}: ${String(err)}`, { cause: err });
    }
  }

  async list(path: string): Promise<string[]> {
    try {
      return await readdir(path);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw new TetherError('INTERNAL', `listing ${path}: ${String(err)}`, { cause: err });
    }
  }

  /** The resolved path, if strictly under root; NOT_OWNED otherwise. */
  private inside(path: string): string {
    const abs = resolve(path);
    const rel = relative(this.root, abs);
    if (rel === '' || rel.startsWith('..') || isAbsolute(rel)) {
      throw new TetherError('NOT_OWNED', `refusing to touch ${abs}: not inside the state dir ${this.root}`);
    }
    return abs;
  }
}
