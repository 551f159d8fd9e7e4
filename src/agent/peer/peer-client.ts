import { request } from 'node:https';
import { isIP } from 'node:net';
import { isPeerAddress } from '../../domain/codec/peer-address.js';
import { PEER_WIRE_LIMITS, decodePeerAnswer, encodePeerQuestion } from '../../domain/codec/peer-answer.js';
import { messageOf } from '../../domain/errors.js';
import { forEachLimited } from '../../domain/for-each-limited.js';
import type { PeerAsk, ReceivedAnswer } from '../../domain/peer-check.js';
import type { PeerEndpoint } from '../../domain/peer-pool.js';
import type { PeerTransport } from '../../ports/peers.js';
import type { Clock } from '../../ports/clock.js';
import type { Logger } from '../../ports/logger.js';
import { PEER_STATUS_PATH } from './peer-server.js';
import type { PeerTls } from './peer-tls.js';

export type { PeerEndpoint } from '../../domain/peer-pool.js';

/** Why one peer gave no usable answer (metrics, status, tests). */
export type PeerDropReason = 'unreachable' | 'tls' | 'timeout' | 'http-status' | 'too-large' | 'invalid' | 'stale-nonce' | 'bad-address';

/** Options of {@link PeerClient}. */
export interface PeerClientOptions {
  /** This agent's host id (sent as `from`: display only). */
  readonly hostId: string;
  readonly tls: PeerTls;
  readonly clock: Clock;
  readonly logger: Logger;
  /**
   * Most calls in flight at once (default {@link DEFAULT_MAX_CONCURRENT_PEER_CALLS}): a large pool
   * must not exhaust file descriptors or the CPU with handshakes. Calls that wait for a slot get what
   * is left of the round's `timeoutMs`.
   */
  readonly maxConcurrent?: number;
  /** Called once per peer that gave no usable answer in a round. */
  readonly onDropped?: (hostId: string, reason: PeerDropReason, detail: string) => void;
}

/** Default of {@link PeerClientOptions.maxConcurrent}. */
export const DEFAULT_MAX_CONCURRENT_PEER_CALLS = 128;

/** `host:port` / `[v6]:port` split; undefined when malformed. */
export function splitPeerAddress(address: string): { host: string; port: number } | undefined {
  if (!isPeerAddress(address)) return undefined;
  const m = /^\[([0-9A-Fa-f:.]+)\]:(\d{1,5})$/.exec(address) ?? /^([A-Za-z0-9.-]{1,253}):(\d{1,5})$/.exec(address);
  if (!m) return undefined;
  const port = Number(m[2]);
  if (!(port >= 1 && port <= 65535)) return undefined;
  const host = m[1]!;
  if (address.startsWith('[') && isIP(host) !== 6) return undefined;
  return { host, port };
}

/**
 * The asking side of the peer channel (issue 11): one round asks every peer in parallel over HTTPS
 * with mutual TLS and collects the answers that pass.
 *
 * Invariants:
 * - every call presents this agent's client certificate and believes a peer only when its server
 *   certificate chains to the cluster CA (`tls.ca`) AND names the address it was reached at (an IP
 *   SAN for an IP address, a DNS SAN for a name): verification is never disabled;
 * - an answer counts only when it passes the codec and echoes `nonce`; anything else is dropped
 *   (debug log, {@link PeerClientOptions.onDropped});
 * - each call has its own deadline on the injected Clock, the round's end (`timeoutMs` after
 *   {@link queryPeers} was called): a peer that never answers (SYN lost, TLS stalled, body trickled)
 *   costs at most that, and {@link queryPeers} resolves by then; at most `maxConcurrent` calls are in
 *   flight; `receivedAt` is `clock.nowMono()` when the whole body has arrived;
 * - it never throws because of one peer: a failure is a missing entry in the result;
 * - no connection outlives its call (no keep-alive agent).
 */
export class PeerClient implements PeerTransport {
  constructor(private readonly o: PeerClientOptions) {}

