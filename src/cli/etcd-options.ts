import { readFileSync } from 'node:fs';
import type { Command } from 'commander';
import { etcdSecurityNotes, type EtcdSecurity } from '../adapters/etcd/etcd-client.js';
import { TetherError, messageOf } from '../domain/errors.js';
import { resolveConfig, type ConfigKey, type ConfigValues } from './config-schema.js';

/** Environment variable holding the etcd password itself (never a flag: flags show in `ps`). */
export const ETCD_PASSWORD_ENV = 'TETHER_ETCD_PASSWORD';

/**
 * The etcd security settings every etcd-using command takes: flag `--<kebab>`, env `TETHER_<SNAKE>`
 * (TETHER_ETCD_CA, TETHER_ETCD_CERT, TETHER_ETCD_KEY, TETHER_ETCD_USER, TETHER_ETCD_PASSWORD_FILE),
 * config-file key as written here (agent and controller). `''` = not set. There is deliberately no
 * password flag or config key: the password comes from a file or from {@link ETCD_PASSWORD_ENV}.
 */
export const ETCD_SECURITY_SCHEMA: readonly ConfigKey[] = [
  { key: 'etcdCa', type: 'string', default: '', description: "PEM CA bundle that signed etcd's server certificates ('' with https:// = the system trust store)" },
  { key: 'etcdCert', type: 'string', default: '', description: "PEM client certificate for etcd's --client-cert-auth (with --etcd-key)" },
  { key: 'etcdKey', type: 'string', default: '', description: 'PEM private key of --etcd-cert' },
  { key: 'etcdUser', type: 'string', default: '', description: `etcd user for etcd's own auth; its password from --etcd-password-file or ${ETCD_PASSWORD_ENV}` },
  { key: 'etcdPasswordFile', type: 'string', default: '', description: 'file whose first line is the etcd password (keep it 0600)' },
];

/** The resolved values of {@link ETCD_SECURITY_SCHEMA} (`''` = not set). */
export interface EtcdSecuritySettings {
  readonly etcdCa: string;
  readonly etcdCert: string;
  readonly etcdKey: string;
  readonly etcdUser: string;
  readonly etcdPasswordFile: string;
}

const str = (v: unknown): string | undefined => (v === undefined || v === null || String(v) === '' ? undefined : String(v));

/**
 * Reads the password file (its first line; a trailing newline is not part of the password) or
 * {@link ETCD_PASSWORD_ENV}, and returns the {@link EtcdSecurity} the etcd client takes. TLS files
 * are read later, by the client, which names them in its errors.
 *
 * @throws TetherError `INVALID_ARGUMENT` naming the file when the password file is missing,
 *   unreadable or empty, and naming the setting when a password is given both ways or without a user
 *   (and the reverse).
 */
export function toEtcdSecurity(v: Partial<Record<keyof EtcdSecuritySettings, unknown>>, env: NodeJS.ProcessEnv = process.env): EtcdSecurity {
  const caFile = str(v.etcdCa);
  const certFile = str(v.etcdCert);
  const keyFile = str(v.etcdKey);
  const username = str(v.etcdUser);
  const passwordFile = str(v.etcdPasswordFile);
  const fromEnv = str(env[ETCD_PASSWORD_ENV]);
  let password: string | undefined;
  if (passwordFile !== undefined && fromEnv !== undefined) {
    throw new TetherError('INVALID_ARGUMENT', `the etcd password is given twice (--etcd-password-file ${passwordFile} and ${ETCD_PASSWORD_ENV}): give one`, { details: { field: 'etcdPasswordFile' } });
  }
  if (passwordFile !== undefined) {
    let text: string;
    try {
      text = readFileSync(passwordFile, 'utf8');
    } catch (err) {
      throw new TetherError('INVALID_ARGUMENT', `cannot read the etcd password file ${passwordFile} (--etcd-password-file, TETHER_ETCD_PASSWORD_FILE, config key etcdPasswordFile): ${messageOf(err)}`, {
        cause: err,
        details: { field: 'etcdPasswordFile', file: passwordFile },
      });
    }
    password = text.split(/\r?\n/)[0] ?? '';
    if (password === '') throw new TetherError('INVALID_ARGUMENT', `the etcd password file ${passwordFile} (--etcd-password-file) is empty`, { details: { field: 'etcdPasswordFile', file: passwordFile } });
  } else password = fromEnv;
  if (username === undefined && password !== undefined) {
    throw new TetherError('INVALID_ARGUMENT', `an etcd password was given (${passwordFile !== undefined ? '--etcd-password-file' : ETCD_PASSWORD_ENV}) without --etcd-user (TETHER_ETCD_USER)`, { details: { field: 'etcdUser' } });
  }
  if (username !== undefined && password === undefined) {
    throw new TetherError('INVALID_ARGUMENT', `etcd user ${JSON.stringify(username)} has no password: give --etcd-password-file (TETHER_ETCD_PASSWORD_FILE) or ${ETCD_PASSWORD_ENV}`, { details: { field: 'etcdPasswordFile' } });
  }
  return {
    ...(caFile !== undefined ? { caFile } : {}),
    ...(certFile !== undefined ? { certFile } : {}),
    ...(keyFile !== undefined ? { keyFile } : {}),
    ...(username !== undefined ? { username } : {}),
    ...(password !== undefined ? { password } : {}),
  };
}

/**
 * Adds `--etcd-ca`, `--etcd-cert`, `--etcd-key`, `--etcd-user` and `--etcd-password-file` to a
 * command that does not take the whole config schema (host, events, vm in cluster mode, dev...).
 * Commands built with `addConfigOptions` get them from {@link ETCD_SECURITY_SCHEMA} instead.
 */
export function addEtcdSecurityOptions(cmd: Command): Command {
  for (const k of ETCD_SECURITY_SCHEMA) {
    const flag = `--${k.key.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`;
    cmd.option(`${flag} <${k.key === 'etcdUser' ? 'name' : 'file'}>`, `${k.description} (or TETHER_${flag.slice(2).replace(/-/g, '_').toUpperCase()})`);
  }
  return cmd;
}

/** The security settings from parsed flags over `TETHER_ETCD_*` in `env`, then {@link toEtcdSecurity}. */
export function resolveEtcdSecurity(flags: Record<string, unknown>, env: NodeJS.ProcessEnv = process.env): EtcdSecurity {
  const pick: Record<string, unknown> = {};
  for (const k of ETCD_SECURITY_SCHEMA) pick[k.key] = flags[k.key];
  return toEtcdSecurity(resolveConfig(ETCD_SECURITY_SCHEMA, pick, env) as ConfigValues & Partial<EtcdSecuritySettings>, env);
}

let reported = false;

/**
 * Says once per process how etcd is reached (see `etcdSecurityNotes`): a warning naming every
 * plaintext `http://` endpoint, or a note that `https://` endpoints are checked against the system
 * trust store. `say` is the caller's logger (agent, controller) or stderr (one-shot commands).
 * Returns whether anything was said.
 */
export function reportEtcdSecurityOnce(endpoints: readonly string[], security: EtcdSecurity, say: (level: 'warn' | 'info', message: string) => void): boolean {
  if (reported) return false;
  reported = true;
  const notes = etcdSecurityNotes(endpoints, security);
  for (const n of notes) say(n.level, n.message);
  return notes.length > 0;
}

/** For tests: lets {@link reportEtcdSecurityOnce} speak again. */
export function resetEtcdSecurityReport(): void {
  reported = false;
}
