/**
 * Shared pieces of the jobs-* tests: a database with task tables whose reservation columns
 * `pampa migrate` added, a config-module writer taking the jobs as source text (hooks are
 * functions, so the config is code), real agents, and their logs and status ports.
 */
import type pg from 'pg';
import { pino } from 'pino';
import { defineJob } from '../../src/config/define.js';
import type { JobInput } from '../../src/config/schema.js';
import { migrate } from '../../src/db/migrations.js';
import { migrateJobTable } from '../../src/db/user-table.js';
import { createTestDatabase, type TestDatabase } from './database.js';
import {
  agentGroup,
  killAllAgents,
  logLines,
  statusUrl,
  tempDir,
  waitFor,
  writeConfigModule,
  type AgentProcess,
} from './fixture.js';

export { logLines, statusUrl, waitFor };

/**
 * Helpers visible to the config's source: `sleep(ms)`, and `record(ctx, task)` which logs an
 * execution into exec_log (job, task id, worker, attempt) on the worker's pool.
 */
const PRELUDE = `
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
async function record(ctx, task) {
  await ctx.db.query(
    'INSERT INTO exec_log (job, task_id, worker, attempt) VALUES ($1, $2, $3, $4)',
    [ctx.job, task.id, ctx.worker, ctx.attempt],
  );
}
`;

export interface JobsSetup {
  db: TestDatabase;
  pool: pg.Pool;
  dir: string;
  config: string;
  agents: AgentProcess[];
  start(name: string, workers?: number): AgentProcess;
  logs(): string;
}

const databases: TestDatabase[] = [];

export async function cleanUp(): Promise<void> {
  killAllAgents();
  await Promise.all(databases.splice(0).map((d) => d.drop().catch(() => undefined)));
}

/**
 * A fresh database with `sql` run in it and exec_log created; each job of `migrateJobs` (a
 * minimal descriptor: name, table, primaryKey, and columns or notBeforeColumn if any) has its
 * reservation columns added; the config module holds `body` (cluster options and `jobs`).
 */
export async function setupJobs(o: {
  sql: string;
  migrate: Omit<JobInput, 'run'>[];
  body: string;
  cluster?: string;
}): Promise<JobsSetup> {
  const db = await createTestDatabase();
  databases.push(db);
  await migrate(db.pool, 'pampa');
  await db.pool.query(`${o.sql};
    CREATE TABLE exec_log (id bigserial PRIMARY KEY, job text, task_id bigint, worker text,
      attempt int, at timestamptz DEFAULT clock_timestamp())`);
  for (const m of o.migrate) {
    await migrateJobTable(
      db.pool,
      defineJob({ ...m, run: () => undefined }),
      'pampa',
      pino({ level: 'silent' }),
    );
  }
  const dir = tempDir('pampa-jobs-');
  const config = writeConfigModule({
    dir,
    cluster: o.cluster ?? 'jobs',
    prelude: PRELUDE,
    body: o.body,
  });
  const group = agentGroup(dir, config, db.url);

  return { db, pool: db.pool, ...group };
}

export async function scalar<T = number>(
  db: pg.Pool,
  sql: string,
  params: unknown[] = [],
): Promise<T> {
  const r = await db.query<{ v: T }>(`SELECT (${sql}) AS v`, params);

  return r.rows[0].v;
}

/** Worker → job rows of the assignments table. */
export async function assignments(db: pg.Pool): Promise<Record<string, string | null>> {
  const r = await db.query<{ worker: string; job: string | null }>(
    'SELECT worker, job FROM pampa.assignments ORDER BY worker',
  );

  return Object.fromEntries(r.rows.map((x) => [x.worker, x.job]));
}
