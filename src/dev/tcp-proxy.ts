/**
 * Fault injection between a client and a TCP server (STYLE lesson 9): a loopback proxy whose mode
 * can be switched while connections are open, to show what a cut cable, a refused connection and a
 * slow link look like to the client.
 *
 * What a cut cable looks like, and why `heal()` breaks connections: in `blackhole` mode every open
 * connection stays OPEN (no FIN, no RST, no error on either side) and every byte in either direction
 * is read and silently discarded; new connections are accepted (the TCP handshake completes, as the
 * proxy's kernel answers) but never reach the upstream. Bytes dropped in the middle of a stream
 * (an HTTP/2 frame, a TLS record) cannot be recovered, so `heal()` DESTROYS every connection that
 * was open during the blackhole: the client sees the connection close and must reconnect, which is
 * what a real client sees after a long cut (its timeouts or keepalive pings end the dead connection).
 * Connections made after `heal()` pass normally.
 *
 * Differences from a real cut cable, by design: the proxy's kernel still ACKs the client's bytes and
 * answers TCP keepalive probes, so only application-level timeouts (gRPC deadlines, HTTP/2 PING
 * keepalive) detect the cut, never TCP itself; and when the client closes a blackholed connection,
 * the proxy closes its upstream side too (the server sees it), to leak nothing.
 */
import { connect, createServer, type Server, type Socket } from 'node:net';
import { raiseOwnPriority } from '../adapters/process-priority.js';
import { InvalidArgumentError, TetherError } from '../domain/errors.js';

/** Behaviour of a {@link FaultProxy}. */
export type FaultMode = 'pass' | 'blackhole' | 'refuse' | 'drop-replies';

/** Counters since the proxy started. Bytes "up" go client -> upstream, "down" upstream -> client. */
export interface FaultProxyStats {
  /** Client connections accepted (blackholed ones included). */
  readonly connectionsAccepted: number;
  /** Client connections open right now. */
  readonly connectionsOpen: number;
  /** Bytes written to the upstream. */
  readonly bytesForwardedUp: number;
  /** Bytes written to clients. */
  readonly bytesForwardedDown: number;
  /** Client bytes discarded by a blackhole. */
  readonly bytesDroppedUp: number;
  /** Upstream bytes discarded by a blackhole. */
  readonly bytesDroppedDown: number;
}

/** Options of {@link FaultProxy.start}. */
export interface FaultProxyOptions {
  /** Port to listen on (127.0.0.1 only). Default 0: the kernel picks one; read {@link FaultProxy.port}. */
  readonly listenPort?: number;
  /** Initial one-way delay added to every chunk in both directions. Default 0. */
  readonly latencyMs?: number;
}

/** Where a proxy forwards to. */
export interface Upstream {
  readonly host: string;
  readonly port: number;
}

/** One direction of one connection: delivers chunks (null = end) in order, each after the latency. */
class Lane {
  private readonly queue: { due: number; chunk: Buffer | null }[] = [];
  private timer: NodeJS.Timeout | undefined;

  constructor(private readonly deliver: (chunk: Buffer | null) => void) {}

  push(chunk: Buffer | null, delayMs: number): void {
    if (delayMs <= 0 && this.queue.length === 0) {
      this.deliver(chunk);
      return;
    }
    this.queue.push({ due: performance.now() + delayMs, chunk });
    this.schedule();
  }

  /** Discards the queued chunks; returns their total size in bytes. */
  clear(): number {
    const bytes = this.queue.reduce((n, q) => n + (q.chunk?.length ?? 0), 0);
    this.queue.length = 0;
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timer = undefined;
    return bytes;
  }

  private schedule(): void {
    if (this.timer !== undefined) return;
    const head = this.queue[0];
    if (head === undefined) return;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      const now = performance.now();
      while (this.queue[0] !== undefined && this.queue[0].due <= now + 1) this.deliver(this.queue.shift()!.chunk);
      this.schedule();
    }, Math.max(0, head.due - performance.now()));
  }
}

interface Conn {
  readonly client: Socket;
  upstream: Socket | undefined;
  /** Open during a blackhole: never forwards again, destroyed on heal. */
  tainted: boolean;
  /** Lost upstream bytes in `drop-replies` mode: destroyed on heal. */
  lossy?: boolean;
  readonly up: Lane;
  readonly down: Lane;
}

