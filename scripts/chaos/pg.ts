import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { canConnect, startLocalPostgres, type LocalPostgres } from '../../src/db/launcher.js';

/**
 * A local PostgreSQL that can be restarted on the same data dir and port: the launcher starts
 * it (initdb, first start); restart() stops it with a fast shutdown (SIGINT to the postmaster,
 * as `systemctl restart postgresql` does) and starts the same binaries again. stop() stops
 * whichever server runs and removes the data dir.
 */
export interface RestartablePostgres {
  url: string;
  port: number;
  /** Fast shutdown, wait until the postmaster is gone, then start again. Returns the times. */
  restart(downMs?: number): Promise<{ downAt: number; upAt: number }>;
  stop(): Promise<void>;
}

const NOBODY = 65534;

export async function startRestartablePostgres(log: Logger): Promise<RestartablePostgres> {
  const local: LocalPostgres = await startLocalPostgres({ log, fsync: false });
  const asRoot = (process.getuid?.() ?? 0) === 0;
  let current: ChildProcess | null = null;
  let currentExit: Promise<void> = Promise.resolve();
  const onExit = (): void => {
    current?.kill('SIGQUIT');
  };
  process.on('exit', onExit);

  const postmasterPid = (): number | null => {
    const file = join(local.dataDir, 'postmaster.pid');
    if (!existsSync(file)) return null;
    const pid = Number(readFileSync(file, 'utf8').split('\n')[0]);

    return Number.isInteger(pid) && pid > 0 ? pid : null;
  };
  const alive = (pid: number): boolean => {
    try {
      process.kill(pid, 0);
      return true;
    } catch {
      return false;
    }
  };

  async function shutdown(): Promise<void> {
    const pid = postmasterPid();
    if (pid === null) return;
    try {
      process.kill(pid, 'SIGINT'); // fast shutdown
    } catch {
      /* gone */
    }
    if (current) await currentExit;
    // The launcher's child is reaped by node; wait until the pid file is gone too.
    const deadline = Date.now() + 30_000;
    while (existsSync(join(local.dataDir, 'postmaster.pid')) || alive(pid)) {
      if (Date.now() > deadline) throw new Error(`postgres ${pid} did not stop within 30 s`);
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  async function start(): Promise<void> {
    const args = ['-D', local.dataDir, '-k', local.dataDir, '-p', String(local.port)];
    for (const s of [
      'listen_addresses=127.0.0.1',
      'max_connections=300',
      'fsync=off',
      'synchronous_commit=off',
      'full_page_writes=off',
    ])
      args.push('-c', s);
    const child = spawn(join(local.binDir, 'postgres'), args, {
      cwd: tmpdir(),
      env: { ...process.env, LC_ALL: 'C', LANG: 'C' },
      stdio: ['ignore', 'ignore', 'pipe'],
      ...(asRoot ? { uid: NOBODY, gid: NOBODY } : {}),
    });
    let stderr = '';
    child.stderr!.on('data', (d: Buffer) => {
      stderr = (stderr + d.toString()).slice(-4000);
    });
    current = child;
    currentExit = new Promise((resolve) => child.once('close', () => resolve()));
    const deadline = Date.now() + 30_000;
    for (;;) {
      if (child.exitCode !== null || child.signalCode !== null)
        throw new Error(`postgres exited during restart: ${stderr}`);
      if (await canConnect(local.url)) return;
      if (Date.now() > deadline) throw new Error(`postgres did not come back: ${stderr}`);
      await new Promise((r) => setTimeout(r, 25));
    }
  }

  return {
    url: local.url,
    port: local.port,
    async restart(downMs = 0) {
      await shutdown();
      const downAt = Date.now();
      if (downMs > 0) await new Promise((r) => setTimeout(r, downMs));
      await start();

      return { downAt, upAt: Date.now() };
    },
    async stop() {
      if (current) {
        await shutdown().catch(() => current?.kill('SIGKILL'));
        current = null;
      }
      process.off('exit', onExit);
      await local.stop();
    },
  };
}
