import { TetherError } from '../../domain/errors.js';
import type { PeerAnswer, PeerAsk } from '../../domain/peer-check.js';
import type { Clock } from '../../ports/clock.js';
import type { Logger } from '../../ports/logger.js';
import { PeerClient } from './peer-client.js';
import { PeerList, type PeerListStore } from './peer-list.js';
import { PeerServer } from './peer-server.js';
import { checkPeerTls, loadPeerTls, type PeerTlsFiles } from './peer-tls.js';

/** What {@link startPeerChannel} needs. */
export interface PeerChannelOptions {
  readonly hostId: string;
  readonly stateDir: string;
  readonly listenHost: string;
  readonly listenPort: number;
  /** The address to advertise; undefined: the listen host with the port bound (port 0). */
  readonly advertise: string | undefined;
  readonly files: PeerTlsFiles;
  readonly clock: Clock;
  readonly logger: Logger;
  /** What this agent answers (undefined while its GC is not built yet: the question is refused, 500). */
  readonly answer: () => ((ask: PeerAsk) => PeerAnswer) | undefined;
  /** The controller store the peer list follows. */
  readonly store: PeerListStore;
  /** True while the host is attached (the peer list learns only then). */
  readonly attached: () => boolean;
  /** The peer list's retry interval and per-call deadline (ms). */
  readonly intervalMs: number;
}

/** A running peer channel: its server, the pool it knows, the client to ask it. */
export interface PeerChannel {
  readonly server: PeerServer;
  readonly list: PeerList;
  /** Asks peers (the {@link PeerTransport} of the peer check). */
  readonly client: PeerClient;
  /** What this host writes as `HostRecord.peerAddress`. */
  readonly advertise: string;
  /** The address the server is bound to. */
  readonly bound: string;
  /** Starts the peer list (the server already listens). */
  start(): void;
  /** Stops the list and closes the server (every connection). */
  close(): Promise<void>;
}

/**
 * Builds the agent's peer channel: reads and checks its TLS material (refused at start, naming the
 * setting: unreadable files, a certificate not signed by the CA, a server certificate that does not
 * name the advertised address), listens, and prepares the peer list and the client. The server
 * listens before the first registration so that the address it advertises is live.
 */
export async function startPeerChannel(o: PeerChannelOptions): Promise<PeerChannel> {
  const tls = loadPeerTls(o.files);
  const logger = o.logger.child({ c: 'peer' });
  if (o.advertise !== undefined) checkPeerTls(tls, o.files, o.advertise);
  const server = new PeerServer({
    tls,
    clock: o.clock,
    logger,
    source: (ask) => {
      const answer = o.answer();
      if (!answer) throw new TetherError('UNAVAILABLE', 'the agent is still starting', { retryable: true });
      return answer(ask);
    },
  });
  const bound = await server.listen(o.listenHost, o.listenPort);
  const advertise = o.advertise ?? bound;
  if (o.advertise === undefined) {
    try {
      checkPeerTls(tls, o.files, advertise);
    } catch (err) {
      await server.close();
      throw err;
    }
  }
  const list = new PeerList({ hostId: o.hostId, stateDir: o.stateDir, store: o.store, clock: o.clock, logger, attached: o.attached, intervalMs: o.intervalMs });
  const client = new PeerClient({ hostId: o.hostId, tls, clock: o.clock, logger });
  logger.info({ listen: bound, advertise, knownPeers: list.peers().length, pool: list.poolSize() }, 'peer channel listening (mutual TLS)');
  return {
    server,
    list,
    client,
    advertise,
    bound,
    start: () => list.start(),
    close: async () => {
      await list.stop();
      await server.close();
    },
  };
}