/** Splits `http://h:p`, `https://h:p`, `h:p` or `[v6]:p` into scheme prefix, host and port. */
function parseEndpoint(endpoint: string): { prefix: string; host: string; port: number } {
  const m = /^(?<prefix>[a-z][a-z0-9+.-]*:\/\/)?(?<host>\[[^\]]+\]|[^:/]+):(?<port>\d+)\/?$/i.exec(endpoint);
  const port = Number(m?.groups?.port);
  if (m === null || !(port > 0 && port < 65_536)) throw new InvalidArgumentError('endpoint', `not host:port or scheme://host:port: ${JSON.stringify(endpoint)}`);
  return { prefix: m.groups?.prefix ?? '', host: m.groups!.host!.replace(/^\[|\]$/g, ''), port };
}

/**
 * A TCP proxy from 127.0.0.1:{@link port} to ONE upstream, with switchable faults.
 *
 * Invariants:
 *  - `pass`: bytes are forwarded unchanged and in order in both directions (after `latencyMs`);
 *    half-closes and closes are propagated.
 *  - `blackhole`: no byte reaches the other side and no connection is closed by the proxy; new
 *    connections are accepted and never reach the upstream; an upstream close is hidden from the
 *    client. Every connection open during the blackhole is destroyed by `heal()`.
 *  - `refuse`: the listener is closed (connecting gets ECONNREFUSED) and every connection was
 *    reset. `heal()` listens again on the SAME port.
 *  - `drop-replies` (a one-way cut): client bytes are forwarded, upstream bytes are discarded;
 *    every connection that lost a byte is destroyed by `heal()`.
 *  - After `close()` nothing of the proxy remains (listener, sockets, timers) and every mode call throws.
 */
export class FaultProxy {
  private readonly server: Server;
  private readonly conns = new Set<Conn>();
  private currentMode: FaultMode = 'pass';
  private delayMs: number;
  private boundPort = 0;
  private closed = false;
  private counters = { connectionsAccepted: 0, bytesForwardedUp: 0, bytesForwardedDown: 0, bytesDroppedUp: 0, bytesDroppedDown: 0 };

  private constructor(
    /** Where connections are forwarded. */
    readonly upstream: Upstream,
    options: FaultProxyOptions,
  ) {
    this.delayMs = options.latencyMs ?? 0;
    this.server = createServer({ allowHalfOpen: true, noDelay: true }, (socket) => this.onConnection(socket));
  }

  /**
   * Starts a proxy in `pass` mode in front of `upstream` (`host:port`, `http://host:port` or an
   * {@link Upstream}). Resolves once it listens.
   */
  static async start(upstream: string | Upstream, options: FaultProxyOptions = {}): Promise<FaultProxy> {
    const target = typeof upstream === 'string' ? parseEndpoint(upstream) : upstream;
    if (options.latencyMs !== undefined && !(options.latencyMs >= 0)) throw new InvalidArgumentError('latencyMs', 'must be >= 0');
    const proxy = new FaultProxy({ host: target.host, port: target.port }, options);
    await proxy.listen(options.listenPort ?? 0);
    return proxy;
  }

  /** Always `127.0.0.1`. */
  get host(): string {
    return '127.0.0.1';
  }

  /** The port the proxy listens on (kept across `refuse()`/`heal()`). */
  get port(): number {
    return this.boundPort;
  }

  /** `127.0.0.1:<port>`. */
  get address(): string {
    return `${this.host}:${this.port}`;
  }

  /** `http://127.0.0.1:<port>`, the form etcd3 takes in `hosts`. */
  get url(): string {
    return `http://${this.address}`;
  }

  /** Current mode. */
  get mode(): FaultMode {
    return this.currentMode;
  }

  /** Current one-way delay in ms. */
  get latencyMs(): number {
    return this.delayMs;
  }

  /** A snapshot of the counters. */
  stats(): FaultProxyStats {
    return { ...this.counters, connectionsOpen: this.conns.size };
  }

  /**
   * Cuts the cable: from now on every open and new connection stays open and silent (see the class
   * invariants). Takes effect synchronously on open connections; the promise resolves once the
   * listener accepts again (only relevant after `refuse()`).
   */
  async blackhole(): Promise<void> {
    this.assertOpen();
    this.currentMode = 'blackhole';
    for (const c of this.conns) this.taint(c);
    if (!this.server.listening) await this.listen(this.boundPort);
  }

  /**
   * Back to `pass`. Destroys every connection that was open during a blackhole (their streams lost
   * bytes) so clients reconnect; after `refuse()`, listens again on the same port.
   * @throws TetherError `UNAVAILABLE` when the port was taken meanwhile.
   */
  async heal(): Promise<void> {
    this.assertOpen();
    this.currentMode = 'pass';
    for (const c of [...this.conns]) if (c.tainted || c.lossy) this.destroyConn(c, false);
    if (!this.server.listening) await this.listen(this.boundPort);
  }

