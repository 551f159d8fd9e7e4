/**
 * Iproute2Network against the real kernel. Needs root and iproute2: without them this file FAILS
 * (it never skips), because the ownership rules it checks are the ones cleanup relies on.
 *
 * Every device the test creates is named in `created`; afterEach deletes them with plain `ip` and
 * then asserts that nothing carrying this run's host ids, and none of those names, is left.
 */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { performance } from 'node:perf_hooks';
import { afterAll, afterEach, beforeEach, describe, expect, it } from 'vitest';
import { Iproute2Network } from '../../src/adapters/iproute2/iproute2-network.js';
import { tapName } from '../../src/domain/tap-name.js';
import { ownerAlias, type TapOwner } from '../../src/ports/network.js';
import { expectCode } from '../support/expect-code.js';

interface RawLink {
  ifindex: number;
  ifname: string;
  flags: string[];
  ifalias?: string;
  linkinfo?: { info_kind?: string; info_data?: { type?: string } };
}

const RUN = randomBytes(4).toString('hex');
const HOST = `test-${RUN}`;
const OTHER_HOST = `test-other-${RUN}`;
const NETNS = `tether-test-${RUN}`;

/** Every device name this file creates (ours and decoys), in the default namespace. */
const created = new Set<string>();
let netnsCreated = false;

