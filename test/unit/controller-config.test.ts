import { Command } from 'commander';
import { describe, expect, it } from 'vitest';
import { CONTROLLER_SCHEMA, parseShare, registerControllerCommand, toControllerConfig } from '../../src/cli/commands/controller.js';
import { registerHostCommands } from '../../src/cli/commands/host.js';
import { resolveConfig } from '../../src/cli/config-schema.js';

describe('tether controller: configuration', () => {
  it('parses flags and environment with defaults (55 %, 24 h)', () => {
    const cfg = toControllerConfig(resolveConfig(CONTROLLER_SCHEMA, { etcdEndpoints: 'http://127.0.0.1:2379' }, {}));
    expect(cfg).toMatchObject({ etcdEndpoints: ['http://127.0.0.1:2379'], etcdPrefix: '/tether/', freezeShare: 0.55, hostRecordTtl: 86_400_000, fenceWindowOverride: 0, leaderTtl: 5000 });
    const env = toControllerConfig(
      resolveConfig(CONTROLLER_SCHEMA, { freezeShare: '0.7' }, { TETHER_ETCD_ENDPOINTS: 'http://a:1,http://b:2', TETHER_HOST_RECORD_TTL: '2h', TETHER_FENCE_WINDOW_OVERRIDE: '30s' }),
    );
    expect(env).toMatchObject({ etcdEndpoints: ['http://a:1', 'http://b:2'], freezeShare: 0.7, hostRecordTtl: 7_200_000, fenceWindowOverride: 30_000 });
  });

  it('refuses a missing endpoint list, bad shares and a fractional leader TTL, naming the setting', () => {
    expect(() => toControllerConfig(resolveConfig(CONTROLLER_SCHEMA, {}, {}))).toThrow(/--etcd-endpoints/);
    for (const bad of ['0', '0%', '150%', '-1', 'half', '101']) expect(() => parseShare(bad), bad).toThrow(/freezeShare/);
    expect(parseShare('55%')).toBeCloseTo(0.55);
    expect(parseShare('55')).toBeCloseTo(0.55);
    expect(parseShare('1')).toBe(1);
    expect(() => toControllerConfig(resolveConfig(CONTROLLER_SCHEMA, { etcdEndpoints: 'x', leaderTtl: '1500ms' }, {}))).toThrow(/leaderTtl/);
  });

  it('registers controller, host list|hold|release|drain|undrain|fence and events', () => {
    const p = new Command('tether');
    registerControllerCommand(p);
    registerHostCommands(p);
    expect(p.commands.map((c) => c.name()).sort()).toEqual(['controller', 'events', 'host']);
    const host = p.commands.find((c) => c.name() === 'host')!;
    expect(host.commands.map((c) => c.name()).sort()).toEqual(['drain', 'fence', 'hold', 'list', 'release', 'undrain']);
    const ctl = p.commands.find((c) => c.name() === 'controller')!;
    for (const f of ['--etcd-endpoints', '--etcd-prefix', '--freeze-share', '--host-record-ttl', '--log-level']) expect(ctl.options.map((o) => o.long)).toContain(f);
  });

  it('host fence without --confirm is refused before touching etcd, saying the host must be powered off', async () => {
    const p = new Command('tether').exitOverride();
    registerHostCommands(p);
    await expect(p.parseAsync(['node', 'tether', 'host', 'fence', 'b', '--etcd-endpoints', 'http://127.0.0.1:1'])).rejects.toMatchObject({
      code: 'INVALID_ARGUMENT',
      message: expect.stringMatching(/powered off/),
    });
  });
});
