/**
 * Transport security and authentication of the gRPC API, with Flintlock's semantics:
 *  - TLS from the agent's certificate and key (minimum TLS 1.3, as Flintlock's server), mutual TLS
 *    when `tlsClientValidate` (a client without a certificate signed by the client CA fails the
 *    handshake: no call ever reaches a handler);
 *  - the token as gRPC metadata `authorization: basic <base64 of the token>`, checked by a server
 *    interceptor when the call's metadata arrives, before the request message is read: an
 *    unauthenticated call ends UNAUTHENTICATED and reaches no handler, so it changes nothing.
 */
import { Metadata, ServerCredentials, ServerInterceptingCall, status as GrpcStatus, type ServerInterceptor } from '@grpc/grpc-js';
import type { SecureServerOptions } from 'node:http2';
import type { SecureContextOptions } from 'node:tls';
import { MIN_TLS_VERSION, type ApiSecurity, type ApiTls } from '../auth/api-security.js';
import { verifyBasicAuthorization } from '../auth/token.js';
import type { FlintlockMicroVM } from './wire-types.js';

/** What a metadata value reads as for a caller who is not authenticated. */
export const REDACTED = '<redacted>';

/**
 * Server credentials from {@link ApiTls}. grpc-js' `createSsl` cannot set a minimum TLS version, so
 * this passes the same options it would (`requestCert`, client CA) plus `minVersion` and an explicit
 * `rejectUnauthorized`.
 */
class TlsServerCredentials extends ServerCredentials {
  constructor(tls: ApiTls) {
    const ctor: SecureServerOptions = { requestCert: tls.requireClientCert, rejectUnauthorized: true, minVersion: MIN_TLS_VERSION };
    const ctx: SecureContextOptions = { cert: tls.cert, key: tls.key, ...(tls.clientCa ? { ca: tls.clientCa } : {}) };
    super(ctor, ctx);
  }
  _equals(other: ServerCredentials): boolean {
    return other === this;
  }
}

/** gRPC server credentials for `sec`: TLS when configured, else insecure (loopback only; see checkListenerSecurity). */
export function grpcServerCredentials(sec: ApiSecurity): ServerCredentials {
  return sec.tls ? new TlsServerCredentials(sec.tls) : ServerCredentials.createInsecure();
}

function authorizationOf(md: Metadata): string | undefined {
  const v = md.get('authorization')[0];
  return typeof v === 'string' ? v : undefined;
}

/**
 * Why this call's credentials are refused, or undefined when it may proceed. With no token
 * configured every call proceeds (client certificates, when required, were checked by TLS).
 */
export function grpcAuthRefusal(sec: ApiSecurity, md: Metadata): string | undefined {
  return sec.token === undefined ? undefined : verifyBasicAuthorization(authorizationOf(md), sec.token);
}

/**
 * True when the caller proved who they are: a matching token, or (no token configured) a client
 * certificate verified by mutual TLS. Anonymous callers (no credential configured) are not.
 */
export function grpcCallAuthenticated(sec: ApiSecurity, md: Metadata): boolean {
  if (sec.token !== undefined) return grpcAuthRefusal(sec, md) === undefined;
  return sec.tls?.requireClientCert === true;
}

/**
 * The interceptor that refuses a call without a valid token (no-op when no token is configured).
 * `onRefused` hears the method and the reason (never the credential), for a debug log line.
 */
export function createAuthInterceptor(sec: ApiSecurity, onRefused?: (method: string, why: string) => void): ServerInterceptor {
  return (method, call) =>
    new ServerInterceptingCall(call, {
      start: (next) =>
        next({
          onReceiveMetadata: (md, mdNext) => {
            const why = grpcAuthRefusal(sec, md);
            if (why === undefined) {
              mdNext(md);
              return;
            }
            onRefused?.(method.path, why);
            call.sendStatus({ code: GrpcStatus.UNAUTHENTICATED, details: why, metadata: new Metadata() });
          },
        }),
    });
}

/** `vm` with every metadata value replaced by {@link REDACTED} (keys kept): for unauthenticated callers. */
export function redactMetadata(vm: FlintlockMicroVM): FlintlockMicroVM {
  const metadata: Record<string, string> = {};
  for (const k of Object.keys(vm.spec.metadata)) metadata[k] = REDACTED;
  return { ...vm, spec: { ...vm.spec, metadata } };
}