  /**
   * Refused connections: closes the listener (new connects get ECONNREFUSED) and resets every open
   * connection. Resolves once the port is released.
   */
  async refuse(): Promise<void> {
    this.assertOpen();
    this.currentMode = 'refuse';
    for (const c of [...this.conns]) this.destroyConn(c, true);
    await this.closeListener();
  }

  /**
   * A one-way cut: client bytes still reach the upstream (requests are applied), every upstream
   * byte is discarded (answers are lost), connections stay open. `heal()` destroys every connection
   * that lost a byte this way.
   */
  dropReplies(): void {
    this.assertOpen();
    if (this.currentMode !== 'pass') throw new TetherError('FAILED_PRECONDITION', `drop-replies from ${this.currentMode}: heal first`);
    this.currentMode = 'drop-replies';
  }

  /** Sets the one-way delay for chunks read from now on (both directions; order is kept). */
  latency(ms: number): void {
    this.assertOpen();
    if (!(ms >= 0)) throw new InvalidArgumentError('latencyMs', 'must be >= 0');
    this.delayMs = ms;
  }

  /** Destroys every connection and the listener. Idempotent. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const c of [...this.conns]) this.destroyConn(c, false);
    await this.closeListener();
  }

  private assertOpen(): void {
    if (this.closed) throw new TetherError('FAILED_PRECONDITION', `fault proxy ${this.address} is closed`);
  }

  private listen(port: number): Promise<void> {
    return new Promise((resolve, reject) => {
      const onError = (err: Error): void => {
        reject(new TetherError('UNAVAILABLE', `fault proxy cannot listen on 127.0.0.1:${port}: ${err.message}`, { cause: err, retryable: true }));
      };
      this.server.once('error', onError);
      this.server.listen({ host: '127.0.0.1', port }, () => {
        this.server.off('error', onError);
        const addr = this.server.address();
        if (addr !== null && typeof addr !== 'string') this.boundPort = addr.port;
        resolve();
      });
    });
  }

  private closeListener(): Promise<void> {
    if (!this.server.listening) return Promise.resolve();
    return new Promise((resolve) => this.server.close(() => resolve()));
  }

  private onConnection(client: Socket): void {
    client.on('error', () => undefined);
    if (this.closed || this.currentMode === 'refuse') {
      client.resetAndDestroy();
      return;
    }
    this.counters.connectionsAccepted++;
    const conn: Conn = {
      client,
      upstream: undefined,
      tainted: false,
      up: new Lane((chunk) => this.deliver(conn, 'up', chunk)),
      down: new Lane((chunk) => this.deliver(conn, 'down', chunk)),
    };
    this.conns.add(conn);
    client.on('data', (chunk: Buffer) => this.onData(conn, 'up', chunk));
    client.on('end', () => {
      if (!conn.tainted) conn.up.push(null, this.delayMs);
    });
    client.on('close', () => this.destroyConn(conn, false));
    if (this.currentMode === 'blackhole') {
      conn.tainted = true;
      return;
    }
    const upstream = connect({ host: this.upstream.host, port: this.upstream.port, allowHalfOpen: true, noDelay: true });
    conn.upstream = upstream;
    upstream.on('error', () => undefined);
    upstream.on('data', (chunk: Buffer) => this.onData(conn, 'down', chunk));
    upstream.on('end', () => {
      if (!conn.tainted) conn.down.push(null, this.delayMs);
    });
    upstream.on('close', () => {
      // Behind a cut cable the client must not learn that the server went away.
      if (!conn.tainted) this.destroyConn(conn, false);
    });
  }

  private onData(conn: Conn, dir: 'up' | 'down', chunk: Buffer): void {
    if (conn.tainted || (dir === 'down' && this.currentMode === 'drop-replies')) {
      if (!conn.tainted) conn.lossy = true;
      this.drop(dir, chunk.length);
      return;
    }
    (dir === 'up' ? conn.up : conn.down).push(chunk, this.delayMs);
  }

  private deliver(conn: Conn, dir: 'up' | 'down', chunk: Buffer | null): void {
    const [src, dst] = dir === 'up' ? [conn.client, conn.upstream] : [conn.upstream, conn.client];
    if (conn.tainted || dst === undefined || dst.destroyed) {
      if (chunk !== null) this.drop(dir, chunk.length);
      return;
    }
    if (chunk === null) {
      dst.end();
      return;
    }
    if (dir === 'up') this.counters.bytesForwardedUp += chunk.length;
    else this.counters.bytesForwardedDown += chunk.length;
    if (!dst.write(chunk) && src !== undefined && !src.isPaused()) {
      src.pause();
      dst.once('drain', () => src.resume());
    }
  }

  private drop(dir: 'up' | 'down', bytes: number): void {
    if (dir === 'up') this.counters.bytesDroppedUp += bytes;
    else this.counters.bytesDroppedDown += bytes;
  }

  private taint(conn: Conn): void {
    conn.tainted = true;
    this.drop('up', conn.up.clear());
    this.drop('down', conn.down.clear());
  }

  private destroyConn(conn: Conn, reset: boolean): void {
    if (!this.conns.delete(conn)) return;
    conn.up.clear();
    conn.down.clear();
    if (reset && !conn.client.destroyed) conn.client.resetAndDestroy();
    else conn.client.destroy();
    conn.upstream?.destroy();
  }
}

/**
 * One {@link FaultProxy} per endpoint (e.g. per etcd member), switched together: give a client the
 * group's {@link endpoints} and `blackhole()` cuts it off from the whole cluster.
 *
 * Invariant: `endpoints()[i]` fronts the i-th endpoint given to {@link FaultProxyGroup.start}, with
 * the same scheme prefix; every mode call applies to all proxies.
 */
export class FaultProxyGroup {
  private constructor(
    /** The proxies, in endpoint order. */
    readonly proxies: readonly FaultProxy[],
    private readonly prefixes: readonly string[],
  ) {}

