/**
 * The agent's admin HTTP server (`/metrics`, `/v1/gc/...`, `/v1/events`) and its client.
 *
 * Every request passes these checks, in order, before any handler runs (a refused request changes
 * nothing):
 *  1. Host: an IP literal or `localhost` with the listener's port, matching the listener's address
 *     (any IP for a wildcard bind), or one of `allowedHosts`. A DNS name (DNS rebinding: a web page
 *     whose name now resolves to this host) is refused with 403.
 *  2. Origin (when sent): the listener's own origin (`http(s)://<Host>`); `Sec-Fetch-Site` (when
 *     sent): `same-origin` or `none`. A cross-site request from a browser is refused with 403.
 *  3. Token (when configured; not on a metrics-only listener): `Authorization: Bearer <token>`,
 *     compared in constant time; else 401 with `WWW-Authenticate: Bearer`. Client certificates,
 *     when required, were checked by the TLS handshake already.
 *  4. Route: 404 for an unknown path, 405 for a known path with another method.
 *  5. POST (state-changing): `Content-Type: application/json` (else 415: a cross-site `text/plain`
 *     form post never reaches a handler); body at most {@link ADMIN_BODY_LIMIT_BYTES} (else 413);
 *     the body must be a JSON object (else 400).
 * Errors are `{error: {code, message}}` with a matching HTTP status.
 */
import { chmodSync } from 'node:fs';
import { createServer as createHttpServer, request as httpRequest, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer, request as httpsRequest, type RequestOptions } from 'node:https';
import { isIPv4, isIPv6, type AddressInfo } from 'node:net';
import { checkServerIdentity } from 'node:tls';
import { TetherError, messageOf, type ErrorCode } from '../../domain/errors.js';
import { checkListenerSecurity, MIN_TLS_VERSION, type ApiSecurity } from '../auth/api-security.js';
import { connectionHint, usesTls, type AgentCredentials } from '../auth/client-credentials.js';
import { verifyBearerAuthorization } from '../auth/token.js';
import { formatListenAddress, isLoopbackIp, parseListenAddress, withPort, type ListenAddress } from '../listen-address.js';

/** What the admin HTTP endpoints serve; each handler returns JSON-able data or throws a TetherError. */
export interface AdminRoutes {
  /** Prometheus text exposition for `GET /metrics` (absent: no `/metrics`). */
  metrics?(): Promise<string>;
  /** `GET /v1/<path>` and `POST /v1/<path>` handlers, keyed by `METHOD path` (e.g. `GET gc/status`). */
  readonly handlers: Readonly<Record<string, (body: Record<string, unknown>) => Promise<unknown>>>;
}

/** Largest request body read (64 KiB); a bigger one is refused with 413 before it is parsed. */
export const ADMIN_BODY_LIMIT_BYTES = 64 * 1024;

/** Options of {@link AdminHttpServer}. */
export interface AdminHttpServerOptions {
  /** TLS and token; default `{}` (plaintext, no token: loopback or a unix socket only). */
  readonly security?: ApiSecurity;
  /** Setting the address comes from, named in errors; default `httpListen`. */
  readonly addressKey?: string;
  /** Serve `GET /metrics` only, with no token (a Prometheus listener). */
  readonly metricsOnly?: boolean;
  /** Extra Host names accepted (e.g. the DNS name Prometheus scrapes), without port. */
  readonly allowedHosts?: readonly string[];
  /** Body limit in bytes; default {@link ADMIN_BODY_LIMIT_BYTES}. */
  readonly bodyLimitBytes?: number;
}

const HTTP_STATUS: Partial<Record<ErrorCode, number>> = {
  INVALID_ARGUMENT: 400,
  UNAUTHENTICATED: 401,
  PERMISSION_DENIED: 403,
  NOT_FOUND: 404,
  FAILED_PRECONDITION: 409,
  RESOURCE_EXHAUSTED: 429,
  UNIMPLEMENTED: 501,
  UNAVAILABLE: 503,
};

/** A refusal with its own HTTP status (405, 413, 415). */
class HttpRefusal extends TetherError {
  constructor(
    readonly status: number,
    code: ErrorCode,
    message: string,
  ) {
    super(code, message);
  }
}

/** The hostname and port of a Host header (`[::1]:9091`, `127.0.0.1:9091`, `localhost`). */
function splitHost(host: string): { name: string; port: string | undefined } {
  if (host.startsWith('[')) {
    const close = host.indexOf(']');
    if (close < 0) return { name: host, port: undefined };
    const rest = host.slice(close + 1);
    return { name: host.slice(1, close).toLowerCase(), port: rest.startsWith(':') ? rest.slice(1) : undefined };
  }
  const i = host.lastIndexOf(':');
  return i < 0 ? { name: host.toLowerCase(), port: undefined } : { name: host.slice(0, i).toLowerCase(), port: host.slice(i + 1) };
}

