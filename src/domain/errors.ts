/**
 * Tether's error taxonomy: one base class, a stable machine-readable `code` per kind,
 * `cause` always passed on, and a `retryable` mark that retry policies may ask about.
 *
 * Invariant: `code` strings are part of the public contract (CLI `--json`, API details, logs);
 * never rename one, only add.
 */
export type ErrorCode =
  | 'INVALID_ARGUMENT'
  | 'NOT_FOUND'
  | 'ALREADY_EXISTS'
  | 'UNAVAILABLE'
  | 'UNIMPLEMENTED'
  | 'FAILED_PRECONDITION'
  | 'UNSAFE_CONFIG'
  | 'STEP_FAILED'
  | 'PLAN_NOT_CONVERGING'
  | 'VMM_ERROR'
  | 'NETWORK_ERROR'
  | 'VOLUME_ERROR'
  | 'INVENTORY_ERROR'
  | 'TIMEOUT'
  | 'NOT_OWNED'
  /** A record read from etcd failed its schema (see domain/codec.ts); the message names the key and the field. */
  | 'INVALID_RECORD'
  /** The caller presented no valid credential (token, client certificate). */
  | 'UNAUTHENTICATED'
  /** The caller is known but the request is refused (wrong Host/Origin, cross-site). */
  | 'PERMISSION_DENIED'
  /** A watch or read asked for a revision etcd has compacted away (`details.compactRevision`): re-list. Not retryable as is. */
  | 'COMPACTED'
  /** A limit was hit (message size, concurrent creates); the message names the limit. */
  | 'RESOURCE_EXHAUSTED'
  | 'INTERNAL';

/** Options accepted by every {@link TetherError}. */
export interface TetherErrorOptions {
  /** The error this one wraps; always pass it when rethrowing. */
  readonly cause?: unknown;
  /** True when the same call may succeed if tried again later. */
  readonly retryable?: boolean;
  /** Structured context (field names, ids) for logs and API details. */
  readonly details?: Readonly<Record<string, unknown>>;
}

/** Base class of every error Tether raises on purpose. */
export class TetherError extends Error {
  /** Stable code: safe to switch on. */
  readonly code: ErrorCode;
  /** Whether a retry may succeed. */
  readonly retryable: boolean;
  /** Structured context. */
  readonly details: Readonly<Record<string, unknown>>;

  constructor(code: ErrorCode, message: string, options: TetherErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'TetherError';
    this.code = code;
    this.retryable = options.retryable ?? false;
    this.details = options.details ?? {};
  }
}

/** A caller's input is wrong; `field` names the offending field (dotted path). */
export class InvalidArgumentError extends TetherError {
  /** Dotted path of the offending field, e.g. `spec.vcpu`. */
  readonly field: string;
  constructor(field: string, message: string, options: TetherErrorOptions = {}) {
    super('INVALID_ARGUMENT', `${field}: ${message}`, { ...options, details: { ...options.details, field } });
    this.name = 'InvalidArgumentError';
    this.field = field;
  }
}

/** The named thing does not exist. */
export class NotFoundError extends TetherError {
  constructor(what: string, options: TetherErrorOptions = {}) {
    super('NOT_FOUND', `${what} not found`, options);
    this.name = 'NotFoundError';
  }
}

/** True when `err` is a {@link TetherError} marked retryable. */
export function isRetryable(err: unknown): boolean {
  return err instanceof TetherError && err.retryable;
}

/** The message of any thrown value, for logs. */
export function messageOf(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/**
 * Wraps `cause` with context ("executing step tap-delete: …"), keeping the code of a
 * {@link TetherError} cause and its retryable mark unless overridden.
 */
export function wrapError(context: string, cause: unknown, code?: ErrorCode): TetherError {
  const inner = cause instanceof TetherError ? cause : undefined;
  return new TetherError(code ?? inner?.code ?? 'INTERNAL', `${context}: ${messageOf(cause)}`, {
    cause,
    retryable: inner?.retryable ?? false,
    details: inner?.details ?? {},
  });
}
