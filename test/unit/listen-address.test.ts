import { describe, expect, it } from 'vitest';
import { formatListenAddress, isLoopbackIp, parseListenAddress } from '../../src/api/listen-address.js';
import { TetherError } from '../../src/domain/errors.js';

describe('parseListenAddress: one parser for every listener', () => {
  const ok: [string, string, boolean, boolean][] = [
    // text, formatted, loopback, wildcard
    ['9091', '127.0.0.1:9091', true, false],
    [':9091', '127.0.0.1:9091', true, false],
    ['127.0.0.1:9091', '127.0.0.1:9091', true, false],
    ['127.1.2.3:0', '127.1.2.3:0', true, false],
    ['localhost:9090', '127.0.0.1:9090', true, false],
    ['LOCALHOST:9090', '127.0.0.1:9090', true, false],
    ['10.0.0.5:9090', '10.0.0.5:9090', false, false],
    ['0.0.0.0:9090', '0.0.0.0:9090', false, true],
    ['[::1]:9091', '[::1]:9091', true, false],
    ['[::]:9091', '[::]:9091', false, true],
    ['[0:0:0:0:0:0:0:1]:1', '[0:0:0:0:0:0:0:1]:1', true, false],
    ['[fe80::1]:65535', '[fe80::1]:65535', false, false],
    ['[::ffff:127.0.0.1]:80', '[::ffff:127.0.0.1]:80', true, false],
    ['  9091  ', '127.0.0.1:9091', true, false],
    ['unix:/run/tether/api.sock', 'unix:/run/tether/api.sock', true, false],
    ['unix:///run/tether/api.sock', 'unix:/run/tether/api.sock', true, false],
  ];
  for (const [text, formatted, loopback, wildcard] of ok) {
    it(`reads ${JSON.stringify(text)} as ${formatted}`, () => {
      const a = parseListenAddress(text, 'httpListen');
      expect(formatListenAddress(a)).toBe(formatted);
      expect(a.loopback).toBe(loopback);
      expect(a.wildcard).toBe(wildcard);
    });
  }

  it('never turns a bare port into 0.0.0.0 or a strange IPv4 (the old parser bound 0.0.3.141)', () => {
    const a = parseListenAddress('9091', 'httpListen');
    expect(a).toMatchObject({ kind: 'tcp', host: '127.0.0.1', port: 9091, family: 4 });
  });

  const bad: [string, RegExp][] = [
    ['', /empty listen address/],
    ['::1:9091', /put an IPv6 address in brackets, e\.g\. \[::1\]:9091/],
    ['[::1]9091', /expected \[IPv6 address\]:port/],
    ['[::1', /expected \[IPv6 address\]:port/],
    ['[nothex]:1', /expected \[IPv6 address\]:port/],
    ['127.0.0.1', /missing the port/],
    ['127.0.0.1:65536', /port must be a number from 0 to 65535/],
    ['127.0.0.1:-1', /port must be a number/],
    ['127.0.0.1:http', /port must be a number/],
    ['256.0.0.1:80', /is not an IPv4 address/],
    ['1.2.3:80', /is not an IPv4 address/],
    ['example.com:9091', /use an IP address, not a host name/],
    ['unix:relative.sock', /absolute path/],
    ['123456', /port must be a number from 0 to 65535/],
  ];
  for (const [text, why] of bad) {
    it(`refuses ${JSON.stringify(text)}, naming the key`, () => {
      let err: unknown;
      try {
        parseListenAddress(text, 'metricsListen');
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(TetherError);
      expect((err as TetherError).code).toBe('INVALID_ARGUMENT');
      expect((err as TetherError).message).toMatch(/^metricsListen: /);
      expect((err as TetherError).message).toMatch(why);
    });
  }

  it('knows loopback IPs', () => {
    expect(isLoopbackIp('127.0.0.1')).toBe(true);
    expect(isLoopbackIp('127.255.255.254')).toBe(true);
    expect(isLoopbackIp('::1')).toBe(true);
    expect(isLoopbackIp('::ffff:127.0.0.1')).toBe(true);
    expect(isLoopbackIp('128.0.0.1')).toBe(false);
    expect(isLoopbackIp('::ffff:10.0.0.1')).toBe(false);
    expect(isLoopbackIp('::')).toBe(false);
    expect(isLoopbackIp('localhost')).toBe(false);
  });
});