/**
 * Whether a request's Host header may address the listener at `bound` (see the module comment).
 * Exported for unit tests.
 */
export function hostAllowed(host: string | undefined, bound: ListenAddress, allowedHosts: readonly string[] = []): boolean {
  if (!host) return false;
  const { name, port } = splitHost(host);
  if (bound.kind === 'unix') return name === 'localhost' || allowedHosts.includes(name);
  const defaultPort = port === undefined && (bound.port === 80 || bound.port === 443);
  if (port !== String(bound.port) && !defaultPort) return false;
  if (allowedHosts.map((h) => h.toLowerCase()).includes(name)) return true;
  if (name === 'localhost') return bound.loopback || bound.wildcard;
  if (!isIPv4(name) && !isIPv6(name)) return false;
  if (bound.wildcard) return true;
  if (bound.loopback && isLoopbackIp(name)) return true;
  return name === bound.host.toLowerCase();
}

/**
 * The agent's local HTTP port: `/metrics` for Prometheus and `/v1/...` JSON endpoints used by
 * `tether gc ...`, secured as the module comment says.
 */
export class AdminHttpServer {
  private server: Server | undefined;
  private bound: ListenAddress | undefined;
  private readonly security: ApiSecurity;
  private readonly limit: number;

  constructor(
    private readonly routes: AdminRoutes,
    private readonly opts: AdminHttpServerOptions = {},
  ) {
    this.security = opts.security ?? {};
    this.limit = opts.bodyLimitBytes ?? ADMIN_BODY_LIMIT_BYTES;
  }

  /**
   * Listens on `address` (any form `parseListenAddress` reads; port only = loopback); resolves with
   * the bound address (`127.0.0.1:9091`, `[::1]:9091`, `unix:/path`). Refuses (INVALID_ARGUMENT naming
   * the address key) plaintext off loopback and an unauthenticated non-loopback API listener. A unix
   * socket is made 0600.
   */
  async listen(address: string): Promise<string> {
    const key = this.opts.addressKey ?? 'httpListen';
    const parsed = parseListenAddress(address, key);
    checkListenerSecurity(this.security, [{ key, address: parsed, ...(this.opts.metricsOnly ? { metricsOnly: true } : {}) }]);
    const handler = (req: IncomingMessage, res: ServerResponse) => void this.handle(req, res);
    const tls = this.security.tls;
    const server = tls
      ? createHttpsServer(
          {
            cert: tls.cert,
            key: tls.key,
            minVersion: MIN_TLS_VERSION,
            // The metrics listener never asks for a client certificate: Prometheus scrapes it with the CA only.
            ...(tls.requireClientCert && !this.opts.metricsOnly ? { ca: tls.clientCa, requestCert: true, rejectUnauthorized: true } : {}),
          },
          handler,
        )
      : createHttpServer(handler);
    server.headersTimeout = 10_000;
    server.requestTimeout = 30_000;
    this.server = server;
    await new Promise<void>((resolve, reject) => {
      server.once('error', (err) => reject(new TetherError('UNAVAILABLE', `admin HTTP cannot listen on ${address} (${key}): ${messageOf(err)}`, { cause: err })));
      if (parsed.kind === 'unix') server.listen(parsed.path, () => resolve());
      else server.listen(parsed.port, parsed.host, () => resolve());
    });
    if (parsed.kind === 'unix') {
      chmodSync(parsed.path, 0o600);
      this.bound = parsed;
    } else {
      this.bound = withPort(parsed, (server.address() as AddressInfo).port);
    }
    return formatListenAddress(this.bound);
  }

  /** Stops listening (idempotent). */
  async close(): Promise<void> {
    const s = this.server;
    this.server = undefined;
    if (s) {
      s.closeAllConnections();
      await new Promise<void>((resolve) => s.close(() => resolve()));
    }
  }

