/**
 * The Flintlock-compatible gRPC server: `microvm.services.api.v1alpha1.MicroVM` on top of a
 * {@link MicroVmService}.
 *
 * Invariants: handlers hold no state of their own (everything is the service's); every failure
 * reaches the client as a status built by {@link grpcStatusFromError} (message unchanged, code from
 * the TetherError code); validation happens before the service is called, so the service only
 * ever sees specs that passed {@link specFromFlintlock}.
 */
import { chmodSync } from 'node:fs';
import { Server, ServerCredentials, status as GrpcStatus, type handleServerStreamingCall, type handleUnaryCall, type Metadata, type ServerOptions, type ServerWritableStream, type UntypedServiceImplementation } from '@grpc/grpc-js';
import { TetherError, messageOf } from '../../domain/errors.js';
import type { Logger } from '../../ports/logger.js';
import type { MicroVmService } from '../../ports/microvm-service.js';
import { checkListenerSecurity, type ApiSecurity } from '../auth/api-security.js';
import { formatListenAddress, parseListenAddress, withPort } from '../listen-address.js';
import { CreateAdmission, DEFAULT_CREATE_LIMITS, type CreateLimits } from './create-admission.js';
import { loadMicroVmProto } from './proto.js';
import { createAuthInterceptor, grpcCallAuthenticated, grpcServerCredentials, redactMetadata } from './security.js';
import { filterFromListRequest, specFromCreateRequest, uidFromRequest } from './spec-mapping.js';
import { grpcStatusFromError, microVmFromRecord, type GrpcErrorStatus } from './status-mapping.js';
import type { CreateMicroVmRequestIn, FlintlockMicroVM, ListMicroVmsRequestIn, UidRequestIn } from './wire-types.js';

/** Where the API listens unless told otherwise: loopback only, Flintlock's usual port. */
export const DEFAULT_GRPC_ADDRESS = '127.0.0.1:9090';

/**
 * Largest request message the API reads: 2 MiB. A VM record is bounded to 96 KiB at create
 * (src/domain/codec/vm-limits.ts), so every valid create fits; a bigger message is refused by
 * grpc-js with RESOURCE_EXHAUSTED "Received message larger than max (<size> vs 2097152)" before it
 * is parsed.
 */
export const GRPC_MAX_RECEIVE_BYTES = 2 * 1024 * 1024;

/** Concurrent streams (calls) one client connection may open. */
export const GRPC_MAX_CONCURRENT_STREAMS = 64;

/** Options of {@link GrpcApiServer}. All optional. */
export interface GrpcApiServerOptions {
  /**
   * TLS and token (see auth/api-security.ts). Default `{}`: plaintext, no token, every caller
   * anonymous; {@link GrpcApiServer.listen} then refuses any address but loopback or a unix socket.
   */
  readonly security?: ApiSecurity;
  /** The setting the listen address comes from, named in errors; default `listen`. */
  readonly addressKey?: string;
  /** Create admission limits; default {@link DEFAULT_CREATE_LIMITS}. */
  readonly createLimits?: CreateLimits;
  /** Receives one debug line per call and one error line per INTERNAL failure. */
  readonly logger?: Logger;
  /** Folder holding the protos; default found from this module (see `findProtoRoot`). */
  readonly protoRoot?: string;
  /** grpc-js server options (keepalive, ...); message size and stream limits default to the constants above. */
  readonly serverOptions?: ServerOptions;
  /** How long {@link GrpcApiServer.close} waits for calls in flight before cutting them; default 5000 ms. */
  readonly shutdownTimeoutMs?: number;
}

type CreateResponse = { microvm: FlintlockMicroVM };
type ListResponse = { microvm: FlintlockMicroVM[] };

function errorOf(status: GrpcErrorStatus): Error & GrpcErrorStatus {
  return Object.assign(new Error(status.details), status);
}

/**
 * The five MicroVM handlers bound to `service`, ready for `Server.addService`. Exposed so a caller
 * can mount the service on a server it already runs; {@link GrpcApiServer} uses it.
 *
 * Behaviour (mirrors Flintlock where it can):
 * - CreateMicroVM validates the spec (INVALID_ARGUMENT / UNIMPLEMENTED naming the field), calls
 *   `service.create`, returns the new record (state PENDING).
 * - GetMicroVM / DeleteMicroVM require a non-empty uid (INVALID_ARGUMENT, field `uid`); unknown uids
 *   are the service's NOT_FOUND. Delete returns `google.protobuf.Empty`.
 * - ListMicroVMs filters by namespace (empty: all) and name (when set).
 * - ListMicroVMsStream uses the same filter, writes one `ListMessage` per VM in service order
 *   (namespace, name), honours flow control, stops early when the client cancels, then ends.
 */
