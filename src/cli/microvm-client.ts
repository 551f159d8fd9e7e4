import { credentials, Metadata, status as GrpcStatus, type Client, type ServiceError } from '@grpc/grpc-js';
import { loadMicroVmProto } from '../api/grpc/proto.js';
import type { FlintlockMicroVM, MicroVmSpecIn } from '../api/grpc/wire-types.js';
import { TetherError, type ErrorCode } from '../domain/errors.js';

type Cb<T> = (err: ServiceError | null, res: T) => void;
interface RawClient extends Client {
  CreateMicroVM(req: unknown, md: Metadata, opts: object, cb: Cb<{ microvm: FlintlockMicroVM }>): void;
  DeleteMicroVM(req: unknown, md: Metadata, opts: object, cb: Cb<unknown>): void;
  GetMicroVM(req: unknown, md: Metadata, opts: object, cb: Cb<{ microvm: FlintlockMicroVM }>): void;
  ListMicroVMs(req: unknown, md: Metadata, opts: object, cb: Cb<{ microvm: FlintlockMicroVM[] }>): void;
}

const CODES: Partial<Record<number, ErrorCode>> = {
  [GrpcStatus.INVALID_ARGUMENT]: 'INVALID_ARGUMENT',
  [GrpcStatus.NOT_FOUND]: 'NOT_FOUND',
  [GrpcStatus.ALREADY_EXISTS]: 'ALREADY_EXISTS',
  [GrpcStatus.UNAVAILABLE]: 'UNAVAILABLE',
  [GrpcStatus.UNIMPLEMENTED]: 'UNIMPLEMENTED',
  [GrpcStatus.FAILED_PRECONDITION]: 'FAILED_PRECONDITION',
  [GrpcStatus.DEADLINE_EXCEEDED]: 'TIMEOUT',
};

/** A client of an agent's Flintlock-compatible MicroVM API; every call has a deadline. */
export class MicroVmApiClient {
  private readonly raw: RawClient;

  constructor(
    readonly address: string,
    private readonly timeoutMs = 10_000,
  ) {
    const { Client } = loadMicroVmProto();
    this.raw = new Client(address, credentials.createInsecure()) as unknown as RawClient;
  }

  async create(spec: MicroVmSpecIn): Promise<FlintlockMicroVM> {
    return (await this.call<{ microvm: FlintlockMicroVM }>((md, o, cb) => this.raw.CreateMicroVM({ microvm: spec }, md, o, cb))).microvm;
  }
  async get(uid: string): Promise<FlintlockMicroVM> {
    return (await this.call<{ microvm: FlintlockMicroVM }>((md, o, cb) => this.raw.GetMicroVM({ uid }, md, o, cb))).microvm;
  }
  async list(namespace = '', name?: string): Promise<FlintlockMicroVM[]> {
    const req = name ? { namespace, name } : { namespace };
    return (await this.call<{ microvm: FlintlockMicroVM[] }>((md, o, cb) => this.raw.ListMicroVMs(req, md, o, cb))).microvm ?? [];
  }
  async delete(uid: string): Promise<void> {
    await this.call((md, o, cb) => this.raw.DeleteMicroVM({ uid }, md, o, cb));
  }
  close(): void {
    this.raw.close();
  }

  private call<T>(fn: (md: Metadata, opts: object, cb: Cb<T>) => void): Promise<T> {
    return new Promise((resolve, reject) => {
      fn(new Metadata(), { deadline: new Date(Date.now() + this.timeoutMs) }, (err, res) => {
        if (!err) return resolve(res);
        const code = CODES[err.code] ?? 'INTERNAL';
        const msg = err.code === GrpcStatus.UNAVAILABLE && /ECONNREFUSED|No connection/.test(err.details) ? `cannot reach the agent at ${this.address}: ${err.details}` : err.details;
        reject(new TetherError(code, msg, { cause: err, retryable: code === 'UNAVAILABLE' }));
      });
    });
  }
}
