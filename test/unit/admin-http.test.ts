/**
 * The admin HTTP server's request checks on a real in-process loopback listener, plaintext and
 * without a token (as the dev control endpoint runs): browsers and rebinding are refused by the
 * Host/Origin/Content-Type checks alone, before any handler; oversized bodies get 413.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AdminHttpServer, adminCall, adminRequest } from '../../src/api/http/admin-server.js';

describe('admin HTTP request checks (plaintext loopback, no token)', () => {
  let calls: Record<string, unknown>[] = [];
  let server: AdminHttpServer;
  let addr = '';
  beforeAll(async () => {
    server = new AdminHttpServer({
      handlers: {
        'POST hold': async (b) => {
          calls.push(b);
          return { ok: true };
        },
        'GET status': async () => ({ calls: calls.length }),
      },
    });
    addr = await server.listen('0');
  });
  afterAll(() => server.close());

  const post = (headers: Record<string, string>, body = '{"held":true}') => adminRequest(addr, 'POST', '/v1/hold', { body, headers });

  it('binds a port alone to loopback', () => expect(addr).toMatch(/^127\.0\.0\.1:\d+$/));

  const rows: [string, Record<string, string>, number, string?][] = [
    ['a cross-site text/plain form post', { 'content-type': 'text/plain' }, 415],
    ['a form-encoded post', { 'content-type': 'application/x-www-form-urlencoded' }, 415],
    ['JSON from another origin', { origin: 'http://evil.example' }, 403],
    ['JSON with Origin null (sandboxed page)', { origin: 'null' }, 403],
    ['Sec-Fetch-Site cross-site', { 'sec-fetch-site': 'cross-site' }, 403],
    ['Sec-Fetch-Site same-site (a sibling subdomain)', { 'sec-fetch-site': 'same-site' }, 403],
    ['a rebound DNS name in Host', { host: 'evil.example' }, 403],
    ['JSON that is not an object', {}, 400, '[1,2]'],
    ['JSON that does not parse', {}, 400, '{'],
    ['an oversized body', {}, 413, JSON.stringify({ pad: 'x'.repeat(70 * 1024) })],
  ];
  for (const [name, headers, status, body] of rows) {
    it(`refuses ${name} with ${status}, reaching no handler`, async () => {
      calls = [];
      const r = await post(headers, body);
      expect(r.status).toBe(status);
      expect(calls).toEqual([]);
    });
  }

  it('takes the same-origin JSON post (Origin and Sec-Fetch-Site of the listener itself)', async () => {
    calls = [];
    const r = await post({ origin: `http://${addr}`, 'sec-fetch-site': 'same-origin' });
    expect(r.status).toBe(200);
    expect(await adminCall<{ ok: boolean }>(addr, 'POST', 'hold', { held: true })).toEqual({ ok: true });
    expect(calls).toHaveLength(2);
  });

  it('answers 405 for a known path with another method, 404 for an unknown one', async () => {
    expect((await adminRequest(addr, 'GET', '/v1/hold')).status).toBe(405);
    expect((await adminRequest(addr, 'GET', '/v1/nothing')).status).toBe(404);
  });

  it('refuses to listen in plaintext off loopback, naming the key', async () => {
    const s = new AdminHttpServer({ handlers: {} }, { addressKey: 'httpListen' });
    await expect(s.listen('0.0.0.0:0')).rejects.toThrow(/^httpListen: 0\.0\.0\.0:0 is not a loopback address/);
  });
});
