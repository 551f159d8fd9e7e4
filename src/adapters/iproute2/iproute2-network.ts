import { InvalidArgumentError, TetherError, messageOf } from '../../domain/errors.js';
import { ownerAlias, type Network, type TapOwner } from '../../ports/network.js';
import { CommandError, runCommand } from '../exec.js';
import { isOwnedTap, ownerMarkProblem, parseLinkJson, type LinkInfo } from './link-json.js';
import { readSysfsLink, readSysfsLinks } from './sysfs-links.js';
import { isValidIfName } from '../../domain/tap-name.js';

/** Options of {@link Iproute2Network}. */
export interface Iproute2NetworkOptions {
  /** The `ip` executable. Default `ip` (found on PATH). */
  readonly ipPath?: string;
  /** Named network namespace to work in (`ip -n <netns>`); default: the agent's own namespace. */
  readonly netns?: string;
  /** Timeout of each `ip` invocation, ms. Default 10 000. */
  readonly timeoutMs?: number;
}

const HOST_ID_RE = /^[A-Za-z0-9._-]+$/;

/** True when `ip` failed because the named device does not exist. */
function isNoSuchDevice(err: unknown): boolean {
  return err instanceof CommandError && /does not exist|Cannot find device/i.test(err.stderr);
}

/**
 * {@link Network} on iproute2: tap devices created with `ip tuntap`, owner mark in the interface
 * alias (`tether:<hostId>:<vmUid>`), state read with `ip -json -details link show`.
 *
 * Invariants:
 * - **Only marked taps are ever changed.** `deleteTap` removes a device only when it is a tun/tap in
 *   tap mode and its alias equals the caller's mark exactly; `createTap` never alters an existing
 *   device except to bring up a tap that already carries the caller's mark. A device with no mark,
 *   another host's or VM's mark, or of another kind fails with NOT_OWNED and is left untouched,
 *   whatever its name (a `tt…` name proves nothing).
 * - **Create and mark in one process.** `createTap` runs `ip -batch -` with two lines:
 *   `tuntap add` (which iproute2 issues with IFF_TUN_EXCL, so it fails on any existing device
 *   instead of attaching to it) and `link set … alias … up` (one netlink request). The mark is
 *   therefore applied only to a device this call created, and an agent crash after the `ip`
 *   process started does not split the two (the child runs on). What remains possible is the `ip`
 *   process itself dying between its two requests (host power loss, cgroup-wide SIGKILL): that
 *   leaves an unmarked tap under the recorded name. It is reported by `getTap` with `owner`
 *   undefined, `createTap`/`deleteTap` on it fail with NOT_OWNED, and it is never deleted
 *   automatically: the inventory row written before creation names it for the operator.
 * - **Idempotent.** Creating an existing tap with the same mark succeeds (and brings it up);
 *   deleting a missing device succeeds. Every mutation is verified by reading the device back.
 * - Races are narrowed, not excluded: between reading a device and `ip link del` another party
 *   could replace it under the same name. Tether's own callers use one owner per name.
 * - Errors: NETWORK_ERROR (cause: the {@link CommandError} with `ip`'s stderr), NOT_OWNED for
 *   ownership refusals, INVALID_ARGUMENT for unusable names or owners.
 */
export class Iproute2Network implements Network {
  private readonly ipPath: string;
  private readonly netnsArgs: readonly string[];
  private readonly timeoutMs: number;

  constructor(options: Iproute2NetworkOptions = {}) {
    this.ipPath = options.ipPath ?? 'ip';
    this.netnsArgs = options.netns ? ['-n', options.netns] : [];
    this.timeoutMs = options.timeoutMs ?? 10_000;
  }

  /**
   * Creates tap `name` marked with `owner` and brings it up; see the class invariants.
   * @throws TetherError NOT_OWNED when `name` exists without exactly `owner`'s mark (or is no tap).
   * @throws TetherError NETWORK_ERROR when `ip` fails or the result does not read back as expected.
   */
  async createTap(name: string, owner: TapOwner): Promise<void> {
    checkName(name);
    checkOwner(owner);
    const alias = ownerAlias(owner);
    try {
      await this.ip(['-batch', '-'], `tuntap add dev ${name} mode tap\nlink set dev ${name} alias ${alias} up\n`);
    } catch (err) {
      if (err instanceof CommandError && /Command failed -:2/.test(err.stderr)) {
        // Line 1 created the device, line 2 did not mark it: an unmarked device we will never delete.
        throw new TetherError('NETWORK_ERROR', `created tap ${name} but could not mark it "${alias}"; the device is left unmarked and must be removed by hand: ${err.message}`, {
          cause: err,
          details: { device: name, alias },
        });
      }
      // Most often the device exists already (EBUSY); the read below decides.
      const existing = await this.getTap(name);
      if (!existing) throw networkError(`creating tap ${name}`, err, name);
    }
    let link = await this.mustGet(name, 'created');
    if (!isOwnedTap(link, owner)) throw notOwned(name, link, alias);
    if (!link.up) {
      await this.ipOrThrow(['link', 'set', 'dev', name, 'up'], `bringing up tap ${name}`, name);
      link = await this.mustGet(name, 'brought up');
      if (!isOwnedTap(link, owner)) throw notOwned(name, link, alias);
      if (!link.up) throw new TetherError('NETWORK_ERROR', `tap ${name} is still down after "ip link set up"`, { details: { device: name } });
    }
  }

