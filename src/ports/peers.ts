/**
 * The peer channel as the host GC sees it (issue 11, docs/peer-check.md): who the peers are, and how
 * to ask them all one question. The transport (mutual TLS) lives in src/agent/peer/.
 */
import type { PeerAsk, ReceivedAnswer } from '../domain/peer-check.js';

/** A peer: its host id and the address of its peer listener (`host:port`). */
export interface PeerEndpoint {
  readonly hostId: string;
  readonly address: string;
}

/** The pool peers this host knows (learned while attached, kept across restarts). */
export interface PeerDirectory {
  /** Pool hosts other than this one that advertise a peer address (the ones to ask). */
  peers(): readonly PeerEndpoint[];
  /** Every pool host other than this one, with or without a peer address (the pool it counts). */
  peerIds(): readonly string[];
}

/** Asks peers one question. */
export interface PeerTransport {
  /**
   * Asks every peer `ask` at once; resolves within about `timeoutMs` with the answers that came
   * back authenticated, well-formed and echoing its nonce (`receivedAt`: the asker's monotonic
   * clock). Never rejects for one peer's failure.
   */
  query(peers: readonly PeerEndpoint[], ask: PeerAsk, timeoutMs: number): Promise<Map<string, ReceivedAnswer>>;
}
