import { readdir, readFile } from 'node:fs/promises';
import { parseOwnerAlias } from '../../ports/network.js';
import type { LinkInfo } from './link-json.js';

/** tun_flags bit of a tap (as opposed to tun) device. */
const IFF_TAP = 0x0002;
/** `flags` bit of an administratively up device. */
const IFF_UP = 0x0001;

async function readText(path: string): Promise<string | undefined> {
  try {
    return (await readFile(path, 'utf8')).trim();
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT' || (err as NodeJS.ErrnoException).code === 'ENODEV') return undefined;
    throw err;
  }
}

/**
 * One device as sysfs (`/sys/class/net/<name>`) shows it in this process's network namespace, or
 * undefined when there is none. Reads files only (no `ip` process): a check costs microseconds, so
 * check-act-verify steps stay cheap. Same fields and semantics as `ip -json -details link show`.
 */
export async function readSysfsLink(name: string, root = '/sys/class/net'): Promise<LinkInfo | undefined> {
  const dir = `${root}/${name}`;
  const ifindex = await readText(`${dir}/ifindex`);
  if (ifindex === undefined) return undefined;
  const [aliasRaw, tunFlags, flags] = await Promise.all([readText(`${dir}/ifalias`), readText(`${dir}/tun_flags`), readText(`${dir}/flags`)]);
  const alias = aliasRaw ? aliasRaw : undefined;
  const owner = parseOwnerAlias(alias);
  const isTun = tunFlags !== undefined;
  return {
    name,
    ifindex: Number(ifindex),
    up: (Number(flags ?? 0) & IFF_UP) !== 0,
    isTap: isTun && (Number(tunFlags) & IFF_TAP) !== 0,
    ...(alias !== undefined ? { alias } : {}),
    ...(isTun ? { kind: 'tun' } : {}),
    ...(owner ? { owner } : {}),
  };
}

/** Every device in sysfs (see {@link readSysfsLink}); a device removed while listing is skipped. */
export async function readSysfsLinks(root = '/sys/class/net'): Promise<LinkInfo[]> {
  const names = await readdir(root);
  const links = await Promise.all(names.map((n) => readSysfsLink(n, root)));
  return links.filter((l): l is LinkInfo => l !== undefined);
}
