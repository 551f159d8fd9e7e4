import { describe, expect, it } from 'vitest';
import { isOwnedTap, MAX_ALIAS_LENGTH, ownerMarkProblem, parseLinkJson, type LinkInfo } from '../../src/adapters/iproute2/link-json.js';
import { isValidIfName, MAX_IFNAME_LENGTH, MAX_TAP_INDEX, tapName } from '../../src/domain/tap-name.js';
import { ownerAlias, parseOwnerAlias } from '../../src/ports/network.js';

const UID = '0123456789abcdef0123456789abcdef';
const UID2 = 'fedcba9876543210fedcba9876543210';

describe('owner alias', () => {
  it('round-trips a well-formed owner', () => {
    const owner = { hostId: 'host-a.1_x', vmUid: UID };
    expect(ownerAlias(owner)).toBe(`tether:host-a.1_x:${UID}`);
    expect(parseOwnerAlias(ownerAlias(owner))).toEqual(owner);
  });

  it.each([
    [undefined],
    [''],
    ['tether:'],
    ['tether:host'],
    ['tether::uid'],
    ['tether:host:'],
    ['Tether:host:uid'],
    ['tether:host:uid:extra'],
    ['tether:host:u id'],
    ['xtether:host:uid'],
    ['tether:host:uid\n'],
    ['some operator note'],
  ])('rejects %j as a mark', (alias) => {
    expect(parseOwnerAlias(alias)).toBeUndefined();
  });

  it('reports unusable owners before anything is written', () => {
    expect(ownerMarkProblem({ hostId: 'h', vmUid: UID })).toBeUndefined();
    expect(ownerMarkProblem({ hostId: 'a:b', vmUid: UID })).toMatch(/not well-formed/);
    expect(ownerMarkProblem({ hostId: 'h', vmUid: 'u:v' })).toMatch(/not well-formed/);
    expect(ownerMarkProblem({ hostId: '', vmUid: UID })).toMatch(/not well-formed/);
    expect(ownerMarkProblem({ hostId: 'h', vmUid: 'has space' })).toMatch(/not well-formed/);
    expect(ownerMarkProblem({ hostId: 'h'.repeat(MAX_ALIAS_LENGTH), vmUid: UID })).toMatch(/kernel keeps/);
  });
});

describe('tapName', () => {
  it('is tt + 11 hex of the uid + base-36 index', () => {
    expect(tapName(UID, 0)).toBe('tt0123456789a0');
    expect(tapName(UID, 35)).toBe('tt0123456789az');
    expect(tapName(UID, 36)).toBe('tt0123456789a10');
    expect(tapName(UID, MAX_TAP_INDEX)).toBe('tt0123456789azz');
  });

  it('fits IFNAMSIZ, uses [a-z0-9], and is unique per index of one uid', () => {
    const seen = new Set<string>();
    for (let i = 0; i <= MAX_TAP_INDEX; i++) {
      const name = tapName(UID, i);
      expect(name.length).toBeLessThanOrEqual(MAX_IFNAME_LENGTH);
      expect(name).toMatch(/^tt[a-z0-9]+$/);
      expect(isValidIfName(name)).toBe(true);
      seen.add(name);
    }
    expect(seen.size).toBe(MAX_TAP_INDEX + 1);
    expect(tapName(UID2, 0)).not.toBe(tapName(UID, 0));
  });

  it('collides for uids sharing 11 hex digits (collision is detected by the mark, not assumed away)', () => {
    const other = `${UID.slice(0, 11)}${'f'.repeat(21)}`;
    expect(tapName(other, 0)).toBe(tapName(UID, 0));
  });

  it.each([
    ['0123456789ABCDEF0123456789ABCDEF', 0],
    ['0123', 0],
    ['0123456789abcdef0123456789abcdeg', 0],
    [UID, -1],
    [UID, 1.5],
    [UID, MAX_TAP_INDEX + 1],
    [UID, Number.NaN],
  ])('refuses uid %s index %s', (uid, index) => {
    expect(() => tapName(uid, index)).toThrow(RangeError);
  });
});

describe('isValidIfName', () => {
  it.each(['eth0', 'tt0123456789azz', 'a', 'br-1.2_x', '.x'])('accepts %s', (n) => expect(isValidIfName(n)).toBe(true));
  it.each(['', '.', '..', 'a'.repeat(16), 'a b', 'a/b', 'a:b', '-x', 'a\n', 'tap#1', 'é'])('refuses %j', (n) =>
    expect(isValidIfName(n)).toBe(false),
  );
});

describe('parseLinkJson', () => {
  const sample = JSON.stringify([
    { ifindex: 1, ifname: 'lo', flags: ['LOOPBACK', 'UP', 'LOWER_UP'] },
    {
      ifindex: 5,
      ifname: 'tt0123456789a0',
      flags: ['NO-CARRIER', 'BROADCAST', 'MULTICAST', 'UP'],
      operstate: 'DOWN',
      linkinfo: { info_kind: 'tun', info_data: { type: 'tap', pi: false, persist: true } },
      ifalias: `tether:h1:${UID}`,
    },
    { ifindex: 6, ifname: 'tun0', flags: ['POINTOPOINT'], linkinfo: { info_kind: 'tun', info_data: { type: 'tun' } }, ifalias: `tether:h1:${UID2}` },
    { ifindex: 7, ifname: 'veth0', flags: ['UP'], linkinfo: { info_kind: 'veth' }, ifalias: 'operator note' },
    { ifname: 'broken' },
  ]);

  it('parses name, index, admin-up flag, kind, tap-ness, raw alias and owner', () => {
    const links = parseLinkJson(sample);
    expect(links.map((l) => l.name)).toEqual(['lo', 'tt0123456789a0', 'tun0', 'veth0']);
    const [lo, tap, tun, veth] = links as [LinkInfo, LinkInfo, LinkInfo, LinkInfo];
    expect(lo).toEqual({ name: 'lo', ifindex: 1, up: true, isTap: false });
    expect(tap).toEqual({
      name: 'tt0123456789a0',
      ifindex: 5,
      up: true,
      isTap: true,
      kind: 'tun',
      alias: `tether:h1:${UID}`,
      owner: { hostId: 'h1', vmUid: UID },
    });
    expect(tun.isTap).toBe(false);
    expect(tun.owner).toEqual({ hostId: 'h1', vmUid: UID2 });
    expect(veth.owner).toBeUndefined();
    expect(veth.alias).toBe('operator note');
  });

  it('treats empty output as no links and rejects non-arrays', () => {
    expect(parseLinkJson('')).toEqual([]);
    expect(parseLinkJson('  \n')).toEqual([]);
    expect(() => parseLinkJson('{}')).toThrow(TypeError);
    expect(() => parseLinkJson('not json')).toThrow(SyntaxError);
  });

  it('owns only a tap whose alias is exactly the mark', () => {
    const [, tap, tun] = parseLinkJson(sample) as [LinkInfo, LinkInfo, LinkInfo];
    expect(isOwnedTap(tap, { hostId: 'h1', vmUid: UID })).toBe(true);
    expect(isOwnedTap(tap, { hostId: 'h2', vmUid: UID })).toBe(false);
    expect(isOwnedTap(tap, { hostId: 'h1', vmUid: UID2 })).toBe(false);
    // Right alias, wrong kind: a tun device is never ours to delete.
    expect(isOwnedTap(tun, { hostId: 'h1', vmUid: UID2 })).toBe(false);
    expect(isOwnedTap({ ...tap, alias: `${tap.alias} ` }, { hostId: 'h1', vmUid: UID })).toBe(false);
  });
});
