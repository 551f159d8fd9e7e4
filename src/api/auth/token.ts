/**
 * The API token: reading it, and comparing what a caller sent with it in constant time.
 *
 * Wire forms (one token, two headers):
 *  - gRPC, as Flintlock: metadata `authorization: basic <base64 of the token>` (scheme case-insensitive,
 *    the rest compared with the base64 of the expected token, exactly as Flintlock's `BasicAuthFunc`);
 *  - admin HTTP: `Authorization: Bearer <token>` (what Prometheus sends with `authorization.credentials_file`).
 *
 * Invariants: a comparison never returns early on the first differing byte (both sides are hashed
 * with SHA-256 and compared with `timingSafeEqual`, so neither the content nor the length of the
 * expected token leaks through timing); a token is never part of an error message or a log line.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import { readFileSync, statSync } from 'node:fs';
import { InvalidArgumentError } from '../../domain/errors.js';

/** Shortest token accepted (characters): a guessable token on a network port is no protection. */
export const MIN_TOKEN_LENGTH = 16;

/** True when `supplied` equals `expected`, in time independent of where they differ. */
export function constantTimeEqual(supplied: string, expected: string): boolean {
  const a = createHash('sha256').update(supplied, 'utf8').digest();
  const b = createHash('sha256').update(expected, 'utf8').digest();
  return timingSafeEqual(a, b) && supplied.length === expected.length;
}

/**
 * Checks a token's shape. `key` names the setting for the error. Refuses empty or short tokens and
 * control characters (a newline inside a token would break every header).
 */
export function checkToken(token: string, key: string): string {
  if (token.length < MIN_TOKEN_LENGTH) {
    throw new InvalidArgumentError(key, `the token must be at least ${MIN_TOKEN_LENGTH} characters (got ${token.length}); make one with: openssl rand -hex 32`);
  }
  // eslint-disable-next-line no-control-regex
  if (/[\x00-\x1f\x7f]/.test(token)) throw new InvalidArgumentError(key, 'the token contains control characters');
  return token;
}

/**
 * Reads a token file (surrounding whitespace and the final newline removed) and checks it. Refuses
 * a file other users can read (mode & 0o007): the token is as secret as a private key.
 * Returns the token and a warning when the file is group-readable.
 */
export function readTokenFile(path: string, key: string): { token: string; warning?: string } {
  let text: string;
  let mode: number;
  try {
    mode = statSync(path).mode;
    text = readFileSync(path, 'utf8');
  } catch (cause) {
    throw new InvalidArgumentError(key, `cannot read the token file ${path}: ${(cause as Error).message}`, { cause });
  }
  if ((mode & 0o007) !== 0) throw new InvalidArgumentError(key, `${path} is readable by other users (mode ${(mode & 0o777).toString(8)}): chmod 600 ${path}`);
  const token = checkToken(text.trim(), key);
  return (mode & 0o070) !== 0 ? { token, warning: `${path} is readable by its group (mode ${(mode & 0o777).toString(8)}); chmod 600 is safer` } : { token };
}

/** The gRPC metadata value a client sends: `basic <base64 of token>` (Flintlock's format). */
export function basicAuthorization(token: string): string {
  return `basic ${Buffer.from(token, 'utf8').toString('base64')}`;
}

/** Why a credential was refused, or undefined when it is accepted. Never quotes the credential. */
export type TokenVerdict = undefined | string;

/**
 * Checks gRPC `authorization` metadata against `expected`, as Flintlock's `BasicAuthFunc` over
 * grpc-middleware's `AuthFromMD(ctx, "basic")` does: scheme `basic` (any case), one space, then the
 * base64 of the token, compared exactly. Returns the reason for a refusal.
 */
export function verifyBasicAuthorization(value: string | undefined, expected: string): TokenVerdict {
  if (value === undefined || value === '') return 'missing authorization metadata: send "authorization: basic <base64 of the token>"';
  const space = value.indexOf(' ');
  if (space < 0) return 'bad authorization string';
  if (value.slice(0, space).toLowerCase() !== 'basic') return 'unsupported authorization scheme: use "basic <base64 of the token>"';
  const supplied = value.slice(space + 1);
  if (supplied === '') return 'invalid auth token: empty authentication token';
  return constantTimeEqual(supplied, Buffer.from(expected, 'utf8').toString('base64')) ? undefined : 'invalid auth token: failed basic authentication, check the token supplied';
}

/** Checks an HTTP `Authorization` header: `Bearer <token>` (scheme any case). Returns the reason for a refusal. */
export function verifyBearerAuthorization(value: string | undefined, expected: string): TokenVerdict {
  if (value === undefined || value === '') return 'missing Authorization header: send "Authorization: Bearer <token>"';
  const space = value.indexOf(' ');
  if (space < 0 || value.slice(0, space).toLowerCase() !== 'bearer') return 'unsupported Authorization scheme: use "Bearer <token>"';
  const supplied = value.slice(space + 1).trim();
  return constantTimeEqual(supplied, expected) ? undefined : 'invalid token';
}
