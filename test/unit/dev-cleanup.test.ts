import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { classifyDevProcess, DEV_ENV_MARK, type DevScope } from '../../src/dev/dev-scan.js';
import { NPM_DUPLICATE_MS, SignalPolicy, type SignalAction, type SupervisorSignal } from '../../src/dev/dev-signals.js';
import { DEV_STATE_FILE, readDevState } from '../../src/dev/dev-state.js';

describe('SignalPolicy: how the dev supervisor reads Ctrl-C, kill and hang-up', () => {
  const cases: { name: string; npm: boolean; seq: [SupervisorSignal, number][]; want: SignalAction[] }[] = [
    { name: 'one Ctrl-C starts the graceful cleanup', npm: false, seq: [['SIGINT', 0]], want: ['start'] },
    { name: 'Ctrl-C twice quickly forces it', npm: false, seq: [['SIGINT', 0], ['SIGINT', 50]], want: ['start', 'force'] },
    { name: 'a third Ctrl-C changes nothing', npm: false, seq: [['SIGINT', 0], ['SIGINT', 50], ['SIGINT', 60]], want: ['start', 'force', 'ignore'] },
    { name: 'kill twice forces', npm: false, seq: [['SIGTERM', 0], ['SIGTERM', 2000]], want: ['start', 'force'] },
    { name: 'Ctrl-C after a hang-up forces', npm: false, seq: [['SIGHUP', 0], ['SIGINT', 10]], want: ['start', 'force'] },
    { name: 'repeated hang-ups never force (kernel and shell both send one)', npm: false, seq: [['SIGHUP', 0], ['SIGHUP', 1], ['SIGHUP', 5000]], want: ['start', 'ignore', 'ignore'] },
    { name: "under npm/npx, npm's forwarded copy of the same Ctrl-C is not a second press", npm: true, seq: [['SIGINT', 0], ['SIGINT', 3]], want: ['start', 'duplicate'] },
    { name: 'under npm, a press after the duplicate window forces', npm: true, seq: [['SIGINT', 0], ['SIGINT', 3], ['SIGINT', NPM_DUPLICATE_MS + 1]], want: ['start', 'duplicate', 'force'] },
    { name: 'under npm, another signal kind is never a duplicate', npm: true, seq: [['SIGINT', 0], ['SIGTERM', 3]], want: ['start', 'force'] },
  ];
  for (const c of cases) {
    it(c.name, () => {
      const p = new SignalPolicy(c.npm);
      expect(c.seq.map(([s, at]) => p.next(s, at))).toEqual(c.want);
    });
  }
});

describe('classifyDevProcess: what the dev cleanup may signal', () => {
  const stateDir = '/tmp/dev-s';
  const hostDir = `${stateDir}/hosts/dev-a`;
  const uid = 'a'.repeat(32);
  const scope: DevScope = { stateDir, hostIds: ['dev-a'], agentPids: new Map([['dev-a', 200]]), controllerPid: 300, etcdMark: 'tether:dev-1a2b3c4d' };
  const pidFiles: Record<string, number> = {
    [`${hostDir}/vm/default/demo-1/${uid}/qemu.pid`]: 100,
    [`${hostDir}/guardian/guardian.pid`]: 400,
    [`/elsewhere/vm/default/demo-1/${uid}/qemu.pid`]: 101,
  };
  const readPid = (p: string) => pidFiles[p];
  const qemu = (hostId: string, pidFile: string) => ['qemu-system-x86_64', '-name', `tether:${hostId}:${uid},process=tether-aaaaaaaa`, '-M', 'microvm', '-daemonize', '-pidfile', pidFile];
  const cases: { name: string; pid: number; argv: string[]; env?: string; want: { kind: string; owned: boolean; hostId?: string } | undefined }[] = [
    { name: 'QEMU marked for a dev host, named by its pid file under that host', pid: 100, argv: qemu('dev-a', `${hostDir}/vm/default/demo-1/${uid}/qemu.pid`), want: { kind: 'qemu', owned: true, hostId: 'dev-a' } },
    { name: 'the same mark, but the pid file names another pid (launcher still exiting)', pid: 99, argv: qemu('dev-a', `${hostDir}/vm/default/demo-1/${uid}/qemu.pid`), want: { kind: 'qemu', owned: false, hostId: 'dev-a' } },
    { name: "a dev host's mark with its pid file outside the dev host's state dir", pid: 101, argv: qemu('dev-a', `/elsewhere/vm/default/demo-1/${uid}/qemu.pid`), want: { kind: 'qemu', owned: false, hostId: 'dev-a' } },
    { name: 'a pid file path that climbs out with ..', pid: 101, argv: qemu('dev-a', `${hostDir}/../../../../elsewhere/vm/default/demo-1/${uid}/qemu.pid`), want: { kind: 'qemu', owned: false, hostId: 'dev-a' } },
    { name: "another host's VM", pid: 100, argv: qemu('prod-1', `${hostDir}/vm/default/demo-1/${uid}/qemu.pid`), want: undefined },
    { name: 'a non-QEMU program carrying the mark', pid: 100, argv: ['sleep', '-name', `tether:dev-a:${uid}`, '-pidfile', `${hostDir}/vm/default/demo-1/${uid}/qemu.pid`], want: undefined },
    { name: 'the guardian of a dev host, named by its pid lock', pid: 400, argv: ['/usr/bin/node', '/repo/bin/tether.js', 'guardian', '--state-dir', hostDir, '--host-id', 'dev-a'], want: { kind: 'guardian', owned: true, hostId: 'dev-a' } },
    { name: 'a guardian whose pid lock names another pid', pid: 401, argv: ['/usr/bin/node', '/repo/bin/tether.js', 'guardian', '--state-dir', hostDir], want: { kind: 'guardian', owned: false, hostId: 'dev-a' } },
    { name: 'something else that mentions guardian and the host dir', pid: 400, argv: ['tail', '-f', `${hostDir}/guardian/guardian.log`], want: { kind: 'guardian', owned: false, hostId: 'dev-a' } },
    { name: "another host dir that shares the prefix (dev-ab) is not dev-a's", pid: 400, argv: ['/usr/bin/node', '/repo/bin/tether.js', 'guardian', '--state-dir', `${stateDir}/hosts/dev-ab`], want: undefined },
    { name: 'the agent of a dev host, pid recorded', pid: 200, argv: ['/usr/bin/node', '/repo/bin/tether.js', 'agent', '--host-id', 'dev-a', '--state-dir', hostDir], want: { kind: 'agent', owned: true, hostId: 'dev-a' } },
    { name: 'an agent on the dev host dir with an unrecorded pid', pid: 201, argv: ['/usr/bin/node', '/repo/bin/tether.js', 'agent', '--state-dir', hostDir], want: { kind: 'agent', owned: false, hostId: 'dev-a' } },
    { name: 'the dev controller (environment mark, recorded pid)', pid: 300, argv: ['/usr/bin/node', '/repo/bin/tether.js', 'controller', '--controller-id', 'dev-controller'], env: `PATH=/bin\0${DEV_ENV_MARK}=${stateDir}\0`, want: { kind: 'controller', owned: true } },
    { name: "another cluster's controller", pid: 300, argv: ['/usr/bin/node', '/repo/bin/tether.js', 'controller'], env: 'PATH=/bin\0', want: undefined },
    { name: 'an etcd member of the recorded dev cluster', pid: 500, argv: ['/usr/bin/etcd', '--data-dir', `${stateDir}/etcd/tether-etcd-dev-1a2b3c4d-m0`, '--initial-cluster-token', 'tether:dev-1a2b3c4d'], want: { kind: 'etcd', owned: true } },
    { name: 'an etcd with data under the dev dir but another token', pid: 501, argv: ['/usr/bin/etcd', '--data-dir', `${stateDir}/etcd/x`, '--initial-cluster-token', 'tether:dev-ffffffff'], want: { kind: 'etcd', owned: false } },
    { name: 'an unrelated etcd', pid: 502, argv: ['/usr/bin/etcd', '--data-dir', '/var/lib/etcd'], want: undefined },
  ];
  for (const c of cases) {
    it(c.name, () => {
      const got = classifyDevProcess(c.pid, c.argv, c.env, scope, readPid);
      if (c.want === undefined) expect(got).toBeUndefined();
      else expect(got && { kind: got.kind, owned: got.owned, ...(got.hostId ? { hostId: got.hostId } : {}) }).toEqual(c.want);
      if (got && !got.owned) expect(got.why).toMatch(/not touched/);
    });
  }
});