function ip(...args: string[]): string {
  return execFileSync('ip', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

function rawLinks(): RawLink[] {
  const out = ip('-json', '-details', 'link', 'show').trim();
  return out ? (JSON.parse(out) as RawLink[]) : [];
}

function rawLink(name: string): RawLink | undefined {
  return rawLinks().find((l) => l.ifname === name);
}

function newUid(): string {
  return randomBytes(16).toString('hex');
}

/** A fresh tap name for a fresh uid, recorded for cleanup. */
function freshTap(): { name: string; uid: string } {
  const uid = newUid();
  const name = tapName(uid, 0);
  created.add(name);
  return { name, uid };
}

/** A decoy made with plain `ip`, optionally with an alias; returns its name. */
function decoyTap(alias?: string, mode: 'tap' | 'tun' = 'tap'): string {
  const { name } = freshTap();
  ip('tuntap', 'add', 'dev', name, 'mode', mode);
  if (alias !== undefined) ip('link', 'set', 'dev', name, 'alias', alias);
  return name;
}


function removeCreated(): void {
  for (const name of created) {
    try {
      ip('link', 'del', 'dev', name);
    } catch (err) {
      const stderr = String((err as { stderr?: unknown }).stderr ?? '');
      if (!/Cannot find device|does not exist/.test(stderr)) throw err;
    }
  }
}

/** The cleanup is itself checked: nothing of this run may remain. */
function assertNothingLeft(): void {
  const left = rawLinks().filter(
    (l) => created.has(l.ifname) || (l.ifalias ?? '').includes(HOST) || (l.ifalias ?? '').includes(OTHER_HOST),
  );
  expect(left.map((l) => `${l.ifname} ${l.ifalias ?? ''}`)).toEqual([]);
}

const net = new Iproute2Network();

/** Why this machine cannot run these tests, or undefined when it can. Computed once. */
let precondition: string | undefined | null = null;
function checkPrecondition(): string | undefined {
  if (precondition !== null) return precondition;
  if (typeof process.getuid !== 'function' || process.getuid() !== 0) {
    precondition = 'network integration tests must run as root (they create tap devices); run them as root, as CI does';
  } else if (!existsSync('/dev/net/tun')) {
    precondition = '/dev/net/tun is missing: tap devices cannot be created here';
  } else {
    try {
      ip('-V');
      precondition = undefined;
    } catch (err) {
      precondition = `iproute2 "ip" is not usable (install iproute2): ${String(err)}`;
    }
  }
  return precondition;
}

// In beforeEach, not beforeAll: a failing beforeAll makes vitest count the tests as skipped; here
// every test FAILS with the reason.
beforeEach(() => {
  const reason = checkPrecondition();
  if (reason) throw new Error(reason);
});

afterEach(() => {
  if (checkPrecondition()) return; // nothing could have been created
  removeCreated();
  assertNothingLeft();
  created.clear();
});

afterAll(() => {
  if (netnsCreated) {
    try {
      ip('netns', 'del', NETNS);
    } catch {
      /* checked just below */
    }
    expect(ip('netns', 'list')).not.toContain(NETNS);
  }
});

describe('Iproute2Network (real iproute2, root)', () => {
  it('creates marked, up taps, visible to plain ip and to listOwned', async () => {
    const a = freshTap();
    const b = freshTap();
    const ownerA: TapOwner = { hostId: HOST, vmUid: a.uid };
    const ownerB: TapOwner = { hostId: HOST, vmUid: b.uid };
    await net.createTap(a.name, ownerA);
    await net.createTap(b.name, ownerB);

    for (const [name, owner] of [
      [a.name, ownerA],
      [b.name, ownerB],
    ] as const) {
      const raw = rawLink(name);
      expect(raw, `${name} exists`).toBeDefined();
      expect(raw!.flags).toContain('UP');
      expect(raw!.ifalias).toBe(ownerAlias(owner));
      expect(raw!.linkinfo?.info_kind).toBe('tun');
      expect(raw!.linkinfo?.info_data?.type).toBe('tap');

      const info = await net.getTap(name);
      expect(info).toMatchObject({ name, up: true, owner, isTap: true });
    }

    const owned = await net.listOwned(HOST);
    expect(owned.map((l) => l.name).sort()).toEqual([a.name, b.name].sort());
    expect(await net.listOwned(OTHER_HOST)).toEqual([]);
  });

  it('createTap is idempotent and brings a marked tap back up', async () => {
    const t = freshTap();
    const owner = { hostId: HOST, vmUid: t.uid };
    await net.createTap(t.name, owner);
    const ifindex = rawLink(t.name)!.ifindex;
    await net.createTap(t.name, owner);
    expect(rawLink(t.name)!.ifindex).toBe(ifindex);

    ip('link', 'set', 'dev', t.name, 'down');
    expect(rawLink(t.name)!.flags).not.toContain('UP');
    await net.createTap(t.name, owner);
    expect(rawLink(t.name)!.flags).toContain('UP');
    expect(rawLink(t.name)!.ifindex).toBe(ifindex);

    // Concurrent creates of the same tap by the same owner both succeed, one device results.
    const c = freshTap();
    const cOwner = { hostId: HOST, vmUid: c.uid };
    await Promise.all([net.createTap(c.name, cOwner), net.createTap(c.name, cOwner), net.createTap(c.name, cOwner)]);
    expect(rawLink(c.name)?.ifalias).toBe(ownerAlias(cOwner));
  });

  it('never touches a device without exactly our mark, whatever its name', async () => {
    const uid = newUid();
    // An unmarked tap under a Tether-looking name (also what a crash between create and mark would leave).
    const noAlias = decoyTap();
    // Another host's mark.
    const otherHost = decoyTap(ownerAlias({ hostId: OTHER_HOST, vmUid: uid }));
    // An operator's note that merely mentions tether.
    const note = decoyTap(`tether ${HOST} note`);
    const decoys = [noAlias, otherHost, note];
    expect(decoys.every((n) => n.startsWith('tt'))).toBe(true);
    const before = new Map(decoys.map((n) => [n, rawLink(n)!]));

    for (const name of decoys) {
      expect(await net.getTap(name)).toMatchObject({ name, isTap: true });
      // As this host, for any VM: refused.
      await expectCode(net.deleteTap(name, { hostId: HOST, vmUid: uid }), 'NOT_OWNED');
      await expectCode(net.createTap(name, { hostId: HOST, vmUid: uid }), 'NOT_OWNED');
    }
    expect((await net.getTap(noAlias))?.owner).toBeUndefined();
    expect((await net.getTap(otherHost))?.owner).toEqual({ hostId: OTHER_HOST, vmUid: uid });

    // Untouched: same device (ifindex), same alias, same admin state.
    for (const [name, was] of before) {
      const now = rawLink(name);
      expect(now?.ifindex).toBe(was.ifindex);
      expect(now?.ifalias).toBe(was.ifalias);
      expect(now?.flags.includes('UP')).toBe(was.flags.includes('UP'));
    }
    const owned = (await net.listOwned(HOST)).map((l) => l.name);
    for (const name of decoys) expect(owned).not.toContain(name);
  });

  it('refuses a tap of the same host but another VM (a tapName collision)', async () => {
    const first = freshTap();
    await net.createTap(first.name, { hostId: HOST, vmUid: first.uid });
    // A second uid sharing the first 11 hex digits maps to the same name.
    const twin = `${first.uid.slice(0, 11)}${newUid().slice(11)}`;
    expect(tapName(twin, 0)).toBe(first.name);
    const err = await expectCode(net.createTap(first.name, { hostId: HOST, vmUid: twin }), 'NOT_OWNED');
    expect(err.message).toContain(first.name);
    await expectCode(net.deleteTap(first.name, { hostId: HOST, vmUid: twin }), 'NOT_OWNED');
    expect(rawLink(first.name)?.ifalias).toBe(ownerAlias({ hostId: HOST, vmUid: first.uid }));
  });

  it('lists but never deletes a marked device that is not a tap', async () => {
    const tunUid = newUid();
    const tun = decoyTap(ownerAlias({ hostId: HOST, vmUid: tunUid }), 'tun');
    const vethUid = newUid();
    const veth = tapName(vethUid, 0);
    const peer = tapName(vethUid, 1);
    created.add(veth).add(peer);
    ip('link', 'add', veth, 'type', 'veth', 'peer', 'name', peer);
    ip('link', 'set', 'dev', veth, 'alias', ownerAlias({ hostId: HOST, vmUid: vethUid }));

    const owned = await net.listOwned(HOST);
    expect(owned.filter((l) => l.name === tun || l.name === veth).map((l) => [l.name, l.isTap])).toEqual(
      expect.arrayContaining([
        [tun, false],
        [veth, false],
      ]),
    );
    await expectCode(net.deleteTap(tun, { hostId: HOST, vmUid: tunUid }), 'NOT_OWNED');
    await expectCode(net.deleteTap(veth, { hostId: HOST, vmUid: vethUid }), 'NOT_OWNED');
    await expectCode(net.createTap(veth, { hostId: HOST, vmUid: vethUid }), 'NOT_OWNED');
    expect(rawLink(tun)).toBeDefined();
    expect(rawLink(veth)).toBeDefined();
  });

  it('deleteTap removes only ours, verifies, and succeeds on a missing device', async () => {
    const a = freshTap();
    const b = freshTap();
    const ownerA = { hostId: HOST, vmUid: a.uid };
    const ownerB = { hostId: HOST, vmUid: b.uid };
    await net.createTap(a.name, ownerA);
    await net.createTap(b.name, ownerB);
    const decoy = decoyTap();
    const foreign = decoyTap(ownerAlias({ hostId: OTHER_HOST, vmUid: a.uid }));

    await net.deleteTap(a.name, ownerA);
    expect(rawLink(a.name)).toBeUndefined();
    expect(await net.getTap(a.name)).toBeUndefined();
    expect(rawLink(b.name)?.ifalias).toBe(ownerAlias(ownerB));
    expect(rawLink(decoy)).toBeDefined();
    expect(rawLink(foreign)?.ifalias).toBe(ownerAlias({ hostId: OTHER_HOST, vmUid: a.uid }));
    expect((await net.listOwned(HOST)).map((l) => l.name)).toEqual([b.name]);

    // Missing: success, twice over, including a name that never existed.
    await net.deleteTap(a.name, ownerA);
    await net.deleteTap(tapName(newUid(), 0), ownerA);

    await net.deleteTap(b.name, ownerB);
    expect(await net.listOwned(HOST)).toEqual([]);
    expect(rawLink(decoy)).toBeDefined();
    expect(rawLink(foreign)).toBeDefined();
  });

  it('refuses unusable names and owners before running ip', async () => {
    const owner = { hostId: HOST, vmUid: newUid() };
    for (const bad of ['', 'a'.repeat(16), 'a b', '-x', 'x/y', 'a:b', '..']) {
      await expectCode(net.createTap(bad, owner), 'INVALID_ARGUMENT');
      await expectCode(net.deleteTap(bad, owner), 'INVALID_ARGUMENT');
      await expectCode(net.getTap(bad), 'INVALID_ARGUMENT');
    }
    const t = freshTap();
    await expectCode(net.createTap(t.name, { hostId: 'a:b', vmUid: t.uid }), 'INVALID_ARGUMENT');
    await expectCode(net.createTap(t.name, { hostId: HOST, vmUid: 'x y' }), 'INVALID_ARGUMENT');
    await expectCode(net.listOwned('bad host'), 'INVALID_ARGUMENT');
    expect(rawLink(t.name)).toBeUndefined();
  });

  it('reports ip failures as NETWORK_ERROR with stderr', async () => {
    const broken = new Iproute2Network({ netns: `tether-missing-${RUN}` });
    const err = await expectCode(broken.listOwned(HOST), 'NETWORK_ERROR');
    expect(err.message).toMatch(/Cannot open network namespace/);
    expect(err.cause).toBeInstanceOf(Error);
    // Reads come from sysfs; writes need the ip binary.
    const missing = new Iproute2Network({ ipPath: `/nonexistent/ip-${RUN}` });
    const t = freshTap();
    await expectCode(missing.createTap(t.name, { hostId: HOST, vmUid: t.uid }), 'NETWORK_ERROR');
    expect(rawLink(t.name)).toBeUndefined();
  });

  it('works inside a named network namespace without touching the default one', async () => {
    ip('netns', 'add', NETNS);
    netnsCreated = true;
    const inNs = new Iproute2Network({ netns: NETNS });
    const t = freshTap();
    const owner = { hostId: HOST, vmUid: t.uid };
    await inNs.createTap(t.name, owner);
    expect(rawLink(t.name)).toBeUndefined();
    expect(await net.getTap(t.name)).toBeUndefined();
    expect((await inNs.listOwned(HOST)).map((l) => [l.name, l.up])).toEqual([[t.name, true]]);
    await inNs.deleteTap(t.name, owner);
    expect(await inNs.listOwned(HOST)).toEqual([]);
    ip('netns', 'del', NETNS);
    netnsCreated = false;
    expect(ip('netns', 'list')).not.toContain(NETNS);
  });

  it('measures create and delete (sequential and parallel)', async () => {
    const n = 20;
    const taps = Array.from({ length: n }, () => freshTap());
    let t0 = performance.now();
    for (const t of taps) await net.createTap(t.name, { hostId: HOST, vmUid: t.uid });
    const createMs = (performance.now() - t0) / n;
    t0 = performance.now();
    const listed = await net.listOwned(HOST);
    const listMs = performance.now() - t0;
    expect(listed).toHaveLength(n);
    t0 = performance.now();
    for (const t of taps.slice(0, n / 2)) await net.deleteTap(t.name, { hostId: HOST, vmUid: t.uid });
    const deleteMs = (performance.now() - t0) / (n / 2);
    t0 = performance.now();
    await Promise.all(taps.slice(n / 2).map((t) => net.deleteTap(t.name, { hostId: HOST, vmUid: t.uid })));
    const parallelDeleteMs = performance.now() - t0;
    expect(await net.listOwned(HOST)).toEqual([]);
    console.log(
      `[network] createTap ${createMs.toFixed(1)} ms/tap, deleteTap ${deleteMs.toFixed(1)} ms/tap (sequential), ` +
        `${n / 2} parallel deleteTap ${parallelDeleteMs.toFixed(1)} ms total, listOwned(${n}) ${listMs.toFixed(1)} ms`,
    );
  });
});