export function createMicroVmHandlers(
  service: MicroVmService,
  logger?: Logger,
  opts: { readonly security?: ApiSecurity; readonly createLimits?: CreateLimits } = {},
): UntypedServiceImplementation {
  const security = opts.security ?? {};
  // Metadata values (cloud-init user-data, bootstrap secrets) go only to authenticated callers.
  const out = (md: Metadata, vm: FlintlockMicroVM): FlintlockMicroVM => (grpcCallAuthenticated(security, md) ? vm : redactMetadata(vm));
  const admission = new CreateAdmission(opts.createLimits ?? DEFAULT_CREATE_LIMITS, async () => {
    const vms = await service.list({});
    return vms.filter((v) => v.phase === 'pending' || v.phase === 'creating').length;
  });

  const fail = (method: string, err: unknown): GrpcErrorStatus => {
    const status = grpcStatusFromError(err);
    if (err instanceof TetherError && status.code !== GrpcStatus.INTERNAL) {
      logger?.debug({ method, code: err.code, err: messageOf(err) }, 'grpc call rejected');
    } else {
      logger?.error({ method, err: messageOf(err) }, 'grpc call failed');
    }
    return status;
  };

  // Never log a request: its metadata may hold secrets. Method names and error messages only.
  const unary = <Req, Res>(method: string, fn: (req: Req, md: Metadata, cancelled: () => boolean) => Promise<Res>): handleUnaryCall<Req, Res> => {
    return (call, callback) => {
      logger?.debug({ method }, 'grpc call');
      fn(call.request, call.metadata, () => call.cancelled).then(
        (res) => callback(null, res),
        (err: unknown) => callback(fail(method, err)),
      );
    };
  };

  const CreateMicroVM = unary<CreateMicroVmRequestIn, CreateResponse>('CreateMicroVM', async (req, md, cancelled) => {
    const spec = specFromCreateRequest(req);
    const record = await admission.run(() => service.create(spec), cancelled);
    return { microvm: out(md, microVmFromRecord(record)) };
  });
  const DeleteMicroVM = unary<UidRequestIn, Record<string, never>>('DeleteMicroVM', async (req) => {
    await service.delete(uidFromRequest(req));
    return {};
  });
  const GetMicroVM = unary<UidRequestIn, CreateResponse>('GetMicroVM', async (req, md) => {
    return { microvm: out(md, microVmFromRecord(await service.get(uidFromRequest(req)))) };
  });
  const ListMicroVMs = unary<ListMicroVmsRequestIn, ListResponse>('ListMicroVMs', async (req, md) => {
    const records = await service.list(filterFromListRequest(req));
    return { microvm: records.map((r) => out(md, microVmFromRecord(r))) };
  });

  const ListMicroVMsStream: handleServerStreamingCall<ListMicroVmsRequestIn, { microvm: FlintlockMicroVM }> = (call) => {
    logger?.debug({ method: 'ListMicroVMsStream' }, 'grpc call');
    streamList(service, call, (vm) => out(call.metadata, vm)).then(
      () => call.end(),
      (err: unknown) => call.emit('error', errorOf(fail('ListMicroVMsStream', err))),
    );
  };

  return { CreateMicroVM, DeleteMicroVM, GetMicroVM, ListMicroVMs, ListMicroVMsStream };
}

async function streamList(
  service: MicroVmService,
  call: ServerWritableStream<ListMicroVmsRequestIn, { microvm: FlintlockMicroVM }>,
  out: (vm: FlintlockMicroVM) => FlintlockMicroVM,
): Promise<void> {
  const records = await service.list(filterFromListRequest(call.request));
  for (const record of records) {
    if (call.cancelled) return;
    if (!call.write({ microvm: out(microVmFromRecord(record)) })) await drained(call);
  }
}

/** Resolves when the stream can take more, or when it will never need to (cancelled/closed). */
function drained(call: ServerWritableStream<unknown, unknown>): Promise<void> {
  return new Promise((resolve) => {
    const done = (): void => {
      call.off('drain', done);
      call.off('cancelled', done);
      call.off('close', done);
      resolve();
    };
    call.on('drain', done);
    call.on('cancelled', done);
    call.on('close', done);
  });
}

/**
 * One gRPC server exposing the MicroVM service.
 *
 * Lifecycle: construct -> {@link listen} once -> {@link close} once (idempotent). A closed server
 * cannot listen again; make a new one. The protos are loaded in the constructor, so a broken
 * install fails there (INTERNAL), not on the first call.
 */
export class GrpcApiServer {
  private readonly server: Server;
  private readonly credentials: ServerCredentials;
  private readonly security: ApiSecurity;
  private readonly shutdownTimeoutMs: number;
  private state: 'new' | 'binding' | 'listening' | 'closed' = 'new';
  private bound: string | undefined;