  private gate(req: IncomingMessage): void {
    const bound = this.bound!;
    if (!hostAllowed(req.headers.host, bound, this.opts.allowedHosts)) {
      throw new TetherError('PERMISSION_DENIED', `Host ${JSON.stringify(req.headers.host ?? '')} does not address this listener (${formatListenAddress(bound)}): use its IP address and port`);
    }
    const origin = req.headers.origin;
    if (origin !== undefined) {
      const scheme = this.security.tls ? 'https' : 'http';
      if (origin.toLowerCase() !== `${scheme}://${req.headers.host!.toLowerCase()}`) throw new TetherError('PERMISSION_DENIED', `cross-origin request refused (Origin ${JSON.stringify(origin)})`);
    }
    const site = req.headers['sec-fetch-site'];
    if (site !== undefined && site !== 'same-origin' && site !== 'none') throw new TetherError('PERMISSION_DENIED', `cross-site request refused (Sec-Fetch-Site ${JSON.stringify(site)})`);
    if (!this.opts.metricsOnly && this.security.token !== undefined) {
      const why = verifyBearerAuthorization(req.headers.authorization, this.security.token);
      if (why !== undefined) throw new TetherError('UNAUTHENTICATED', why);
    }
  }

  private async readBody(req: IncomingMessage): Promise<Record<string, unknown>> {
    const type = (req.headers['content-type'] ?? '').split(';')[0]!.trim().toLowerCase();
    if (type !== 'application/json') throw new HttpRefusal(415, 'INVALID_ARGUMENT', `Content-Type must be application/json (got ${JSON.stringify(req.headers['content-type'] ?? '')})`);
    const declared = Number(req.headers['content-length'] ?? NaN);
    const tooBig = () => new HttpRefusal(413, 'RESOURCE_EXHAUSTED', `request body larger than ${this.limit} bytes`);
    if (declared > this.limit) throw tooBig();
    const chunks: Buffer[] = [];
    let size = 0;
    for await (const c of req) {
      size += (c as Buffer).length;
      if (size > this.limit) throw tooBig();
      chunks.push(c as Buffer);
    }
    const text = Buffer.concat(chunks).toString('utf8') || '{}';
    let body: unknown;
    try {
      body = JSON.parse(text);
    } catch (cause) {
      throw new TetherError('INVALID_ARGUMENT', `request body is not JSON: ${messageOf(cause)}`, { cause });
    }
    if (typeof body !== 'object' || body === null || Array.isArray(body)) throw new TetherError('INVALID_ARGUMENT', 'request body must be a JSON object');
    return body as Record<string, unknown>;
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    try {
      this.gate(req);
      const url = new URL(req.url ?? '/', 'http://x');
      if (url.pathname === '/metrics' && this.routes.metrics) {
        if (req.method !== 'GET') throw new HttpRefusal(405, 'INVALID_ARGUMENT', `${req.method} /metrics: only GET`);
        const text = await this.routes.metrics();
        res.writeHead(200, { 'content-type': 'text/plain; version=0.0.4' }).end(text);
        return;
      }
      const path = url.pathname.startsWith('/v1/') ? url.pathname.slice(4) : undefined;
      const handler = path !== undefined && !this.opts.metricsOnly ? this.routes.handlers[`${req.method} ${path}`] : undefined;
      if (!handler) {
        const other = path !== undefined && !this.opts.metricsOnly && Object.keys(this.routes.handlers).some((k) => k.endsWith(` ${path}`));
        if (other) throw new HttpRefusal(405, 'INVALID_ARGUMENT', `${req.method} ${url.pathname} is not allowed`);
        throw new TetherError('NOT_FOUND', `no endpoint ${req.method} ${url.pathname}${this.opts.metricsOnly ? ' (this listener serves GET /metrics only)' : ''}`);
      }
      let body: Record<string, unknown> = Object.fromEntries(url.searchParams);
      if (req.method === 'POST') body = { ...body, ...(await this.readBody(req)) };
      const result = JSON.stringify(await handler(body));
      res.writeHead(200, { 'content-type': 'application/json' }).end(result);
    } catch (err) {
      if (res.headersSent) {
        res.destroy();
        return;
      }
      const code: ErrorCode = err instanceof TetherError ? err.code : 'INTERNAL';
      const status = err instanceof HttpRefusal ? err.status : (HTTP_STATUS[code] ?? 500);
      const headers: Record<string, string> = { 'content-type': 'application/json' };
      if (status === 401) headers['www-authenticate'] = 'Bearer';
      // A refused body may still be arriving: answer, then close the connection instead of reading it.
      if (status === 413 || !req.complete) headers.connection = 'close';
      res.writeHead(status, headers).end(JSON.stringify({ error: { code, message: messageOf(err) } }));
    }
  }
}

const oneLine = (m: string): string => m.replace(/\s*\n\s*/g, ' ').trim();

