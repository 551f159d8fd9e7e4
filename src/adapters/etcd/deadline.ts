import { EtcdAuthenticationFailedError, EtcdPermissionDeniedError, EtcdUserNotFoundError } from 'etcd3';
import { TetherError, messageOf } from '../../domain/errors.js';

/**
 * Races `p` against a deadline of `ms`. A call without an answer by then is a miss: rejects with a
 * retryable TIMEOUT naming `what`. A late answer is ignored (quorum loss makes etcd calls hang).
 */
export function withDeadline<T>(what: string, ms: number, p: Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new TetherError('TIMEOUT', `${what}: no answer within ${ms}ms`, { retryable: true })), ms);
  });
  p.catch(() => undefined);
  return Promise.race([p, timeout]).finally(() => clearTimeout(timer));
}

/** gRPC call options carrying the same deadline. */
export function deadlineOption(ms: number): { deadline: Date } {
  return { deadline: new Date(Date.now() + ms) };
}

/**
 * An etcd failure as a retryable UNAVAILABLE naming the call (a TetherError passes through). etcd
 * refusing who we are (wrong password, unknown user, no permission on the key) is not transient: it
 * comes out as a non-retryable UNAUTHENTICATED or PERMISSION_DENIED, so it is reported loudly.
 */
export function asRetryable(what: string, err: unknown): TetherError {
  if (err instanceof TetherError) return err;
  if (err instanceof EtcdAuthenticationFailedError || err instanceof EtcdUserNotFoundError) {
    return new TetherError('UNAUTHENTICATED', `${what}: etcd refused the credentials (check --etcd-user and the password): ${messageOf(err)}`, { cause: err });
  }
  if (err instanceof EtcdPermissionDeniedError) {
    return new TetherError('PERMISSION_DENIED', `${what}: etcd denied the permission (the etcd user's role does not cover this key): ${messageOf(err)}`, { cause: err });
  }
  return new TetherError('UNAVAILABLE', `${what}: ${messageOf(err)}`, { cause: err, retryable: true });
}
