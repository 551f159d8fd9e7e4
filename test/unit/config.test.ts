import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { AGENT_SCHEMA, toAgentConfig } from '../../src/cli/agent-config.js';
import { envName, kebab, resolveConfig } from '../../src/cli/config-schema.js';

const dir = mkdtempSync(join(tmpdir(), 'tether-config-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('config', () => {
  it('names flags and env vars after the keys', () => {
    expect(kebab('stopGrace')).toBe('stop-grace');
    expect(envName('stopGrace')).toBe('TETHER_STOP_GRACE');
  });

  it('layers defaults < file < env < flags', () => {
    const file = join(dir, 'a.yaml');
    writeFileSync(file, 'stopGrace: 3s\nkill-timeout: 500ms\nhostId: from-file\n');
    const v = resolveConfig(AGENT_SCHEMA, { hostId: 'from-flag' }, { TETHER_STOP_GRACE: '4s' }, file);
    expect(v.stopGrace).toBe(4000);
    expect(v.killTimeout).toBe(500);
    expect(v.hostId).toBe('from-flag');
    expect(v.readyTimeout).toBe(60_000);
  });

  it('refuses unknown keys and bad values, naming them and their source', () => {
    const file = join(dir, 'b.yaml');
    writeFileSync(file, 'stopGrase: 3s\n');
    expect(() => resolveConfig(AGENT_SCHEMA, {}, {}, file)).toThrow(/unknown key "stopGrase"/);
    expect(() => resolveConfig(AGENT_SCHEMA, { stopGrace: '8 seconds' }, {}, undefined)).toThrow(/flag for stopGrace \(--stop-grace\)/);
    expect(() => resolveConfig(AGENT_SCHEMA, {}, { TETHER_ACCEL: 'xen' }, undefined)).toThrow(/environment TETHER_ACCEL.*not one of auto, kvm, tcg/);
  });

  it.each(['.', '..', 'a/b', '', 'x'.repeat(64)])('refuses the host id %j, naming the field', (hostId) => {
    expect(() => toAgentConfig(resolveConfig(AGENT_SCHEMA, { hostId }, {}, undefined))).toThrow(/invalid hostId/);
  });
});
