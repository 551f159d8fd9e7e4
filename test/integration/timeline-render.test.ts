/**
 * The timeline's HTML is something a person can look at: Debian's real Chromium renders it headless
 * to a PNG, and the PNG is decoded here (node's zlib, no image library) and checked: the expected
 * size, not blank, and a violation's red banner there when there is one and absent when there is
 * none. The PNGs are kept in TIMELINE_PNG_DIR when it is set (to look at them).
 */
import { execFile } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { inflateSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { renderHtml } from '../../src/timeline/render-html.js';
import { sampleTimeline, violatingTimeline } from '../support/timeline-sample.js';

const WIDTH = 1280;
const HEIGHT = 900;

function findChromium(): string {
  for (const p of ['/usr/bin/chromium', '/usr/bin/chromium-browser']) if (existsSync(p)) return p;
  throw new Error("Debian's chromium is not installed, so the timeline's HTML cannot be checked: run `bash scripts/install-system.sh` as root (it installs the `chromium` package) or `apt-get install chromium`");
}

interface Png {
  readonly width: number;
  readonly height: number;
  /** RGB(A) pixel at (x, y). */
  pixel(x: number, y: number): [number, number, number];
}

/** Decodes an 8-bit RGB or RGBA non-interlaced PNG (what Chromium writes). */
function decodePng(buf: Buffer): Png {
  expect(buf.subarray(0, 8).equals(Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a])), 'PNG signature').toBe(true);
  let pos = 8;
  let width = 0;
  let height = 0;
  let colorType = -1;
  const idat: Buffer[] = [];
  while (pos < buf.length) {
    const len = buf.readUInt32BE(pos);
    const type = buf.toString('latin1', pos + 4, pos + 8);
    const data = buf.subarray(pos + 8, pos + 8 + len);
    if (type === 'IHDR') {
      width = data.readUInt32BE(0);
      height = data.readUInt32BE(4);
      expect(data[8], 'bit depth').toBe(8);
      colorType = data[9]!;
      expect(data[12], 'interlace').toBe(0);
    } else if (type === 'IDAT') idat.push(data);
    else if (type === 'IEND') break;
    pos += 12 + len;
  }
  expect([2, 6], 'colour type RGB or RGBA').toContain(colorType);
  const bpp = colorType === 6 ? 4 : 3;
  const raw = inflateSync(Buffer.concat(idat));
  const stride = width * bpp;
  const out = Buffer.alloc(stride * height);
  for (let y = 0; y < height; y++) {
    const filter = raw[y * (stride + 1)]!;
    const line = raw.subarray(y * (stride + 1) + 1, (y + 1) * (stride + 1));
    for (let i = 0; i < stride; i++) {
      const a = i >= bpp ? out[y * stride + i - bpp]! : 0;
      const b = y > 0 ? out[(y - 1) * stride + i]! : 0;
      const c = i >= bpp && y > 0 ? out[(y - 1) * stride + i - bpp]! : 0;
      let v = line[i]!;
      if (filter === 1) v += a;
      else if (filter === 2) v += b;
      else if (filter === 3) v += (a + b) >> 1;
      else if (filter === 4) {
        const p = a + b - c;
        const pa = Math.abs(p - a);
        const pb = Math.abs(p - b);
        const pc = Math.abs(p - c);
        v += pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
      } else expect(filter, 'PNG filter type').toBe(0);
      out[y * stride + i] = v & 0xff;
    }
  }
  return { width, height, pixel: (x, y) => [out[y * stride + x * bpp]!, out[y * stride + x * bpp + 1]!, out[y * stride + x * bpp + 2]!] };
}

function screenshot(chromium: string, dir: string, name: string, html: string): Promise<Buffer> {
  const page = join(dir, `${name}.html`);
  const png = join(dir, `${name}.png`);
  writeFileSync(page, html);
  const args = [
    '--headless',
    '--no-sandbox',
    '--disable-gpu',
    '--no-first-run',
    '--disable-background-networking',
    '--hide-scrollbars',
    `--user-data-dir=${join(dir, `profile-${name}`)}`,
    `--screenshot=${png}`,
    `--window-size=${WIDTH},${HEIGHT}`,
    `file://${page}`,
  ];
  return new Promise((resolve, reject) => {
    execFile(chromium, args, { timeout: 90_000, killSignal: 'SIGKILL' }, (err, _stdout, stderr) => {
      if (!existsSync(png)) {
        reject(new Error(`chromium wrote no screenshot (${err ? err.message : 'no error'}): ${stderr.slice(-2000)}`));
        return;
      }
      resolve(readFileSync(png));
    });
  });
}

/** Pixels close to the violation red (#c62828). */
function redPixels(p: Png): number {
  let n = 0;
  for (let y = 0; y < p.height; y++) {
    for (let x = 0; x < p.width; x++) {
      const [r, g, b] = p.pixel(x, y);
      if (Math.abs(r - 0xc6) < 16 && Math.abs(g - 0x28) < 16 && Math.abs(b - 0x28) < 16) n++;
    }
  }
  return n;
}

function summary(p: Png): { colours: number; nonWhite: number } {
  const colours = new Set<number>();
  let nonWhite = 0;
  for (let y = 0; y < p.height; y++) {
    for (let x = 0; x < p.width; x++) {
      const [r, g, b] = p.pixel(x, y);
      colours.add((r << 16) | (g << 8) | b);
      if (r < 240 || g < 240 || b < 240) nonWhite++;
    }
  }
  return { colours: colours.size, nonWhite };
}

describe('timeline HTML in headless Chromium', () => {
  let dir: string;
  let chromium: string;
  beforeAll(() => {
    chromium = findChromium();
    dir = mkdtempSync(join(tmpdir(), 'tether-timeline-'));
  });
  afterAll(() => {
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('renders the sample and the violating sample to readable, non-blank PNGs; the violation shows in red', async () => {
    const okPng = decodePng(await screenshot(chromium, dir, 'ok', renderHtml(sampleTimeline())));
    const badPng = decodePng(await screenshot(chromium, dir, 'violation', renderHtml(violatingTimeline())));
    const keep = process.env.TIMELINE_PNG_DIR;
    if (keep) {
      mkdirSync(keep, { recursive: true });
      for (const n of ['ok', 'violation']) writeFileSync(join(keep, `timeline-${n}.png`), readFileSync(join(dir, `${n}.png`)));
    }
    for (const p of [okPng, badPng]) {
      expect([p.width, p.height]).toEqual([WIDTH, HEIGHT]);
      const s = summary(p);
      // Text, lanes and bands: many colours and a good part of the page drawn on.
      expect(s.colours).toBeGreaterThan(50);
      expect(s.nonWhite).toBeGreaterThan(WIDTH * HEIGHT * 0.05);
    }
    const okRed = redPixels(okPng);
    const badRed = redPixels(badPng);
    console.log(`red pixels: sample ${okRed}, violating sample ${badRed}`);
    // The banner alone is about 1230 x 35 px of red.
    expect(badRed).toBeGreaterThan(30_000);
    expect(okRed).toBeLessThan(5_000);
  }, 240_000);
});
