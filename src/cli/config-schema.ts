import { readFileSync } from 'node:fs';
import { parse as parseYaml } from 'yaml';
import type { Command } from 'commander';
import { formatDuration, parseDuration } from '../domain/duration.js';
import { TetherError } from '../domain/errors.js';

/** Kinds of configuration values. */
export type ConfigType = 'string' | 'duration' | 'int' | 'list' | 'bool' | { readonly oneOf: readonly string[] };

/** One configuration key. The flag is the key in kebab-case, the environment variable TETHER_<KEY_IN_SNAKE_CASE>. */
export interface ConfigKey {
  readonly key: string;
  readonly type: ConfigType;
  readonly description: string;
  /** Default value (already parsed); undefined = required. */
  readonly default?: string | number | boolean | readonly string[];
}

/** Parsed configuration values by key. */
export type ConfigValues = Record<string, string | number | boolean | string[]>;

/** `stopGrace` -> `stop-grace`. */
export function kebab(key: string): string {
  return key.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`);
}

/** `stopGrace` -> `TETHER_STOP_GRACE`. */
export function envName(key: string): string {
  return `TETHER_${kebab(key).replace(/-/g, '_').toUpperCase()}`;
}

function parseValue(k: ConfigKey, raw: unknown, source: string): string | number | boolean | string[] {
  const fail = (why: string): never => {
    throw new TetherError('INVALID_ARGUMENT', `invalid ${source} for ${k.key} (--${kebab(k.key)}): ${why}`, { details: { field: k.key } });
  };
  const t = k.type;
  if (t === 'duration') {
    try {
      return parseDuration(typeof raw === 'number' ? raw : String(raw));
    } catch (e) {
      return fail((e as Error).message);
    }
  }
  if (t === 'int') {
    const n = Number(raw);
    if (!Number.isInteger(n) || n < 0) fail(`"${String(raw)}" is not a non-negative integer`);
    return n;
  }
  if (t === 'bool') {
    // A bare flag (`--insecure`) arrives as true; words as Go's strconv.ParseBool and YAML spell them.
    if (typeof raw === 'boolean') return raw;
    const w = String(raw).trim().toLowerCase();
    if (['true', '1', 't', 'yes', 'on'].includes(w)) return true;
    if (['false', '0', 'f', 'no', 'off'].includes(w)) return false;
    return fail(`"${String(raw)}" is not a boolean (true or false)`);
  }
  if (t === 'list') {
    const items = Array.isArray(raw) ? raw.map(String) : String(raw).split(',');
    return items.map((s) => s.trim()).filter((s) => s !== '');
  }
  const s = String(raw);
  if (typeof t === 'object' && !t.oneOf.includes(s)) fail(`"${s}" is not one of ${t.oneOf.join(', ')}`);
  return s;
}

/**
 * Resolves configuration from defaults < YAML file < environment < flags. Unknown keys in the
 * file and bad values anywhere are errors that name the key and where it came from.
 */
export function resolveConfig(
  schema: readonly ConfigKey[],
  flags: Record<string, unknown>,
  env: NodeJS.ProcessEnv,
  configFile?: string,
): ConfigValues {
  const byKey = new Map(schema.map((k) => [k.key, k]));
  const out: ConfigValues = {};
  for (const k of schema) if (k.default !== undefined) out[k.key] = Array.isArray(k.default) ? [...k.default] : (k.default as string | number | boolean);

  if (configFile) {
    let doc: unknown;
    try {
      doc = parseYaml(readFileSync(configFile, 'utf8'));
    } catch (cause) {
      throw new TetherError('INVALID_ARGUMENT', `reading config file ${configFile}: ${(cause as Error).message}`, { cause });
    }
    if (doc !== null && doc !== undefined) {
      if (typeof doc !== 'object' || Array.isArray(doc)) throw new TetherError('INVALID_ARGUMENT', `config file ${configFile}: expected a mapping of keys`);
      for (const [rawKey, v] of Object.entries(doc as Record<string, unknown>)) {
        const key = rawKey.replace(/-([a-z])/g, (_, c: string) => c.toUpperCase());
        const k = byKey.get(key);
        if (!k) throw new TetherError('INVALID_ARGUMENT', `config file ${configFile}: unknown key "${rawKey}" (known: ${schema.map((s) => s.key).join(', ')})`);
        out[key] = parseValue(k, v, `value in ${configFile}`);
      }
    }
  }
  for (const k of schema) {
    const v = env[envName(k.key)];
    if (v !== undefined && v !== '') out[k.key] = parseValue(k, v, `environment ${envName(k.key)}`);
  }
  for (const k of schema) {
    const v = flags[k.key];
    if (v !== undefined) out[k.key] = parseValue(k, v, 'flag');
  }
  const missing = schema.filter((k) => out[k.key] === undefined);
  if (missing.length > 0) {
    throw new TetherError('INVALID_ARGUMENT', `missing required setting(s): ${missing.map((k) => `--${kebab(k.key)} (or ${envName(k.key)})`).join(', ')}`);
  }
  return out;
}

/**
 * Adds `-c, --config <file>` and one `--<kebab-key> <value>` option per key to `cmd`, each help line
 * with its default as a user would write it (`8s`, not `8000`).
 */
export function addConfigOptions(cmd: Command, schema: readonly ConfigKey[]): Command {
  cmd.option('-c, --config <file>', 'YAML config file (keys as below, camelCase or kebab-case)');
  for (const k of schema) {
    const d = k.default;
    const shown = d === undefined ? '' : Array.isArray(d) ? d.join(',') : k.type === 'duration' && typeof d === 'number' ? formatDuration(d) : String(d);
    // A bool is a bare flag (`--insecure`), as in Flintlock; `--insecure false` also works.
    cmd.option(`--${kebab(k.key)} ${k.type === 'bool' ? '[value]' : '<value>'}`, `${k.description}${shown === '' ? '' : ` (default ${shown})`}`);
  }
  return cmd;
}
