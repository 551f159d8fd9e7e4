import { chmodSync, lstatSync, mkdirSync, statSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { TetherError, messageOf } from '../../domain/errors.js';
import type { Logger } from '../../ports/logger.js';

/**
 * Least privilege for what Tether keeps on the host: everything under the agent's state dir is
 * readable and writable by the agent's user only.
 *
 * Invariants: folders Tether creates are 0700 and files 0600 from the moment they exist (the mode
 * is given to mkdir/open, never applied after a window open to others), and an existing folder or
 * file found looser is tightened, never loosened. Inside a 0700 state dir, a file's own mode is a
 * second line of defence: nobody else can even reach it.
 */

/** Mode of every folder Tether creates under its state dir. */
export const PRIVATE_DIR_MODE = 0o700;
/** Mode of every file Tether creates under its state dir (inventory, logs, sockets, overlays, feeds). */
export const PRIVATE_FILE_MODE = 0o600;
/** Bits that give group or others any access. */
const GROUP_OTHER = 0o077;

/** `mode` as the usual four octal digits (`0755`). */
export function octal(mode: number): string {
  return `0${(mode & 0o7777).toString(8).padStart(3, '0')}`;
}

/**
 * Creates `path` (and missing parents) as 0700, and tightens `path` itself to 0700 when it
 * exists with group/other bits. Returns the mode it had when it was tightened, else undefined.
 * Throws INTERNAL when the folder cannot be created or is not a folder.
 */
export function ensurePrivateDir(path: string): number | undefined {
  try {
    mkdirSync(path, { recursive: true, mode: PRIVATE_DIR_MODE });
    const st = statSync(path);
    if (!st.isDirectory()) throw new Error('not a directory');
    if ((st.mode & GROUP_OTHER) === 0) return undefined;
    chmodSync(path, PRIVATE_DIR_MODE);
    return st.mode & 0o7777;
  } catch (err) {
    throw new TetherError('INTERNAL', `making the private folder ${path}: ${messageOf(err)}`, { cause: err });
  }
}

/**
 * Tightens an existing file (or unix socket) to 0600 when it has group/other bits; a missing file
 * is fine. A symlink is never followed (its target is not ours to change). Returns the mode it had
 * when it was tightened, else undefined.
 */
export function tightenFile(path: string): number | undefined {
  let st;
  try {
    st = lstatSync(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new TetherError('INTERNAL', `inspecting ${path}: ${messageOf(err)}`, { cause: err });
  }
  if (st.isSymbolicLink() || (st.mode & GROUP_OTHER) === 0) return undefined;
  try {
    chmodSync(path, PRIVATE_FILE_MODE);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new TetherError('INTERNAL', `tightening ${path} to ${octal(PRIVATE_FILE_MODE)}: ${messageOf(err)}`, { cause: err });
  }
  return st.mode & 0o7777;
}

/** What {@link secureStateDir} found and did. */
export interface StateDirCheck {
  readonly path: string;
  /** The folder did not exist and was created 0700. */
  readonly created: boolean;
  /** The mode it had when it was found looser than 0700 and tightened. */
  readonly tightenedFrom?: number;
}

/**
 * Prepares the agent's state dir: creates it 0700 (parents too, when missing), or tightens an
 * existing one to 0700 with a warning naming the mode it had. Refuses (FAILED_PRECONDITION) a
 * state dir owned by another user: that user could loosen it again at any time, or plant pid
 * files and sockets in it. A parent folder that others may write to without the sticky bit is
 * warned about (they could rename the state dir away and put their own in its place).
 */
export function secureStateDir(stateDir: string, logger?: Logger, euid: number = process.geteuid?.() ?? 0): StateDirCheck {
  const path = resolve(stateDir);
  let existed = true;
  try {
    statSync(path);
  } catch {
    existed = false;
  }
  const tightenedFrom = ensurePrivateDir(path);
  const owner = statSync(path).uid;
  if (owner !== euid) {
    throw new TetherError('FAILED_PRECONDITION', `state dir ${path} is owned by uid ${owner}, not by this agent's uid ${euid}: another user could plant files in it; chown it or use another --state-dir`, {
      details: { stateDir: path, owner, euid },
    });
  }
  if (tightenedFrom !== undefined) {
    logger?.warn({ stateDir: path, was: octal(tightenedFrom), now: octal(PRIVATE_DIR_MODE) }, `state dir was open to other users (${octal(tightenedFrom)}): tightened to ${octal(PRIVATE_DIR_MODE)}`);
  }
  for (let dir = dirname(path); ; dir = dirname(dir)) {
    try {
      const st = statSync(dir);
      if ((st.mode & 0o022) !== 0 && (st.mode & 0o1000) === 0) {
        logger?.warn({ stateDir: path, parent: dir, mode: octal(st.mode) }, 'a parent of the state dir is writable by other users without the sticky bit: they could replace the state dir');
      }
    } catch {
      /* unreadable parent: nothing to say */
    }
    if (dirname(dir) === dir) break;
  }
  return { path, created: !existed, ...(tightenedFrom !== undefined ? { tightenedFrom } : {}) };
}