/** Where and how to reach an admin HTTP server: its address and the credentials to present. */
export interface AdminTarget {
  readonly address: string;
  readonly credentials?: AgentCredentials;
}

/** A raw HTTP exchange with an admin server. */
export interface AdminResponse {
  readonly status: number;
  readonly body: string;
}

/**
 * One request to an admin server (`target` is an address or an {@link AdminTarget}); `headers`
 * add to or replace the defaults (Host from the address, the Bearer token, JSON content type when a
 * body is given). Rejects UNAVAILABLE (retryable) when the server cannot be reached.
 */
export function adminRequest(
  target: string | AdminTarget,
  method: string,
  path: string,
  opts: { readonly body?: string | Buffer; readonly headers?: Record<string, string>; readonly timeoutMs?: number; readonly what?: string } = {},
): Promise<AdminResponse> {
  const t: AdminTarget = typeof target === 'string' ? { address: target } : target;
  const addr = parseListenAddress(t.address, '--agent-http');
  const creds = t.credentials;
  const tls = usesTls(creds);
  const hostHeader = addr.kind === 'unix' ? 'localhost' : formatListenAddress(addr);
  const headers: Record<string, string> = { host: hostHeader };
  if (creds?.token) headers.authorization = `Bearer ${creds.token}`;
  if (opts.body !== undefined) {
    headers['content-type'] = 'application/json';
    headers['content-length'] = String(Buffer.byteLength(opts.body));
  }
  Object.assign(headers, opts.headers ?? {});
  const ro: RequestOptions = {
    method,
    path,
    headers,
    signal: AbortSignal.timeout(opts.timeoutMs ?? 10_000),
    ...(addr.kind === 'unix' ? { socketPath: addr.path } : { host: addr.host, port: addr.port }),
    ...(tls
      ? {
          minVersion: MIN_TLS_VERSION,
          ...(creds?.ca ? { ca: creds.ca } : {}),
          ...(creds?.cert ? { cert: creds.cert, key: creds.key } : {}),
          // Verify the server we dialed, whatever Host header this request carries.
          checkServerIdentity: (_host: string, cert: Parameters<typeof checkServerIdentity>[1]) => checkServerIdentity(addr.kind === 'unix' ? 'localhost' : addr.host, cert),
        }
      : {}),
  };
  const what = opts.what ?? "the agent's HTTP port";
  return new Promise((resolve, reject) => {
    const req = (tls ? httpsRequest : httpRequest)(ro, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8') }));
      res.on('error', (err) => reject(new TetherError('UNAVAILABLE', `reading the answer of ${what} at ${t.address}: ${messageOf(err)}`, { cause: err, retryable: true })));
    });
    req.on('error', (err) => reject(new TetherError('UNAVAILABLE', `cannot reach ${what} at ${t.address}: ${oneLine(messageOf(err))}${connectionHint(messageOf(err), creds)}`, { cause: err, retryable: true })));
    req.end(opts.body);
  });
}

/** Client side of {@link AdminHttpServer} for the CLI: JSON in, JSON out, errors as TetherErrors with the server's code. */
export async function adminCall<T>(target: string | AdminTarget, method: 'GET' | 'POST', path: string, body?: unknown, timeoutMs = 10_000, what = "the agent's HTTP port"): Promise<T> {
  const res = await adminRequest(target, method, `/v1/${path}`, { ...(body === undefined ? {} : { body: JSON.stringify(body) }), timeoutMs, what });
  let data: T & { error?: { code: string; message: string } };
  try {
    data = JSON.parse(res.body) as T & { error?: { code: string; message: string } };
  } catch (cause) {
    throw new TetherError('INTERNAL', `${what} answered HTTP ${res.status} with a body that is not JSON`, { cause });
  }
  if (res.status < 200 || res.status >= 300) throw new TetherError((data.error?.code ?? 'INTERNAL') as ErrorCode, data.error?.message ?? `HTTP ${res.status}`);
  return data;
}

/** `GET path` as text (e.g. `/metrics`); non-2xx answers reject with the server's error. */
export async function adminText(target: string | AdminTarget, path: string, timeoutMs = 10_000): Promise<string> {
  const res = await adminRequest(target, 'GET', path, { timeoutMs });
  if (res.status < 200 || res.status >= 300) {
    const err = (() => {
      try {
        return (JSON.parse(res.body) as { error?: { code: ErrorCode; message: string } }).error;
      } catch {
        return undefined;
      }
    })();
    throw new TetherError(err?.code ?? 'INTERNAL', err?.message ?? `HTTP ${res.status}`);
  }
  return res.body;
}
