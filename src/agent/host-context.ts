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

/** `<stateDir>/vm/<namespace>/<name>/<uid>`: the only place a VM's files live. */
export function vmDir(files: Files, namespace: string, name: string, uid: string): string {
  return `${files.root}/vm/${namespace}/${name}/${uid}`;
}
