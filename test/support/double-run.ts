import { processesWith } from '../../src/dev/host-probe.js';

/**
 * ns/name -> uids of the QEMU processes of the given hosts, read from their `-pidfile` path
 * (`<stateDir>/vm/<ns>/<name>/<uid>/qemu.pid`). Distinct uids: one process per incarnation is counted
 * once, even while `-daemonize` briefly shows a parent and its child.
 */
export function qemusByVm(hostIds: readonly string[]): Map<string, Set<string>> {
  const out = new Map<string, Set<string>>();
  for (const hostId of hostIds) {
    for (const [, argv] of processesWith(`tether:${hostId}:`)) {
      if (!argv[0]?.includes('qemu-system')) continue;
      const m = /\/vm\/([^/]+)\/([^/]+)\/([0-9a-f]{32})\/qemu\.pid$/.exec(argv[argv.indexOf('-pidfile') + 1] ?? '');
      if (m) out.set(`${m[1]}/${m[2]}`, (out.get(`${m[1]}/${m[2]}`) ?? new Set()).add(m[3]!));
    }
  }
  return out;
}

/**
 * Reads the process table every 100 ms and records any VM (namespace/name) that runs as two
 * incarnations at once, on one host or two: the promise "a VM never runs twice", checked from
 * outside every Tether process. Also records when each incarnation (uid) was first and last seen.
 */
export class DoubleRunSampler {
  readonly doubles: string[] = [];
  readonly firstSeen = new Map<string, number>();
  readonly lastSeen = new Map<string, number>();
  private running = true;
  private readonly loop: Promise<void>;

  constructor(private readonly hostIds: readonly string[]) {
    this.loop = this.run();
  }

  private async run(): Promise<void> {
    while (this.running) {
      const now = Date.now();
      for (const [vm, uids] of qemusByVm(this.hostIds)) {
        for (const u of uids) {
          if (!this.firstSeen.has(u)) this.firstSeen.set(u, now);
          this.lastSeen.set(u, now);
        }
        if (uids.size > 1) this.doubles.push(`${new Date(now).toISOString()} ${vm}: ${[...uids].join(',')}`);
      }
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  /** Stops sampling (resolves after the last sample). */
  async stop(): Promise<void> {
    this.running = false;
    await this.loop;
  }
}