  constructor(service: MicroVmService, private readonly opts: GrpcApiServerOptions = {}) {
    const proto = loadMicroVmProto(opts.protoRoot);
    const security = opts.security ?? {};
    this.server = new Server({
      'grpc.max_receive_message_length': GRPC_MAX_RECEIVE_BYTES,
      'grpc.max_concurrent_streams': GRPC_MAX_CONCURRENT_STREAMS,
      ...opts.serverOptions,
      interceptors: [
        ...(opts.serverOptions?.interceptors ?? []),
        createAuthInterceptor(security, (method, why) => opts.logger?.debug({ method, why }, 'grpc call refused: unauthenticated')),
      ],
    });
    this.server.addService(proto.service, createMicroVmHandlers(service, opts.logger, { security, ...(opts.createLimits ? { createLimits: opts.createLimits } : {}) }));
    this.credentials = grpcServerCredentials(security);
    this.security = security;
    this.shutdownTimeoutMs = opts.shutdownTimeoutMs ?? 5000;
  }

  /** The address bound by {@link listen} (with the real port), or undefined before/after. */
  get address(): string | undefined {
    return this.bound;
  }

  /**
   * Binds `address` (any form {@link parseListenAddress} reads: `host:port`, `[v6]:port`, a port
   * alone for loopback, `unix:/path`; port 0 picks a free one) and starts serving. Resolves with the
   * bound address, e.g. `127.0.0.1:41234`. Rejects INVALID_ARGUMENT (naming the address key) for an
   * unreadable address or one the security settings forbid (plaintext off loopback, no
   * authentication on the network), FAILED_PRECONDITION when called twice or after close,
   * UNAVAILABLE when the address cannot be bound. A unix socket is made 0600.
   */
  listen(address: string = DEFAULT_GRPC_ADDRESS): Promise<string> {
    if (this.state !== 'new') return Promise.reject(new TetherError('FAILED_PRECONDITION', `gRPC server is ${this.state}; listen() may be called once`));
    let parsed: ReturnType<typeof parseListenAddress>;
    try {
      parsed = parseListenAddress(address, this.opts.addressKey ?? 'listen');
      checkListenerSecurity(this.security, [{ key: this.opts.addressKey ?? 'listen', address: parsed }]);
    } catch (err) {
      return Promise.reject(err);
    }
    const target = formatListenAddress(parsed);
    this.state = 'binding';
    return new Promise((resolve, reject) => {
      this.server.bindAsync(target, this.credentials, (err, port) => {
        if (err) {
          this.state = 'new';
          reject(new TetherError('UNAVAILABLE', `binding gRPC server to ${address}: ${err.message}`, { cause: err }));
          return;
        }
        if (this.state === 'closed') {
          this.server.forceShutdown();
          reject(new TetherError('FAILED_PRECONDITION', 'gRPC server closed while binding'));
          return;
        }
        if (parsed.kind === 'unix') {
          try {
            chmodSync(parsed.path, 0o600);
          } catch (cause) {
            this.server.forceShutdown();
            this.state = 'closed';
            reject(new TetherError('UNAVAILABLE', `cannot restrict the gRPC socket ${parsed.path} to its owner: ${messageOf(cause)}`, { cause }));
            return;
          }
        }
        this.state = 'listening';
        this.bound = formatListenAddress(parsed.kind === 'unix' ? parsed : withPort(parsed, port));
        const sec = this.security;
        this.opts.logger?.info({ address: this.bound, tls: sec.tls !== undefined, mutualTls: sec.tls?.requireClientCert === true, token: sec.token !== undefined }, 'gRPC API listening');
        resolve(this.bound);
      });
    });
  }

  /**
   * Stops accepting calls, lets calls in flight finish for up to `shutdownTimeoutMs`, then cuts the
   * rest. Resolves when the server is down. Safe to call more than once or before listen.
   */
  close(): Promise<void> {
    if (this.state === 'closed') return Promise.resolve();
    const wasServing = this.state !== 'new';
    this.state = 'closed';
    this.bound = undefined;
    if (!wasServing) {
      this.server.forceShutdown();
      return Promise.resolve();
    }
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.server.forceShutdown();
        resolve();
      }, this.shutdownTimeoutMs);
      timer.unref();
      this.server.tryShutdown(() => {
        clearTimeout(timer);
        resolve();
      });
    });
  }
}

/**
 * Builds the API server for `service` (not yet listening): the composition root calls
 * `await createMicroVmGrpcServer(service, { logger }).listen(address)` and `close()` on shutdown.
 */
export function createMicroVmGrpcServer(service: MicroVmService, opts: GrpcApiServerOptions = {}): GrpcApiServer {
  return new GrpcApiServer(service, opts);
}