  /**
   * Asks every peer `POST /v1/peer/status {from, nonce, stayAwayMs}` (at most `maxConcurrent` at a time); resolves within `timeoutMs` (on
   * the Clock) with the answers that count, keyed by the peer's host id.
   */
  async queryPeers(peers: readonly PeerEndpoint[], ask: PeerAsk, timeoutMs: number): Promise<Map<string, ReceivedAnswer>> {
    const out = new Map<string, ReceivedAnswer>();
    const { nonce } = ask;
    let body: string;
    try {
      body = encodePeerQuestion({ from: this.o.hostId, nonce, stayAwayMs: ask.stayAwayMs });
    } catch (err) {
      this.o.logger.error({ err: messageOf(err) }, 'peer channel: cannot ask with this nonce or host id');
      return out;
    }
    const deadline = this.o.clock.nowMono() + timeoutMs;
    await forEachLimited(peers, this.o.maxConcurrent ?? DEFAULT_MAX_CONCURRENT_PEER_CALLS, async (p) => {
      const left = deadline - this.o.clock.nowMono();
      const r = left > 0 ? await this.ask(p, body, left, timeoutMs) : { drop: 'timeout' as const, detail: `no time left in the round of ${timeoutMs} ms` };
      if ('drop' in r) {
        this.o.logger.debug({ peer: p.hostId, address: p.address, reason: r.drop, detail: r.detail }, 'peer channel: no usable answer');
        this.o.onDropped?.(p.hostId, r.drop, r.detail);
        return;
      }
      const d = decodePeerAnswer(r.body);
      if (!d.ok) {
        this.o.logger.debug({ peer: p.hostId, field: d.error.field, err: d.error.message }, 'peer channel: answer refused by the codec');
        this.o.onDropped?.(p.hostId, 'invalid', d.error.message);
        return;
      }
      if (d.value.nonce !== nonce) {
        this.o.logger.debug({ peer: p.hostId, nonce: d.value.nonce, asked: nonce }, 'peer channel: answer to another question (stale nonce) dropped');
        this.o.onDropped?.(p.hostId, 'stale-nonce', `answered nonce ${d.value.nonce}`);
        return;
      }
      out.set(p.hostId, { answer: d.value, receivedAt: r.receivedAt });
    });
    return out;
  }

  /** {@link PeerTransport.query}: the same as {@link queryPeers}. */
  query(peers: readonly PeerEndpoint[], ask: PeerAsk, timeoutMs: number): Promise<Map<string, ReceivedAnswer>> {
    return this.queryPeers(peers, ask, timeoutMs);
  }

  private ask(p: PeerEndpoint, body: string, timeoutMs: number, roundMs: number): Promise<{ body: Buffer; receivedAt: number } | { drop: PeerDropReason; detail: string }> {
    const addr = splitPeerAddress(p.address);
    if (!addr) return Promise.resolve({ drop: 'bad-address', detail: `not host:port: ${JSON.stringify(p.address.slice(0, 100))}` });
    const { clock } = this.o;
    const tls = this.o.tls;
    return new Promise((resolve) => {
      let settled = false;
      const ac = new AbortController();
      const finish = (v: { body: Buffer; receivedAt: number } | { drop: PeerDropReason; detail: string }): void => {
        if (settled) return;
        settled = true;
        clock.clearTimer(timer);
        ac.abort();
        resolve(v);
      };
      const timer = clock.setTimer(timeoutMs, () => finish({ drop: 'timeout', detail: `no answer within ${roundMs} ms` }));
      const req = request(
        {
          host: addr.host,
          port: addr.port,
          method: 'POST',
          path: PEER_STATUS_PATH,
          ...(isIP(addr.host) === 0 ? { servername: addr.host } : {}),
          ca: tls.ca,
          cert: tls.client.cert,
          key: tls.client.key,
          rejectUnauthorized: true,
          minVersion: 'TLSv1.2',
          agent: false,
          signal: ac.signal,
          headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body), connection: 'close' },
        },
        (res) => {
          if (res.statusCode !== 200) {
            res.resume();
            finish({ drop: 'http-status', detail: `HTTP ${res.statusCode}` });
            return;
          }
          const declared = Number(res.headers['content-length'] ?? NaN);
          if (declared > PEER_WIRE_LIMITS.maxAnswerBytes) {
            finish({ drop: 'too-large', detail: `declared ${declared} bytes` });
            return;
          }
          const chunks: Buffer[] = [];
          let size = 0;
          res.on('data', (c: Buffer) => {
            size += c.length;
            if (size > PEER_WIRE_LIMITS.maxAnswerBytes) finish({ drop: 'too-large', detail: `more than ${PEER_WIRE_LIMITS.maxAnswerBytes} bytes` });
            else chunks.push(c);
          });
          res.on('end', () => finish({ body: Buffer.concat(chunks), receivedAt: clock.nowMono() }));
          res.on('error', (err) => finish({ drop: 'unreachable', detail: messageOf(err) }));
        },
      );
      req.on('error', (err: NodeJS.ErrnoException) => {
        const tlsError = /certificate|CERT|SSL|TLS|handshake|altname|self.signed/i.test(`${err.code ?? ''} ${err.message}`);
        finish({ drop: tlsError ? 'tls' : 'unreachable', detail: `${err.code ? `${err.code}: ` : ''}${err.message}` });
      });
      req.end(body);
    });
  }
}
