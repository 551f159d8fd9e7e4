import { createServer, type Server } from 'node:https';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import type { TLSSocket } from 'node:tls';
import { PEER_WIRE_LIMITS, decodePeerQuestion, encodePeerAnswer } from '../../domain/codec/peer-answer.js';
import { InvalidArgumentError, TetherError, messageOf } from '../../domain/errors.js';
import type { PeerAnswer, PeerAsk } from '../../domain/peer-check.js';
import type { Clock } from '../../ports/clock.js';
import type { Logger } from '../../ports/logger.js';
import type { PeerTls } from './peer-tls.js';

/** The one path of the peer channel. */
export const PEER_STATUS_PATH = '/v1/peer/status';

/** Counters of the server (metrics, tests). */
export interface PeerServerStats {
  /** Questions answered (200). */
  answered: number;
  /** Requests refused after the handshake (bad path, method, body, size, slow). */
  refused: number;
  /** TLS handshakes that failed (no certificate, another CA, garbage). */
  tlsErrors: number;
}

/** Options of {@link PeerServer}. */
export interface PeerServerOptions {
  readonly tls: PeerTls;
  /** What this agent answers to a question (the agent: `(q) => hostGc.peerAnswer(q)`). */
  readonly source: (ask: PeerAsk) => PeerAnswer;
  readonly logger: Logger;
  /** Times the per-connection deadline. */
  readonly clock: Clock;
  /**
   * Longest time a client may take from its TCP connection to a complete request, TLS handshake
   * included (ms; default 2,000). A slower client is disconnected.
   */
  readonly requestTimeoutMs?: number;
}

/**
 * The agent-to-agent peer channel's server (issue 11): HTTPS with mutual TLS, one endpoint,
 * `POST /v1/peer/status` with `{from, nonce}`, answered with `source(nonce)` as JSON.
 *
 * Invariants:
 * - a client that presents no certificate, or one that does not chain to the cluster CA
 *   (`tls.ca`), is refused during the handshake (`requestCert` + `rejectUnauthorized`): it never
 *   reaches the handler;
 * - request bodies are capped at {@link PEER_WIRE_LIMITS.maxQuestionBytes} (a larger declared or
 *   streamed body: 413 and the connection closed), validated by the codec (400 naming the field);
 * - the answer goes through the codec's encoder (never more than {@link PEER_WIRE_LIMITS.maxAnswerBytes}):
 *   an answer this agent's peers would refuse is never sent (500);
 * - a connection that has not delivered a complete request within `requestTimeoutMs` of its TCP
 *   accept is destroyed, TLS handshake included; no keep-alive (one question per connection);
 * - {@link close} stops listening and destroys every open connection, so it resolves promptly.
 *
 * What it does not do: bind certificates to host ids (`from` is logged, not trusted); the answer is
 * only as true as `source` makes it.
 */
export class PeerServer {
  private readonly server: Server;
  private readonly sockets = new Set<Socket>();
  private readonly timeoutMs: number;
  private closed = false;
  readonly stats: PeerServerStats = { answered: 0, refused: 0, tlsErrors: 0 };

  constructor(private readonly o: PeerServerOptions) {
    this.timeoutMs = o.requestTimeoutMs ?? 2000;
    this.server = createServer(
      {
        ca: o.tls.ca,
        cert: o.tls.server.cert,
        key: o.tls.server.key,
        requestCert: true,
        rejectUnauthorized: true,
        minVersion: 'TLSv1.2',
        handshakeTimeout: this.timeoutMs,
        requestTimeout: this.timeoutMs,
        headersTimeout: this.timeoutMs,
        keepAliveTimeout: 0,
        maxHeaderSize: 8192,
      },
      (req, res) => this.handle(req, res),
    );
    this.server.on('connection', (s: Socket) => {
      if (this.closed) {
        s.destroy();
        return;
      }
      this.sockets.add(s);
      // The whole exchange, handshake included, within the timeout (a client that trickles bytes too).
      const timer = o.clock.setTimer(this.timeoutMs, () => s.destroy());
      s.once('close', () => {
        o.clock.clearTimer(timer);
        this.sockets.delete(s);
      });
    });
    this.server.on('tlsClientError', (err: Error, s: TLSSocket) => {
      this.stats.tlsErrors++;
      o.logger.debug({ err: messageOf(err), remote: s.remoteAddress }, 'peer channel: TLS handshake refused');
    });
  }

