import { readFileSync, writeFileSync } from 'node:fs';
import type { Command } from 'commander';
import { parseDuration } from '../../domain/duration.js';
import { TetherError, messageOf } from '../../domain/errors.js';
import { liveTimelineInput, type TimelineInput } from '../../domain/timeline.js';
import { hostTimelinesFromReports, parseHostReport } from '../../timeline/gc-report-events.js';
import { parseTimelineInput } from '../../timeline/parse-input.js';
import { renderHtml } from '../../timeline/render-html.js';
import { renderText } from '../../timeline/render-text.js';
import { addEtcdSecurityOptions } from '../etcd-options.js';
import { printJson } from '../output.js';
import { withStore, type StoreFlags } from './host.js';

const CALL_DEADLINE = 5000;

interface TimelineFlags extends StoreFlags {
  from?: string;
  live?: boolean;
  hostReport?: string[];
  hostId?: string;
  since?: string;
  limit: string;
  html?: string;
  json?: boolean;
  color?: boolean;
}

function readJson(file: string, what: string): unknown {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new TetherError('INVALID_ARGUMENT', `cannot read ${what} ${file}: ${messageOf(err)}`, { cause: err, details: { file } });
  }
  try {
    return JSON.parse(text) as unknown;
  } catch (err) {
    throw new TetherError('INVALID_ARGUMENT', `${what} ${file} is not JSON: ${messageOf(err)}`, { cause: err, details: { file } });
  }
}

/** Builds the timeline input `tether timeline` was asked for: from a file, or from etcd plus GC reports. */
export async function timelineInputFor(o: TimelineFlags, now: number): Promise<TimelineInput> {
  if (o.from !== undefined && o.live) throw new TetherError('INVALID_ARGUMENT', 'give either --from <file> or --live, not both');
  if (o.from !== undefined) return parseTimelineInput(readJson(o.from, 'timeline file'), o.from);
  if (!o.live) throw new TetherError('INVALID_ARGUMENT', 'nothing to show: pass --from <timeline.json> (as the simulator or chaos write it) or --live (events from etcd)');
  const limit = Number(o.limit);
  if (!Number.isInteger(limit) || limit < 1) throw new TetherError('INVALID_ARGUMENT', `invalid --limit "${o.limit}": a positive integer`);
  let since: number | undefined;
  if (o.since !== undefined) {
    try {
      since = now - parseDuration(o.since);
    } catch (err) {
      throw new TetherError('INVALID_ARGUMENT', `invalid --since "${o.since}": ${messageOf(err)}`, { cause: err });
    }
  }
  const parts = (o.hostReport ?? []).map((f) => parseHostReport(readJson(f, 'host report'), f));
  const hosts = hostTimelinesFromReports(parts, o.hostId ?? 'host');
  const listed = await withStore(o, (store) => store.listEvents(limit, CALL_DEADLINE));
  return liveTimelineInput({ title: `live cluster, ${new Date(now).toISOString()}`, events: listed.events, hosts, ...(since === undefined ? {} : { since }), now });
}

/** Registers `tether timeline`: what happened to hosts and VMs, as text for people, one HTML file, or JSON. */
export function registerTimelineCommand(program: Command): void {
  addEtcdSecurityOptions(
    program
      .command('timeline')
      .argument('[file]', 'a timeline JSON file (the same as --from)')
      .description('what happened (heartbeats, detach, watchdog, VM stops, fence window and deadline, fence, reschedule, rejoin) with the safety margin marked')
      .option('--from <file>', 'a timeline JSON file (as `npm run sim` and `npm run chaos` write it, or `tether timeline --live --json`)')
      .option('--live', "the cluster's events from etcd (with --host-report for a host's own account)")
      .option('--host-report <file>', 'a host\'s `tether gc report --json` or `tether gc status --json` output, or { status, report } (repeatable)', (v: string, acc: string[] = []) => [...acc, v])
      .option('--host-id <id>', 'the host a --host-report file without a host id belongs to', undefined)
      .option('--since <duration>', 'with --live: only events of the last <duration> (e.g. 10m)')
      .option('--limit <n>', 'with --live: how many recent cluster events to read', '1000')
      .option('--etcd-endpoints <urls>', 'etcd client URLs, comma-separated (or TETHER_ETCD_ENDPOINTS)')
      .option('--etcd-prefix <prefix>', 'key prefix in etcd (or TETHER_ETCD_PREFIX)')
      .option('--html <out.html>', 'also write one self-contained HTML/SVG file')
      .option('--json', 'print the timeline input as JSON instead of text (save it, render it later with --from)')
      .option('--no-color', 'no ANSI colours even on a terminal (also NO_COLOR)'),
  ).action(async (file: string | undefined, o: TimelineFlags) => {
    if (file !== undefined && o.from !== undefined && file !== o.from) throw new TetherError('INVALID_ARGUMENT', `two timeline files given (${file} and --from ${o.from}): give one`);
    if (file !== undefined) o.from = file;
    const input = await timelineInputFor(o, Date.now());
    if (o.html !== undefined) {
      try {
        writeFileSync(o.html, renderHtml(input));
      } catch (err) {
        throw new TetherError('INVALID_ARGUMENT', `cannot write ${o.html}: ${messageOf(err)}`, { cause: err });
      }
      process.stderr.write(`wrote ${o.html}\n`);
    }
    if (o.json) printJson(input);
    else process.stdout.write(renderText(input, { color: o.color !== false && process.stdout.isTTY === true && process.env.NO_COLOR === undefined }));
  });
}
