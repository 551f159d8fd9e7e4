/**
 * This machine's identity for registration (src/domain/registration.ts, "one machine per epoch"):
 * `/etc/machine-id` (systemd: generated once at install, kept across reboots), else
 * `/var/lib/dbus/machine-id`, else this boot's id (`/proc/sys/kernel/random/boot_id`).
 *
 * Invariants: the same machine gives the same id on every agent start (and, with a machine-id file,
 * every boot); two machines give different ids unless one is a clone that kept the other's
 * machine-id file (clone images should have it reset, as `systemd-machine-id-setup` / cloud-init
 * do). The boot-id fallback changes on every reboot: after a reboot such a host cannot reattach at
 * its old epoch and rejoins `ready` once the cluster fenced it (safe; its VMs died with the boot
 * anyway). Fails with a TetherError (not retryable) when none can be read.
 */
import { readFileSync } from 'node:fs';
import { TetherError } from '../domain/errors.js';

/** Where the id is looked for, in order. */
export const MACHINE_ID_SOURCES = ['/etc/machine-id', '/var/lib/dbus/machine-id', '/proc/sys/kernel/random/boot_id'] as const;

/** The machine id: the first readable, well-formed source of `sources` (default {@link MACHINE_ID_SOURCES}), tagged `boot:` when it is a boot id. */
export function readMachineId(sources: readonly string[] = MACHINE_ID_SOURCES, read: (path: string) => string = (p) => readFileSync(p, 'utf8')): string {
  const tried: string[] = [];
  for (const path of sources) {
    let raw: string;
    try {
      raw = read(path).trim();
    } catch (err) {
      tried.push(`${path}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`);
      continue;
    }
    if (!/^[A-Za-z0-9-]{8,64}$/.test(raw)) {
      tried.push(`${path}: not a machine id (${JSON.stringify(raw.slice(0, 40))})`);
      continue;
    }
    return path.endsWith('boot_id') ? `boot:${raw}` : raw;
  }
  throw new TetherError('FAILED_PRECONDITION', `no machine id readable (${tried.join('; ')}): the agent needs one to register safely`, { retryable: false });
}
