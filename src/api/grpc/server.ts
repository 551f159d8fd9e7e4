/**
 * The Flintlock-compatible gRPC server: `microvm.services.api.v1alpha1.MicroVM` on top of a
 * {@link MicroVmService}.
 *
 * Invariants: handlers hold no state of their own (everything is the service's); every failure
 * reaches the client as a status built by {@link grpcStatusFromError} (message unchanged, code from
 * the TetherError code); validation happens before the service is called, so the service only
 * ever sees specs that passed {@link specFromFlintlock}.
 */
import { Server, ServerCredentials, status as GrpcStatus, type handleServerStreamingCall, type handleUnaryCall, type ServerOptions, type ServerWritableStream, type UntypedServiceImplementation } from '@grpc/grpc-js';
import { TetherError, messageOf } from '../../domain/errors.js';
import type { Logger } from '../../ports/logger.js';
import type { MicroVmService } from '../../ports/microvm-service.js';
import { loadMicroVmProto } from './proto.js';
import { filterFromListRequest, specFromCreateRequest, uidFromRequest } from './spec-mapping.js';
import { grpcStatusFromError, microVmFromRecord, type GrpcErrorStatus } from './status-mapping.js';
import type { CreateMicroVmRequestIn, FlintlockMicroVM, ListMicroVmsRequestIn, UidRequestIn } from './wire-types.js';

/** Where the API listens unless told otherwise: loopback only, Flintlock's usual port. */
export const DEFAULT_GRPC_ADDRESS = '127.0.0.1:9090';

/** Options of {@link GrpcApiServer}. All optional. */
export interface GrpcApiServerOptions {
  /** Transport security; default insecure (fine on loopback, which is the default address). */
  readonly credentials?: ServerCredentials;
  /** Receives one debug line per call and one error line per INTERNAL failure. */
  readonly logger?: Logger;
  /** Folder holding the protos; default found from this module (see `findProtoRoot`). */
  readonly protoRoot?: string;
  /** grpc-js server options (message size limits, keepalive, ...). */
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
export function createMicroVmHandlers(service: MicroVmService, logger?: Logger): UntypedServiceImplementation {
  const fail = (method: string, err: unknown): GrpcErrorStatus => {
    const status = grpcStatusFromError(err);
    if (err instanceof TetherError && status.code !== GrpcStatus.INTERNAL) {
      logger?.debug({ method, code: err.code, err: messageOf(err) }, 'grpc call rejected');
    } else {
      logger?.error({ method, err: messageOf(err) }, 'grpc call failed');
    }
    return status;
  };

  const unary = <Req, Res>(method: string, fn: (req: Req) => Promise<Res>): handleUnaryCall<Req, Res> => {
    return (call, callback) => {
      logger?.debug({ method }, 'grpc call');
      fn(call.request).then(
        (res) => callback(null, res),
        (err: unknown) => callback(fail(method, err)),
      );
    };
  };

  const CreateMicroVM = unary<CreateMicroVmRequestIn, CreateResponse>('CreateMicroVM', async (req) => {
    const spec = specFromCreateRequest(req);
    return { microvm: microVmFromRecord(await service.create(spec)) };
  });
  const DeleteMicroVM = unary<UidRequestIn, Record<string, never>>('DeleteMicroVM', async (req) => {
    await service.delete(uidFromRequest(req));
    return {};
  });
  const GetMicroVM = unary<UidRequestIn, CreateResponse>('GetMicroVM', async (req) => {
    return { microvm: microVmFromRecord(await service.get(uidFromRequest(req))) };
  });
  const ListMicroVMs = unary<ListMicroVmsRequestIn, ListResponse>('ListMicroVMs', async (req) => {
    const records = await service.list(filterFromListRequest(req));
    return { microvm: records.map(microVmFromRecord) };
  });

  const ListMicroVMsStream: handleServerStreamingCall<ListMicroVmsRequestIn, { microvm: FlintlockMicroVM }> = (call) => {
    logger?.debug({ method: 'ListMicroVMsStream' }, 'grpc call');
    streamList(service, call).then(
      () => call.end(),
      (err: unknown) => call.emit('error', errorOf(fail('ListMicroVMsStream', err))),
    );
  };

  return { CreateMicroVM, DeleteMicroVM, GetMicroVM, ListMicroVMs, ListMicroVMsStream };
}

async function streamList(service: MicroVmService, call: ServerWritableStream<ListMicroVmsRequestIn, { microvm: FlintlockMicroVM }>): Promise<void> {
  const records = await service.list(filterFromListRequest(call.request));
  for (const record of records) {
    if (call.cancelled) return;
    if (!call.write({ microvm: microVmFromRecord(record) })) await drained(call);
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

function boundAddress(address: string, port: number): string {
  if (address.startsWith('unix:') || address.startsWith('unix-abstract:')) return address;
  const m = /^(.*):(\d+)$/.exec(address);
  return m ? `${m[1]}:${port}` : `${address}:${port}`;
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
  private readonly shutdownTimeoutMs: number;
  private state: 'new' | 'binding' | 'listening' | 'closed' = 'new';
  private bound: string | undefined;

  constructor(service: MicroVmService, private readonly opts: GrpcApiServerOptions = {}) {
    const proto = loadMicroVmProto(opts.protoRoot);
    this.server = new Server(opts.serverOptions);
    this.server.addService(proto.service, createMicroVmHandlers(service, opts.logger));
    this.credentials = opts.credentials ?? ServerCredentials.createInsecure();
    this.shutdownTimeoutMs = opts.shutdownTimeoutMs ?? 5000;
  }

  /** The address bound by {@link listen} (with the real port), or undefined before/after. */
  get address(): string | undefined {
    return this.bound;
  }

  /**
   * Binds `address` (`host:port`, `[v6]:port`, or `unix:/path`; port 0 picks a free one) and starts
   * serving. Resolves with the bound address, e.g. `127.0.0.1:41234`. Rejects FAILED_PRECONDITION
   * when called twice or after close, UNAVAILABLE when the address cannot be bound.
   */
  listen(address: string = DEFAULT_GRPC_ADDRESS): Promise<string> {
    if (this.state !== 'new') return Promise.reject(new TetherError('FAILED_PRECONDITION', `gRPC server is ${this.state}; listen() may be called once`));
    this.state = 'binding';
    return new Promise((resolve, reject) => {
      this.server.bindAsync(address, this.credentials, (err, port) => {
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
        this.state = 'listening';
        this.bound = boundAddress(address, port);
        this.opts.logger?.info({ address: this.bound }, 'gRPC API listening');
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
