import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { repoRoot } from '../../src/dev/agent-process.js';

/**
 * The shipped systemd units say what docs/guardian.md promises. There is no systemd running on
 * this kind of machine: the units are checked as text, and with `systemd-analyze verify` where
 * that offline checker is installed (it is here).
 */

const dir = join(repoRoot(), 'deploy', 'systemd');

function unit(name: string): Map<string, string[]> {
  const out = new Map<string, string[]>();
  let section = '';
  for (const raw of readFileSync(join(dir, name), 'utf8').split('\n')) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) continue;
    const s = /^\[(.+)\]$/.exec(line);
    if (s) {
      section = s[1]!;
      continue;
    }
    const i = line.indexOf('=');
    const key = `${section}.${line.slice(0, i)}`;
    out.set(key, [...(out.get(key) ?? []), line.slice(i + 1)]);
  }
  return out;
}

const one = (u: Map<string, string[]>, key: string): string | undefined => u.get(key)?.at(-1);

describe('deploy/systemd units', () => {
  it('agent: restarted always, watched, and stopping it never kills VMs or the guardian', () => {
    const u = unit('tether-agent.service');
    expect(one(u, 'Service.KillMode')).toBe('process');
    expect(one(u, 'Service.Restart')).toBe('always');
    expect(one(u, 'Service.Type')).toBe('notify');
    expect(one(u, 'Service.WatchdogSec')).toMatch(/^\d+s$/);
    expect(one(u, 'Service.ExecStart')).toMatch(/tether\.js agent/);
    expect(one(u, 'Unit.Wants')).toContain('tether-guardian.service');
  });

  it('guardian: restarted always, watched through sd_notify from its helper child, never killed first by the OOM killer', () => {
    const u = unit('tether-guardian.service');
    expect(one(u, 'Service.Restart')).toBe('always');
    expect(one(u, 'Service.Type')).toBe('notify');
    expect(one(u, 'Service.NotifyAccess')).toBe('all');
    expect(one(u, 'Service.WatchdogSec')).toMatch(/^\d+s$/);
    expect(one(u, 'Service.OOMScoreAdjust')).toBe('-1000');
    expect(one(u, 'Service.ExecStart')).toMatch(/tether\.js guardian --wait-for-lock/);
    expect(one(u, 'Unit.Before')).toContain('tether-agent.service');
    expect(one(u, 'Unit.StartLimitIntervalSec')).toBe('0');
  });

  it('passes systemd-analyze verify where the offline checker exists', () => {
    let have = true;
    try {
      execFileSync('sh', ['-c', 'command -v systemd-analyze'], { stdio: 'ignore' });
    } catch {
      have = false;
    }
    if (!have) {
      console.log('systemd-analyze not installed: units checked as text only');
      return;
    }
    const out = execFileSync('systemd-analyze', ['verify', join(dir, 'tether-guardian.service'), join(dir, 'tether-agent.service')], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
    expect(out).toBe('');
  });
});
