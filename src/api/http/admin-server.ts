import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { TetherError, messageOf } from '../../domain/errors.js';

/** What the admin HTTP endpoints serve; each handler returns JSON-able data or throws a TetherError. */
export interface AdminRoutes {
  /** Prometheus text exposition for `GET /metrics` (absent: no `/metrics`). */
  metrics?(): Promise<string>;
  /** `GET /v1/<path>` and `POST /v1/<path>` handlers, keyed by `METHOD path` (e.g. `GET gc/status`). */
  readonly handlers: Readonly<Record<string, (body: Record<string, unknown>) => Promise<unknown>>>;
}

const HTTP_STATUS: Record<string, number> = {
  INVALID_ARGUMENT: 400,
  NOT_FOUND: 404,
  FAILED_PRECONDITION: 409,
  UNAVAILABLE: 503,
  UNIMPLEMENTED: 501,
};

/**
 * The agent's local HTTP port: `/metrics` for Prometheus and `/v1/...` JSON endpoints used by
 * `tether gc ...`. Errors are `{error: {code, message}}` with a matching HTTP status.
 */
export class AdminHttpServer {
  private server: Server | undefined;

  constructor(private readonly routes: AdminRoutes) {}

  /** Listens on `host:port`; resolves with the bound address. */
  async listen(address: string): Promise<string> {
    const i = address.lastIndexOf(':');
    const host = address.slice(0, i) || '127.0.0.1';
    const port = Number(address.slice(i + 1));
    const server = createServer((req, res) => void this.handle(req, res));
    this.server = server;
    await new Promise<void>((resolve, reject) => {
      server.once('error', (err) => reject(new TetherError('UNAVAILABLE', `admin HTTP cannot listen on ${address}: ${messageOf(err)}`, { cause: err })));
      server.listen(port, host, () => resolve());
    });
    const a = server.address() as AddressInfo;
    return `${a.address}:${a.port}`;
  }

  async close(): Promise<void> {
    const s = this.server;
    this.server = undefined;
    if (s) await new Promise<void>((resolve) => s.close(() => resolve()));
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://x');
    try {
      if (req.method === 'GET' && url.pathname === '/metrics' && this.routes.metrics) {
        const text = await this.routes.metrics();
        res.writeHead(200, { 'content-type': 'text/plain; version=0.0.4' }).end(text);
        return;
      }
      const key = `${req.method} ${url.pathname.replace(/^\/v1\//, '')}`;
      const handler = this.routes.handlers[key];
      if (!url.pathname.startsWith('/v1/') || !handler) throw new TetherError('NOT_FOUND', `no endpoint ${req.method} ${url.pathname}`);
      let body: Record<string, unknown> = Object.fromEntries(url.searchParams);
      if (req.method === 'POST') {
        const chunks: Buffer[] = [];
        for await (const c of req) chunks.push(c as Buffer);
        const text = Buffer.concat(chunks).toString() || '{}';
        try {
          body = { ...body, ...(JSON.parse(text) as Record<string, unknown>) };
        } catch (cause) {
          throw new TetherError('INVALID_ARGUMENT', `request body is not JSON: ${messageOf(cause)}`, { cause });
        }
      }
      const result = JSON.stringify(await handler(body));
      res.writeHead(200, { 'content-type': 'application/json' }).end(result);
    } catch (err) {
      if (res.headersSent) {
        res.destroy();
        return;
      }
      const code = (err as { code?: string }).code ?? 'INTERNAL';
      res.writeHead(HTTP_STATUS[code] ?? 500, { 'content-type': 'application/json' }).end(JSON.stringify({ error: { code, message: messageOf(err) } }));
    }
  }
}

/** Client side of {@link AdminHttpServer} for the CLI. */
export async function adminCall<T>(address: string, method: 'GET' | 'POST', path: string, body?: unknown, timeoutMs = 10_000, what = "the agent's HTTP port"): Promise<T> {
  let res: Response;
  try {
    res = await fetch(`http://${address}/v1/${path}`, {
      method,
      ...(body === undefined ? {} : { body: JSON.stringify(body), headers: { 'content-type': 'application/json' } }),
      signal: AbortSignal.timeout(timeoutMs),
    });
  } catch (cause) {
    throw new TetherError('UNAVAILABLE', `cannot reach ${what} at ${address}: ${messageOf((cause as Error).cause ?? cause)}`, { cause, retryable: true });
  }
  const data = (await res.json()) as T & { error?: { code: string; message: string } };
  if (!res.ok) throw new TetherError((data.error?.code ?? 'INTERNAL') as never, data.error?.message ?? `HTTP ${res.status}`);
  return data;
}
