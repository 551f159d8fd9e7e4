import { setPriority } from 'node:os';

/** Nice value for processes on the heartbeat path (agent, local etcd, in-process fault proxies). */
export const HEARTBEAT_PATH_PRIORITY = -10;

/**
 * Raises this process (one running fault proxies between agents and etcd: FaultProxyGroup calls it) ahead of TCG guests
 * that saturate the cores, so the cut cable is the only thing that delays a heartbeat. Best effort:
 * returns false when not permitted (not root).
 */
export function raiseOwnPriority(): boolean {
  try {
    setPriority(HEARTBEAT_PATH_PRIORITY);
    return true;
  } catch {
    return false;
  }
}