  /**
   * The device called `name` (of any kind), or undefined when there is none. The result is a
   * {@link LinkInfo}: a `TapInfo` plus `ifindex`, raw `alias`, `kind` and `isTap`.
   */
  async getTap(name: string): Promise<LinkInfo | undefined> {
    checkName(name);
    // In our own namespace sysfs answers without starting a process.
    if (this.netnsArgs.length === 0) return readSysfsLink(name);
    let stdout: string;
    try {
      ({ stdout } = await this.ip(['-json', '-details', 'link', 'show', 'dev', name]));
    } catch (err) {
      if (isNoSuchDevice(err)) return undefined;
      throw networkError(`reading device ${name}`, err, name);
    }
    const links = parseJson(stdout, name).filter((l) => l.name === name);
    return links[0];
  }

  /**
   * Deletes tap `name` when it carries exactly `owner`'s mark, then verifies that the device (by
   * name and ifindex) is gone. A missing device is success.
   * @throws TetherError NOT_OWNED when the device exists without that mark or is not a tap.
   */
  async deleteTap(name: string, owner: TapOwner): Promise<void> {
    checkName(name);
    checkOwner(owner);
    const alias = ownerAlias(owner);
    const link = await this.getTap(name);
    if (!link) return;
    if (!isOwnedTap(link, owner)) throw notOwned(name, link, alias);
    try {
      await this.ip(['link', 'del', 'dev', name]);
    } catch (err) {
      if (!isNoSuchDevice(err)) throw networkError(`deleting tap ${name}`, err, name);
    }
    const after = await this.getTap(name);
    if (after && after.ifindex === link.ifindex) {
      throw new TetherError('NETWORK_ERROR', `tap ${name} is still present after "ip link del"`, { details: { device: name } });
    }
  }

  /**
   * Every device whose alias is a well-formed Tether mark of `hostId`, of any kind (an audit
   * should see anything that claims to be ours; `deleteTap` still refuses non-taps).
   */
  async listOwned(hostId: string): Promise<LinkInfo[]> {
    if (!HOST_ID_RE.test(hostId)) throw new InvalidArgumentError('hostId', `"${hostId}" is not a valid host id ([A-Za-z0-9._-]+)`);
    return (await this.listLinks()).filter((l) => l.owner?.hostId === hostId);
  }

  /** Every link in the namespace, marked or not (for audits and tests). */
  async listLinks(): Promise<LinkInfo[]> {
    if (this.netnsArgs.length === 0) return readSysfsLinks();
    let stdout: string;
    try {
      ({ stdout } = await this.ip(['-json', '-details', 'link', 'show']));
    } catch (err) {
      throw networkError('listing links', err);
    }
    return parseJson(stdout);
  }

  private ip(args: readonly string[], input?: string) {
    return runCommand(this.ipPath, [...this.netnsArgs, ...args], {
      timeoutMs: this.timeoutMs,
      ...(input !== undefined ? { input } : {}),
    });
  }

  private async ipOrThrow(args: readonly string[], what: string, device: string): Promise<void> {
    try {
      await this.ip(args);
    } catch (err) {
      throw networkError(what, err, device);
    }
  }

  private async mustGet(name: string, what: string): Promise<LinkInfo> {
    const link = await this.getTap(name);
    if (!link) throw new TetherError('NETWORK_ERROR', `tap ${name} is missing right after it was ${what}`, { details: { device: name } });
    return link;
  }
}

function checkName(name: string): void {
  if (!isValidIfName(name)) {
    throw new InvalidArgumentError('device', `"${name}" is not a usable interface name (1-15 chars of [A-Za-z0-9_.-], not starting with "-")`);
  }
}

function checkOwner(owner: TapOwner): void {
  const problem = ownerMarkProblem(owner);
  if (problem) throw new InvalidArgumentError('owner', problem);
}

function parseJson(stdout: string, device?: string): LinkInfo[] {
  try {
    return parseLinkJson(stdout);
  } catch (err) {
    throw new TetherError('NETWORK_ERROR', `unreadable "ip -json" output: ${messageOf(err)}`, {
      cause: err,
      details: device ? { device } : {},
    });
  }
}

function networkError(what: string, err: unknown, device?: string): TetherError {
  return new TetherError('NETWORK_ERROR', `${what}: ${messageOf(err)}`, {
    cause: err,
    retryable: err instanceof TetherError && err.retryable,
    details: device ? { device } : {},
  });
}

function notOwned(name: string, link: LinkInfo, expected: string): TetherError {
  const found = link.alias === undefined ? 'no alias' : `alias "${link.alias}"`;
  const kind = link.isTap ? 'tap' : `${link.kind ?? 'plain'} device (not a tap)`;
  return new TetherError('NOT_OWNED', `device ${name} is a ${kind} with ${found}, not "${expected}"; leaving it untouched`, {
    details: { device: name, expected, found: link.alias ?? null, isTap: link.isTap },
  });
}