  /**
   * Listens on `host:port` (IPv4, `[v6]`, port 0 = any free port); resolves with the address bound
   * (`127.0.0.1:40123`).
   */
  async listen(host: string, port: number): Promise<string> {
    if (this.closed) throw new TetherError('FAILED_PRECONDITION', 'peer server closed');
    await new Promise<void>((resolve, reject) => {
      const onError = (err: Error): void => reject(new TetherError('UNAVAILABLE', `peer channel cannot listen on ${host}:${port}: ${err.message}`, { cause: err }));
      this.server.once('error', onError);
      this.server.listen({ host, port, exclusive: true }, () => {
        this.server.off('error', onError);
        resolve();
      });
    });
    this.server.on('error', (err) => this.o.logger.error({ err: messageOf(err) }, 'peer channel server error'));
    const a = this.server.address();
    if (a === null || typeof a === 'string') throw new TetherError('INTERNAL', 'peer server has no TCP address');
    return a.family === 'IPv6' ? `[${a.address}]:${a.port}` : `${a.address}:${a.port}`;
  }

  /** Open connections now (tests: {@link close} leaves none). */
  connections(): number {
    return this.sockets.size;
  }

  /** Stops listening and destroys every connection. Idempotent. */
  async close(): Promise<void> {
    this.closed = true;
    const done = this.server.listening ? new Promise<void>((r) => this.server.close(() => r())) : Promise.resolve();
    const gone = [...this.sockets].map((s) => new Promise<void>((r) => (s.closed ? r() : s.once('close', () => r()))));
    for (const s of this.sockets) s.destroy();
    this.server.closeAllConnections();
    await Promise.all([done, ...gone]);
  }

  private refuse(res: ServerResponse, status: number, message: string, fields: Record<string, unknown> = {}): void {
    this.stats.refused++;
    this.o.logger.debug({ status, ...fields }, `peer channel: request refused: ${message}`);
    if (res.headersSent) return;
    res.writeHead(status, { 'content-type': 'application/json', connection: 'close' });
    res.end(JSON.stringify({ error: message }));
  }

  private handle(req: IncomingMessage, res: ServerResponse): void {
    const remote = req.socket.remoteAddress;
    if (req.url !== PEER_STATUS_PATH) return this.refuse(res, 404, `unknown path (only ${PEER_STATUS_PATH})`, { remote });
    if (req.method !== 'POST') return this.refuse(res, 405, 'only POST', { remote });
    const declared = Number(req.headers['content-length'] ?? NaN);
    const max = PEER_WIRE_LIMITS.maxQuestionBytes;
    const tooBig = (): void => {
      this.refuse(res, 413, `body larger than ${max} bytes`, { remote });
      req.socket.destroySoon();
    };
    if (declared > max) return tooBig();
    const chunks: Buffer[] = [];
    let size = 0;
    let over = false;
    req.on('data', (c: Buffer) => {
      if (over) return;
      size += c.length;
      if (size > max) {
        over = true;
        tooBig();
        return;
      }
      chunks.push(c);
    });
    req.on('error', () => undefined);
    req.on('end', () => {
      if (over) return;
      const q = decodePeerQuestion(Buffer.concat(chunks));
      if (!q.ok) return this.refuse(res, 400, q.error.message, { remote, field: q.error.field });
      let body: string;
      try {
        const answer = this.o.source({ nonce: q.value.nonce, stayAwayMs: q.value.stayAwayMs });
        if (answer.nonce !== q.value.nonce) throw new InvalidArgumentError('nonce', 'the answer source did not echo the question nonce');
        body = encodePeerAnswer(answer);
      } catch (err) {
        this.o.logger.error({ err: messageOf(err) }, 'peer channel: could not build an answer');
        return this.refuse(res, 500, 'no answer', { remote });
      }
      this.stats.answered++;
      this.o.logger.debug({ from: q.value.from, remote }, 'peer channel: answered');
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body), connection: 'close' });
      res.end(body);
    });
  }
}
