import type { Command } from 'commander';
import type { AuditResult, GcReport } from '../../agent/gc/gc-report.js';
import type { GcStatus } from '../../agent/gc/host-gc.js';
import { adminCall, type AdminTarget } from '../../api/http/admin-server.js';
import { formatDuration } from '../../domain/duration.js';
import { printJson, printTable } from '../output.js';
import { addAgentCredentialOptions, agentCredentialsFrom, type AgentCredentialFlags } from '../agent-client-options.js';

const AGENT_HTTP = process.env.TETHER_AGENT_HTTP ?? '127.0.0.1:9091';

function printStatus(s: GcStatus): void {
  const rows: [string, string][] = [
    ['host', s.hostId],
    ['state', s.phase],
    ['epoch', String(s.epoch)],
    ['last ack', s.lastAckAgeMs === undefined ? 'never' : `${formatDuration(s.lastAckAgeMs)} ago`],
    ['watchdog', s.watchdogRemainingMs !== undefined ? `fires in ${formatDuration(s.watchdogRemainingMs)}` : s.heldAtDetach ? 'suspended (held when detached)' : 'not armed'],
    ...(s.peerCheck === undefined ? [] : [['peers', `${s.phase}, ${s.peerCheck.detail}`] as [string, string]]),
    ['hold', s.held ? `yes${s.localHold ? ' (local, split-brain risk accepted)' : ' (acknowledged in the cluster)'}` : 'no'],
    ...(s.guardianRunning === undefined ? [] : [['guardian', s.guardianRunning ? 'running' : 'NOT RUNNING: no new VMs until it runs'] as [string, string]]),
    ...(s.duplicateOf === undefined ? [] : [['cluster', `not acting: ${s.duplicateOf}`] as [string, string]]),
    ['timings', `ttl ${formatDuration(s.timings.ttl)}, detach ${formatDuration(s.timings.detachAfter)}, watchdog ${formatDuration(s.timings.watchdogTimeout)}, grace ${formatDuration(s.timings.stopGrace)}, kill ${formatDuration(s.timings.killTimeout)}`],
  ];
  for (const [k, v] of rows) console.log(`${k.padEnd(10)} ${v}`);
}

function printAudit(a: AuditResult): void {
  console.log(a.clean ? 'audit: clean (nothing owned is unexpected, nothing expected is missing)' : 'audit: NOT clean');
  for (const l of a.leaks) console.log(`  leak     ${l}`);
  for (const m of a.missing) console.log(`  missing  ${m}`);
}

function printReport(r: GcReport | null): void {
  if (!r) {
    console.log('no GC run yet');
    return;
  }
  console.log(`GC run: ${r.reason}, started ${new Date(r.startedAt).toISOString()}`);
  if (r.detectedAfterAckMs !== undefined) console.log(`  detached ${formatDuration(r.detectedAfterAckMs)} after the last acknowledged heartbeat`);
  if (r.fenceStartAfterAckMs !== undefined) console.log(`  fence started ${formatDuration(r.fenceStartAfterAckMs)} after the last acknowledged heartbeat`);
  if (r.allStoppedAfterMs !== undefined) console.log(`  every VM stopped ${formatDuration(r.allStoppedAfterMs)} after fence start`);
  if (r.cleanAfterMs !== undefined) console.log(`  clean ${formatDuration(r.cleanAfterMs)} after fence start`);
  if (r.rejoinedEpoch !== undefined) console.log(`  rejoined ready with epoch ${r.rejoinedEpoch}${r.rejoinedAfterMs === undefined ? '' : `, ${formatDuration(r.rejoinedAfterMs)} after fence start`}`);
  if (r.stops.length) printTable(['VM', 'UID', 'STOP', 'TOOK', 'GONE AFTER'], r.stops.map((s) => [s.vm, s.uid, s.method, formatDuration(s.tookMs), formatDuration(s.stoppedAfterMs)]));
  console.log(`  resources removed: ${r.removed.length}; cleanup failures: ${r.cleanupFailures.length}`);
  for (const f of r.cleanupFailures) console.log(`    failure: ${f}`);
  if (r.audit) printAudit(r.audit);
}

/** `tether gc status|report|audit|hold|release`: talk to the local agent's HTTP port. */
export function registerGcCommands(program: Command): void {
  const gc = program.command('gc').description("detached-host GC on this host (via the agent's HTTP port)");
  const opts = (c: Command) => addAgentCredentialOptions(c).option('--agent-http <addr>', "agent's HTTP address", AGENT_HTTP).option('--json', 'machine-readable output');
  // The agent's HTTP address with the --agent-* credentials (TLS, client certificate, token).
  const at = (o: AgentCredentialFlags & { agentHttp: string }): AdminTarget => {
    const credentials = agentCredentialsFrom(o);
    return credentials ? { address: o.agentHttp, credentials } : { address: o.agentHttp };
  };
  opts(gc.command('status').description('lifecycle state, age of the last acknowledged heartbeat, watchdog countdown')).action(async (o: { agentHttp: string; json?: boolean }) => {
    const s = await adminCall<GcStatus>(at(o), 'GET', 'gc/status');
    if (o.json) printJson(s);
    else printStatus(s);
  });
  opts(gc.command('report').description('the last GC run: per-VM stop method and timings, resources removed, audit')).action(async (o: { agentHttp: string; json?: boolean }) => {
    const r = await adminCall<GcReport | null>(at(o), 'GET', 'gc/report');
    if (o.json) printJson(r);
    else printReport(r);
  });
  opts(gc.command('audit').description('scan processes, taps and files: leaks and missing resources')).action(async (o: { agentHttp: string; json?: boolean }) => {
    const a = await adminCall<AuditResult>(at(o), 'GET', 'gc/audit');
    if (o.json) printJson(a);
    else printAudit(a);
    if (!a.clean) process.exitCode = 1;
  });
  opts(gc.command('hold').description('suspend the watchdog on this host (local hold)'))
    .option('--i-accept-split-brain-risk', 'allow a local hold while detached: the controller cannot learn of it and will fence on schedule')
    .action(async (o: { agentHttp: string; json?: boolean; iAcceptSplitBrainRisk?: boolean }) => {
      const s = await adminCall<GcStatus>(at(o), 'POST', 'gc/hold', { held: true, acceptSplitBrainRisk: o.iAcceptSplitBrainRisk === true });
      if (o.json) printJson(s);
      else printStatus(s);
    });
  opts(gc.command('release').description('release the local hold (takes effect for future detachments)')).action(async (o: { agentHttp: string; json?: boolean }) => {
    const s = await adminCall<GcStatus>(at(o), 'POST', 'gc/hold', { held: false });
    if (o.json) printJson(s);
    else printStatus(s);
  });
}
