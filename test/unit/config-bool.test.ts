import { Command } from 'commander';
import { describe, expect, it } from 'vitest';
import { AGENT_SCHEMA } from '../../src/cli/agent-config.js';
import { addConfigOptions, resolveConfig } from '../../src/cli/config-schema.js';

/** Boolean settings behave like Flintlock's flags: `--insecure` alone is true; words from env and files. */
describe('boolean settings (--insecure, --tls-client-validate)', () => {
  const parse = (argv: string[]) => {
    const cmd = addConfigOptions(new Command('agent').exitOverride(), AGENT_SCHEMA);
    cmd.parse(argv, { from: 'user' });
    return cmd.opts();
  };
  it('a bare flag is true, followed by another flag too', () => {
    const v = resolveConfig(AGENT_SCHEMA, parse(['--insecure', '--tls-client-validate', '--listen', '9090']), {});
    expect(v.insecure).toBe(true);
    expect(v.tlsClientValidate).toBe(true);
    expect(v.listen).toBe('9090');
  });
  it('defaults to false; words from the environment; flags win', () => {
    expect(resolveConfig(AGENT_SCHEMA, parse([]), {}).insecure).toBe(false);
    expect(resolveConfig(AGENT_SCHEMA, parse([]), { TETHER_INSECURE: 'true' }).insecure).toBe(true);
    expect(resolveConfig(AGENT_SCHEMA, parse(['--insecure', 'false']), { TETHER_INSECURE: 'true' }).insecure).toBe(false);
  });
  it('refuses a word that is not a boolean, naming the key', () => {
    expect(() => resolveConfig(AGENT_SCHEMA, parse([]), { TETHER_TLS_CLIENT_VALIDATE: 'maybe' })).toThrow(/tlsClientValidate \(--tls-client-validate\): "maybe" is not a boolean/);
  });
});
