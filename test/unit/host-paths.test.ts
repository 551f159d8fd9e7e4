import { describe, expect, it } from 'vitest';
import { pathUnder, vmDir, vmDirOfResource } from '../../src/agent/host-context.js';
import { overlayPath } from '../../src/agent/plans/create-plan.js';
import { InvalidArgumentError } from '../../src/domain/errors.js';
import { FakeFiles } from '../support/fake-ports.js';

/** The agent's path builders never build a path from an unvalidated field. */
const files = new FakeFiles('/state');
const UID = '0123456789abcdef0123456789abcdef';
const HOSTILE = ['', '.', '..', 'a/b', '../../x', 'a\u0000b', 'x'.repeat(200), 'inventory.db'];

function field(fn: () => unknown): string | undefined {
  try {
    fn();
    return undefined;
  } catch (err) {
    expect(err).toBeInstanceOf(InvalidArgumentError);
    return (err as InvalidArgumentError).field;
  }
}

describe('agent path builders', () => {
  it('vmDir builds <root>/vm/<ns>/<name>/<uid> from valid names only, naming the bad field', () => {
    expect(vmDir(files, 'ns', 'web', UID)).toBe(`/state/vm/ns/web/${UID}`);
    for (const bad of HOSTILE) {
      expect(field(() => vmDir(files, bad, 'web', UID)), `namespace ${JSON.stringify(bad)}`).toBe('spec.id.namespace');
      expect(field(() => vmDir(files, 'ns', bad, UID)), `name ${JSON.stringify(bad)}`).toBe('spec.id.name');
      expect(field(() => vmDir(files, 'ns', 'web', bad)), `uid ${JSON.stringify(bad)}`).toBe('uid');
    }
  });

  it('overlayPath stays in the VM folder', () => {
    expect(overlayPath(`/state/vm/ns/web/${UID}`, 'root')).toBe(`/state/vm/ns/web/${UID}/vol-root.qcow2`);
    for (const bad of ['', '../../../inventory', 'a/b', '..', 'x\u0000']) expect(field(() => overlayPath(`/state/vm/ns/web/${UID}`, bad))).toBe('spec.volumes.id');
  });

  it('pathUnder refuses anything that resolves outside its root', () => {
    expect(pathUnder('/state/vm', ['a', 'b'], 'f')).toBe('/state/vm/a/b');
    for (const segs of [['..'], ['a', '..'], ['..', 'vm2'], ['']]) expect(field(() => pathUnder('/state/vm', segs, 'f'))).toBe('f');
  });

  it('a delete step touches only the VM’s own folder, whatever its inventory row says', () => {
    const dir = `/state/vm/ns/web/${UID}`;
    expect(vmDirOfResource(files, { vmUid: UID, kind: 'state-dir', key: dir })).toBe(dir);
    expect(vmDirOfResource(files, { vmUid: UID, kind: 'overlay', key: `${dir}/vol-root.qcow2` })).toBe(dir);
    const hostile = [
      { kind: 'state-dir' as const, key: '/state/vm/ns/web' }, // the parent of every web incarnation
      { kind: 'state-dir' as const, key: '/state' },
      { kind: 'state-dir' as const, key: `/state/vm/../inventory.db` },
      { kind: 'state-dir' as const, key: `/state/vm/ns/web/0000000000000000000000000000ffff` }, // another VM's folder
      { kind: 'state-dir' as const, key: `/state/vm/ns/../web/${UID}` },
      { kind: 'overlay' as const, key: `/state/vm/ns/other/${UID}/../../web/x/vol-root.qcow2` },
      { kind: 'overlay' as const, key: `${dir}/..` },
      { kind: 'overlay' as const, key: `${dir}/sub/vol-root.qcow2` },
      { kind: 'overlay' as const, key: '/state/inventory.db' },
    ];
    for (const r of hostile) expect(field(() => vmDirOfResource(files, { vmUid: UID, ...r })), r.key).toBe('key');
  });
});
