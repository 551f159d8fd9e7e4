import { credentials, Metadata, status as GrpcStatus, type Client, type ServiceError } from '@grpc/grpc-js';
import { connectionHint, usesTls, type AgentCredentials } from '../api/auth/client-credentials.js';
import { basicAuthorization } from '../api/auth/token.js';
import { loadMicroVmProto } from '../api/grpc/proto.js';
import { formatListenAddress, parseListenAddress } from '../api/listen-address.js';
import type { FlintlockMicroVM, MicroVmSpecIn } from '../api/grpc/wire-types.js';
import { TetherError, type ErrorCode } from '../domain/errors.js';

type Cb<T> = (err: ServiceError | null, res: T) => void;
interface RawClient extends Client {
  CreateMicroVM(req: unknown, md: Metadata, opts: object, cb: Cb<{ microvm: FlintlockMicroVM }>): void;
  DeleteMicroVM(req: unknown, md: Metadata, opts: object, cb: Cb<unknown>): void;
  GetMicroVM(req: unknown, md: Metadata, opts: object, cb: Cb<{ microvm: FlintlockMicroVM }>): void;
  ListMicroVMs(req: unknown, md: Metadata, opts: object, cb: Cb<{ microvm: FlintlockMicroVM[] }>): void;
}

/** The client's gRPC receive limit: 64 MiB (see the constructor). */
export const MAX_RECEIVE_BYTES = 64 * 1024 * 1024;

const CODES: Partial<Record<number, ErrorCode>> = {
  [GrpcStatus.INVALID_ARGUMENT]: 'INVALID_ARGUMENT',
  [GrpcStatus.NOT_FOUND]: 'NOT_FOUND',
  [GrpcStatus.ALREADY_EXISTS]: 'ALREADY_EXISTS',
  [GrpcStatus.UNAVAILABLE]: 'UNAVAILABLE',
  [GrpcStatus.UNIMPLEMENTED]: 'UNIMPLEMENTED',
  [GrpcStatus.FAILED_PRECONDITION]: 'FAILED_PRECONDITION',
  [GrpcStatus.DEADLINE_EXCEEDED]: 'TIMEOUT',
  [GrpcStatus.UNAUTHENTICATED]: 'UNAUTHENTICATED',
  [GrpcStatus.PERMISSION_DENIED]: 'PERMISSION_DENIED',
  [GrpcStatus.RESOURCE_EXHAUSTED]: 'RESOURCE_EXHAUSTED',
};

/**
 * A client of an agent's Flintlock-compatible MicroVM API; every call has a deadline. With
 * `creds`, it speaks TLS (agent verified with `creds.ca`, or the system CAs; client certificate
 * when given) and sends the token as Flintlock clients do: metadata `authorization: basic <base64>`.
 * The address takes every form of `parseListenAddress` (a port alone means loopback).
 */
export class MicroVmApiClient {
  private readonly raw: RawClient;
  private readonly authorization: string | undefined;
  private readonly creds: AgentCredentials | undefined;

  constructor(
    readonly address: string,
    private readonly timeoutMs = 10_000,
    creds?: AgentCredentials,
  ) {
    const { Client } = loadMicroVmProto();
    const target = formatListenAddress(parseListenAddress(address, '--agent'));
    const channel = usesTls(creds) ? credentials.createSsl(creds?.ca ?? null, creds?.key ?? null, creds?.cert ?? null) : credentials.createInsecure();
    // ListMicroVMs answers every VM of the host in one message: at the API's 96 KiB per record
    // (src/domain/codec/vm-limits.ts) grpc-js's default 4 MiB would fail at ~40 large VMs; 64 MiB holds 600.
    this.raw = new Client(target, channel, { 'grpc.max_receive_message_length': MAX_RECEIVE_BYTES }) as unknown as RawClient;
    this.authorization = creds?.token === undefined ? undefined : basicAuthorization(creds.token);
    this.creds = creds;
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
      const md = new Metadata();
      if (this.authorization !== undefined) md.set('authorization', this.authorization);
      fn(md, { deadline: new Date(Date.now() + this.timeoutMs) }, (err, res) => {
        if (!err) return resolve(res);
        const code = CODES[err.code] ?? 'INTERNAL';
        const msg =
          err.code === GrpcStatus.UNAVAILABLE && /ECONNREFUSED|No connection/.test(err.details)
            ? `cannot reach the agent at ${this.address}: ${err.details.replace(/\s*\n\s*/g, ' ').trim()}${connectionHint(err.details, this.creds)}`
            : err.details;
        reject(new TetherError(code, msg, { cause: err, retryable: code === 'UNAVAILABLE' }));
      });
    });
  }
}