describe('readDevState: a state file cannot steer the cleanup elsewhere', () => {
  const root = mkdtempSync(join(tmpdir(), 'tether-unit-devstate-'));
  afterAll(() => rmSync(root, { recursive: true, force: true }));
  let n = 0;
  const write = (content: unknown): string => {
    const dir = join(root, `s${n++}`);
    mkdirSync(dir);
    writeFileSync(join(dir, DEV_STATE_FILE), typeof content === 'string' ? content : JSON.stringify(typeof content === 'function' ? (content as (d: string) => unknown)(dir) : content));
    return dir;
  };
  const good = (dir: string) => ({ version: 1, supervisorPid: 1234, stateDir: dir, hosts: [{ id: 'dev-a', grpc: '127.0.0.1:1', http: '127.0.0.1:2', pid: 55 }], etcd: { mark: 'tether:dev-1a2b3c4d', endpoints: ['http://127.0.0.1:3'], pids: [56] } });

  it('reads what the supervisor wrote', () => {
    const dir = write(good);
    expect(readDevState(dir)).toMatchObject({ supervisorPid: 1234, hosts: [{ id: 'dev-a', pid: 55 }], etcd: { pids: [56] } });
  });
  it('no file: undefined', () => {
    expect(readDevState(join(root, 'none'))).toBeUndefined();
  });
  const bad: { name: string; content: unknown; field: RegExp }[] = [
    { name: 'not JSON', content: '{', field: /not JSON/ },
    { name: 'another state dir', content: (d: string) => ({ ...good(d), stateDir: '/' }), field: /stateDir/ },
    { name: 'a createdRoot that is not an ancestor', content: (d: string) => ({ ...good(d), createdRoot: '/etc' }), field: /createdRoot/ },
    { name: 'a host id with a path in it', content: (d: string) => ({ ...good(d), hosts: [{ id: '../../etc', grpc: 'a', http: 'b' }] }), field: /hosts\[0\]\.id/ },
    { name: 'a host id ..', content: (d: string) => ({ ...good(d), hosts: [{ id: '..', grpc: 'a', http: 'b' }] }), field: /hosts\[0\]\.id/ },
    { name: 'pid 1 as the controller', content: (d: string) => ({ ...good(d), controllerPid: 1 }), field: /controllerPid/ },
    { name: 'a non-integer etcd pid', content: (d: string) => ({ ...good(d), etcd: { ...good(d).etcd, pids: ['1'] } }), field: /etcd\.pids/ },
    { name: 'an unknown version', content: (d: string) => ({ ...good(d), version: 2 }), field: /version/ },
  ];
  for (const b of bad) {
    it(`refuses ${b.name}, naming the field`, () => {
      const dir = write(b.content);
      expect(() => readDevState(dir)).toThrow(b.field);
    });
  }
});
