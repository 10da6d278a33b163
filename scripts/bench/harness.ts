import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { startLocalPostgres, type LocalPostgres } from '../../src/db/launcher.js';
import { rootLogger } from '../../src/log.js';

export const CLI = fileURLToPath(new URL('../../src/cli/main.js', import.meta.url));

/** A PostgreSQL for a benchmark: DATABASE_URL, or a local one with durable commits. */
export async function benchDatabase(): Promise<{ url: string; stop: () => Promise<void> }> {
  if (process.env.DATABASE_URL)
    return { url: process.env.DATABASE_URL, stop: async () => undefined };
  const local: LocalPostgres = await startLocalPostgres({
    log: rootLogger().child({ component: 'bench' }),
    fsync: true,
  });

  return { url: local.url, stop: () => local.stop() };
}

export interface AgentProcess {
  child: ChildProcess;
  name: string;
  exited: Promise<void>;
}

/** Starts `pampa agent` as its own process, logs discarded unless PAMPA_BENCH_LOGS is set. */
export function startAgent(
  config: string,
  name: string,
  url: string,
  extra: string[] = [],
  env: Record<string, string> = {},
): AgentProcess {
  const child = spawn(
    process.execPath,
    [CLI, 'agent', '--config', config, '--name', name, '--http-port', '0', ...extra],
    {
      env: {
        ...process.env,
        DATABASE_URL: url,
        PAMPA_LOG_FORMAT: 'json',
        PAMPA_LOG_LEVEL: process.env.PAMPA_BENCH_LOGS ? 'info' : 'warn',
        ...env,
      },
      stdio: ['ignore', process.env.PAMPA_BENCH_LOGS ? 'inherit' : 'ignore', 'inherit'],
      // Own process group, so a SIGKILL of the group takes the agent's workers with it.
      detached: true,
    },
  );
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));

  return { child, name, exited };
}

export async function stopAgent(
  a: AgentProcess,
  signal: NodeJS.Signals = 'SIGTERM',
): Promise<void> {
  if (a.child.exitCode === null && a.child.signalCode === null) {
    // SIGKILL: the whole group (agent and workers), as when a node dies.
    if (signal === 'SIGKILL') {
      try {
        process.kill(-a.child.pid!, 'SIGKILL');
      } catch {
        a.child.kill('SIGKILL');
      }
    } else a.child.kill(signal);
  }
  await a.exited;
}

/** The bench table: `noop` reservation columns, plus the row's creation time. */
export const BENCH_TABLE = `CREATE TABLE bench_tasks (id bigserial PRIMARY KEY,
  created_at timestamptz NOT NULL DEFAULT clock_timestamp(), noop_reserved_by varchar(500),
  noop_reserved_at timestamptz, noop_tries integer NOT NULL DEFAULT 0,
  noop_started_at timestamptz, noop_ended_at timestamptz, noop_success boolean, noop_error text)`;

export async function resetBenchTables(db: pg.Pool): Promise<void> {
  await db.query('DROP TABLE IF EXISTS bench_tasks');
  await db.query('DROP SCHEMA IF EXISTS pampa CASCADE');
  await db.query(BENCH_TABLE);
}

export async function waitFor<T>(
  what: string,
  fn: () => Promise<T | undefined | false>,
  timeoutMs: number,
  everyMs = 20,
): Promise<T> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

/** Waits until no row of bench_tasks matches `where` (a fixed condition, no user input). */
export async function waitNoRows(
  db: pg.Pool,
  what: string,
  where: string,
  timeoutMs: number,
  everyMs: number,
): Promise<void> {
  await waitFor(
    what,
    async () => {
      const r = await db.query(`SELECT count(*)::int AS n FROM bench_tasks WHERE ${where}`);
      return r.rows[0].n === 0;
    },
    timeoutMs,
    everyMs,
  );
}

export function percentile(values: number[], p: number): number {
  const s = [...values].sort((a, b) => a - b);
  if (s.length === 0) return NaN;

  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))];
}

export function client(url: string): pg.Pool {
  const pool = new pg.Pool({ connectionString: url, max: 4 });
  // An idle connection closed by the server (its shutdown at the end of a part) is no error.
  pool.on('error', () => undefined);

  return pool;
}

/** Prints a result table, or one JSON object with --json. */
export function report(
  title: string,
  rows: [string, string | number][],
  json: boolean,
  data: object,
): void {
  if (json) {
    process.stdout.write(`${JSON.stringify(data)}\n`);
    return;
  }
  process.stdout.write(`\n${title}\n`);
  const w = Math.max(...rows.map(([k]) => k.length));
  for (const [k, v] of rows) process.stdout.write(`  ${k.padEnd(w)}  ${v}\n`);
}

/** An agent's `/status` (the nodes of its view), or null when it does not answer. */
export async function agentStatus(
  url: string,
): Promise<{ nodes: { name: string; state: string }[] } | null> {
  const res = await fetch(`${url}/status`).catch(() => null);

  return res?.ok ? ((await res.json()) as { nodes: { name: string; state: string }[] }) : null;
}

/**
 * Waits until each of the named agents' `/status` shows every one of them alive: they hear each
 * other's adverts. (A node killed before anyone heard it is judged by a stricter rule, so a
 * figure about deaths must not start earlier.)
 */
export async function waitHeard(db: pg.Pool, names: string[], timeoutMs = 60_000): Promise<void> {
  await waitFor(
    `${names.join(', ')} to hear each other`,
    async () => {
      // The registry table appears once the first agent has migrated.
      const r = await db
        .query<{ status_url: string | null }>(
          'SELECT status_url FROM pampa.nodes WHERE name = ANY($1) AND stopped_at IS NULL',
          [names],
        )
        .catch(() => ({ rows: [] }));
      if (r.rows.length < names.length) return false;
      for (const { status_url: url } of r.rows) {
        const s = url ? await agentStatus(url) : null;
        if (!s || !names.every((n) => s.nodes.some((x) => x.name === n && x.state === 'alive')))
          return false;
      }
      return true;
    },
    timeoutMs,
    100,
  );
}
