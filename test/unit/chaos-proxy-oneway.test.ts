import { connect, createServer, type Server, type Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { FaultProxy } from '../../src/dev/tcp-proxy.js';

/** The one-way cut chaos uses (`partition-oneway`): requests reach the server, answers are lost. */
describe('FaultProxy drop-replies', () => {
  let server: Server | undefined;
  let proxy: FaultProxy | undefined;
  afterEach(async () => {
    await proxy?.close();
    await new Promise((r) => (server ? server.close(r) : r(undefined)));
  });

  it('forwards client bytes, drops server bytes, and heal() ends the connection that lost bytes', async () => {
    const received: string[] = [];
    server = createServer((s) => s.on('data', (d) => {
      received.push(d.toString());
      s.write(`echo:${d.toString()}`);
    }));
    await new Promise<void>((r) => server!.listen(0, '127.0.0.1', r));
    const port = (server.address() as { port: number }).port;
    proxy = await FaultProxy.start({ host: '127.0.0.1', port });
    const client: Socket = connect(proxy.port, '127.0.0.1');
    const got: string[] = [];
    client.on('data', (d) => got.push(d.toString()));
    const closed = new Promise((r) => client.on('close', r));
    client.write('one');
    await expect.poll(() => got.join('')).toBe('echo:one');
    proxy.dropReplies();
    expect(proxy.mode).toBe('drop-replies');
    client.write('two');
    await expect.poll(() => received.join('')).toBe('onetwo');
    await expect.poll(() => proxy!.stats().bytesDroppedDown).toBe('echo:two'.length);
    expect(got.join('')).toBe('echo:one');
    await proxy.heal();
    await closed;
    expect(proxy.mode).toBe('pass');
  });

  it('is refused from a mode other than pass', async () => {
    server = createServer(() => undefined);
    await new Promise<void>((r) => server!.listen(0, '127.0.0.1', r));
    proxy = await FaultProxy.start({ host: '127.0.0.1', port: (server.address() as { port: number }).port });
    await proxy.blackhole();
    expect(() => proxy!.dropReplies()).toThrow(/heal first/);
  });
});