  /** Starts one proxy per endpoint (`http://host:port` or `host:port`). */
  static async start(endpoints: readonly string[], options: Omit<FaultProxyOptions, 'listenPort'> = {}): Promise<FaultProxyGroup> {
    if (endpoints.length === 0) throw new InvalidArgumentError('endpoints', 'at least one endpoint');
    // A group fronts an agent's etcd: this process is now on the heartbeat path, and must not be
    // what delays a heartbeat while TCG guests saturate the cores (best effort, needs root).
    raiseOwnPriority();
    const parsed = endpoints.map(parseEndpoint);
    const proxies: FaultProxy[] = [];
    try {
      for (const p of parsed) proxies.push(await FaultProxy.start({ host: p.host, port: p.port }, options));
    } catch (err) {
      await Promise.all(proxies.map((p) => p.close()));
      throw err;
    }
    return new FaultProxyGroup(proxies, parsed.map((p) => p.prefix));
  }

  /** The proxied endpoints, `<scheme>127.0.0.1:<proxy port>`, in the order given. */
  endpoints(): string[] {
    return this.proxies.map((p, i) => `${this.prefixes[i] ?? ''}${p.address}`);
  }

  /** The mode of the first proxy (all share it unless one was switched alone). */
  get mode(): FaultMode {
    return this.proxies[0]!.mode;
  }

  /** {@link FaultProxy.blackhole} on every proxy. */
  async blackhole(): Promise<void> {
    await Promise.all(this.proxies.map((p) => p.blackhole()));
  }

  /** {@link FaultProxy.heal} on every proxy. */
  async heal(): Promise<void> {
    await Promise.all(this.proxies.map((p) => p.heal()));
  }

  /** {@link FaultProxy.dropReplies} on every proxy. */
  dropReplies(): void {
    for (const p of this.proxies) p.dropReplies();
  }

  /** {@link FaultProxy.refuse} on every proxy. */
  async refuse(): Promise<void> {
    await Promise.all(this.proxies.map((p) => p.refuse()));
  }

  /** {@link FaultProxy.latency} on every proxy. */
  latency(ms: number): void {
    for (const p of this.proxies) p.latency(ms);
  }

  /** Counters summed over the proxies. */
  stats(): FaultProxyStats {
    const sum = { connectionsAccepted: 0, connectionsOpen: 0, bytesForwardedUp: 0, bytesForwardedDown: 0, bytesDroppedUp: 0, bytesDroppedDown: 0 };
    for (const p of this.proxies) {
      const s = p.stats();
      for (const k of Object.keys(sum) as (keyof FaultProxyStats)[]) sum[k] += s[k];
    }
    return sum;
  }

  /** {@link FaultProxy.close} on every proxy. Idempotent. */
  async close(): Promise<void> {
    await Promise.all(this.proxies.map((p) => p.close()));
  }
}
