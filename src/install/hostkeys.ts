import { createHash } from 'node:crypto';
import { appendFile, mkdir, readFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { dirname, join } from 'node:path';

/**
 * Host-key pinning for `pampa install`. ssh2 accepts any host key unless given a verifier
 * (../shared/stack.md §5), so every connection goes through `hostVerifier` below.
 *
 * The store is a text file, one pinned key per line: `host:port SHA256:<base64>` (IPv6 hosts
 * as `[addr]:port`); `#` starts a comment. The fingerprint is the one `ssh-keygen -lf` prints.
 */
export const defaultKnownHostsFile = (): string =>
  join(homedir(), '.config', 'pampa', 'known_hosts');

/**
 * `strict`: an unknown key fails (with its fingerprint and how to pin it).
 * `accept-new`: an unknown key is recorded and accepted.
 * A changed key fails under both policies.
 */
export type HostKeyPolicy = 'strict' | 'accept-new';

/** `SHA256:<base64 without padding>` of the raw public key blob, as `ssh-keygen -lf` shows it. */
export function fingerprint(key: Buffer): string {
  return 'SHA256:' + createHash('sha256').update(key).digest('base64').replace(/=+$/, '');
}

/** The store key of an address: `host:port`, or `[host]:port` when host contains a colon. */
export function hostId(host: string, port: number): string {
  return host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
}

export class HostKeyError extends Error {
  override name = 'HostKeyError';

  constructor(
    message: string,
    readonly kind: 'unknown' | 'changed',
    readonly host: string,
    readonly port: number,
    readonly presented: string,
    readonly pinned: string | null,
  ) {
    super(message);
  }
}

export class KnownHosts {
  private readonly entries = new Map<string, string>();

  private constructor(readonly file: string) {}

  /** Reads the store; a missing file is an empty store. */
  static async load(file: string = defaultKnownHostsFile()): Promise<KnownHosts> {
    const store = new KnownHosts(file);
    let text = '';
    try {
      text = await readFile(file, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }

    for (const raw of text.split('\n')) {
      const line = raw.trim();
      if (line === '' || line.startsWith('#')) continue;
      const [id, fp] = line.split(/\s+/);
      if (id && fp?.startsWith('SHA256:')) store.entries.set(id, fp);
    }

    return store;
  }

  lookup(host: string, port: number): string | undefined {
    return this.entries.get(hostId(host, port));
  }

  /** Pins a key: appends the line to the file (created 0600, its directory 0700). */
  async add(host: string, port: number, fp: string): Promise<void> {
    await mkdir(dirname(this.file), { recursive: true, mode: 0o700 });
    await appendFile(this.file, `${hostId(host, port)} ${fp}\n`, { mode: 0o600 });
    this.entries.set(hostId(host, port), fp);
  }
}

export interface HostCheck {
  /** Give this to ssh2 as `hostVerifier`. */
  verify: (key: Buffer, done: (ok: boolean) => void) => void;
  /** Why the last key was refused, or null. ssh2 only reports "verification failed". */
  refusal: () => HostKeyError | null;
  /** Whether the key was unknown and has just been pinned (accept-new). */
  pinnedNow: () => boolean;
}

/**
 * A verifier for one host. It runs during key exchange, before ssh2 sends any user name or
 * credential; returning false makes ssh2 disconnect with "Host denied".
 */
export function hostVerifier(
  store: KnownHosts,
  host: string,
  port: number,
  policy: HostKeyPolicy,
): HostCheck {
  let refused: HostKeyError | null = null;
  let pinned = false;
  const id = hostId(host, port);

  const verify = (key: Buffer, done: (ok: boolean) => void): void => {
    const presented = fingerprint(key);
    const known = store.lookup(host, port);
    if (known === presented) return done(true);

    if (known !== undefined) {
      refused = new HostKeyError(
        `host key of ${id} CHANGED: pinned ${known}, presented ${presented}. ` +
          `Refusing to send credentials. If the host was rebuilt, check the new key ` +
          `(ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub on the host) and replace the line ` +
          `"${id} ${known}" in ${store.file}`,
        'changed',
        host,
        port,
        presented,
        known,
      );

      return done(false);
    }

    if (policy === 'strict') {
      refused = new HostKeyError(
        `host key of ${id} is unknown: ${presented}. Check it on the host ` +
          `(ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub), then run again with --accept-new ` +
          `or add the line "${id} ${presented}" to ${store.file}`,
        'unknown',
        host,
        port,
        presented,
        null,
      );

      return done(false);
    }

    store.add(host, port, presented).then(
      () => {
        pinned = true;
        done(true);
      },
      (err: Error) => {
        refused = new HostKeyError(
          `cannot record the host key of ${id} in ${store.file}: ${err.message}`,
          'unknown',
          host,
          port,
          presented,
          null,
        );
        done(false);
      },
    );
  };

  return { verify, refusal: () => refused, pinnedNow: () => pinned };
}
