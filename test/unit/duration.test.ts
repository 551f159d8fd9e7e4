import { describe, expect, it } from 'vitest';
import { formatDuration, parseDuration } from '../../src/domain/duration.js';

describe('parseDuration', () => {
  it.each([
    ['500ms', 500],
    ['8s', 8000],
    ['2m', 120_000],
    ['1h', 3_600_000],
    ['1m30s', 90_000],
    ['1.5s', 1500],
    ['250', 250],
    [' 3s ', 3000],
  ])('%s = %i ms', (text, ms) => expect(parseDuration(text)).toBe(ms));

  it.each(['', 's', '8x', '-1s', '1 s', 'abc', '5s2'])('refuses %j and names it', (text) => {
    expect(() => parseDuration(text)).toThrow(/invalid duration/);
  });

  it('formats', () => {
    expect(formatDuration(850)).toBe('850ms');
    expect(formatDuration(8000)).toBe('8s');
    expect(formatDuration(150_000)).toBe('2m30s');
    expect(formatDuration(86_400_000)).toBe('24h');
    expect(formatDuration(5_400_000)).toBe('1h30m');
  });
});
