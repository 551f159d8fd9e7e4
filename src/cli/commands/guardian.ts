import { hostname } from 'node:os';
import type { Command } from 'commander';
import { parseDuration } from '../../domain/duration.js';
import { InvalidArgumentError } from '../../domain/errors.js';
import { runGuardian } from '../../guardian/run-guardian.js';

/**
 * `tether guardian`: the fence that outlives the agent (docs/guardian.md). Normally started by the
 * agent (GuardianFeed.ensureRunning) or by deploy/systemd/tether-guardian.service.
 *
 * Invariant: this module imports only the guardian's own small modules (no etcd, SQLite, gRPC,
 * pino): bin/tether.js runs it through src/guardian/main.ts without loading the rest of the CLI.
 * Each flag falls back to an environment variable, then to the agent's default.
 */
export function registerGuardianCommand(program: Command): void {
  const env = process.env;
  program
    .command('guardian')
    .description("the fence that outlives the agent: kills this host's VMs once the deadline the agent feeds passes (see docs/guardian.md)")
    .option('--state-dir <dir>', "the agent's state dir (env TETHER_STATE_DIR)", env.TETHER_STATE_DIR ?? '/var/lib/tether')
    .option('--host-id <id>', "this host's id, as the agent's (env TETHER_HOST_ID)", env.TETHER_HOST_ID ?? hostname())
    .option('--qemu-binary <path>', 'the QEMU binary the agent runs VMs with (env TETHER_QEMU_BINARY)', env.TETHER_QEMU_BINARY ?? 'qemu-system-x86_64')
    .option('--kill-timeout <duration>', 'every VM must be gone this long after the fire (env TETHER_KILL_TIMEOUT)', env.TETHER_KILL_TIMEOUT ?? '2s')
    .option('--poll-interval <duration>', 'how often the feed is re-read', '200ms')
    .option('--cgroup-root <dir>', "folder of the per-host VM cgroups, or 'none' (default <cgroup2 mount>/tether)", env.TETHER_CGROUP_ROOT)
    .option('--watchdog-device <path>', 'Linux watchdog device to pet while the deadline holds (e.g. /dev/watchdog)', env.TETHER_WATCHDOG_DEVICE)
    .option('--watchdog-pet-interval <duration>', 'how often the watchdog device is petted', '1s')
    .option('--wait-for-lock', 'wait while another guardian serves the state dir, then take over (for the systemd unit)')
    .action(async (o: Record<string, string | boolean | undefined>) => {
      const duration = (field: string, v: unknown): number => {
        try {
          return parseDuration(String(v));
        } catch (err) {
          throw new InvalidArgumentError(field, (err as Error).message, { cause: err });
        }
      };
      const pollMs = duration('pollInterval', o.pollInterval);
      if (pollMs < 10 || pollMs > 1000) throw new InvalidArgumentError('pollInterval', 'must be between 10ms and 1s');
      const cgroupRoot = o.cgroupRoot === undefined ? undefined : o.cgroupRoot === 'none' ? false : String(o.cgroupRoot);
      process.exitCode = await runGuardian({
        stateDir: String(o.stateDir),
        hostId: String(o.hostId),
        qemuBinary: String(o.qemuBinary),
        killTimeoutMs: duration('killTimeout', o.killTimeout),
        pollMs,
        ...(cgroupRoot !== undefined ? { cgroupRoot } : {}),
        ...(o.watchdogDevice ? { watchdogDevice: String(o.watchdogDevice) } : {}),
        watchdogPetIntervalMs: duration('watchdogPetInterval', o.watchdogPetInterval),
        waitForLock: o.waitForLock === true,
      });
    });
}
