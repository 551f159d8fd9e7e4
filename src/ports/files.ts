/**
 * File-system port for the agent's state folder.
 *
 * Invariant: implementations refuse (NOT_OWNED) to remove anything that is not strictly inside
 * the `root` they were constructed with; Tether never deletes files outside its state dir.
 */
export interface Files {
  /** The state dir every path must live under. */
  readonly root: string;
  /** mkdir -p. */
  ensureDir(path: string): Promise<void>;
  exists(path: string): Promise<boolean>;
  /** rm -rf of a path strictly under `root`; a missing path succeeds. */
  removeTree(path: string): Promise<void>;
  /** Removes `path` only if it is an empty folder (atomic rmdir); missing or non-empty is not an error. */
  removeEmptyDir(path: string): Promise<void>;
  /** Names of the entries of a folder ([] when missing). */
  list(path: string): Promise<string[]>;
}
