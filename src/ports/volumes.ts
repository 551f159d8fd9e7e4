/**
 * Disk overlay port (qemu-img qcow2 overlays in production).
 *
 * Invariants: overlays live only under the state dir given by the caller; `createOverlay` on an
 * existing valid overlay over the same base succeeds; `deleteOverlay` on a missing file succeeds.
 */
export interface Volumes {
  /** Creates a qcow2 overlay at `path` backed by the (read-only) `basePath`. */
  createOverlay(basePath: string, path: string): Promise<void>;
  /** True when `path` is a qcow2 overlay over `basePath`. */
  isOverlay(path: string, basePath: string): Promise<boolean>;
  /** Removes the overlay file. */
  deleteOverlay(path: string): Promise<void>;
}
