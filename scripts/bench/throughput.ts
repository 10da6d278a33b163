import { fileURLToPath } from 'node:url';
import {
  benchDatabase,
  client,
  startAgent,
  stopAgent,
  waitFor,
  type AgentProcess,
} from './harness.js';

const CONFIG = fileURLToPath(new URL('./noop-config.js', import.meta.url));

export interface ThroughputResult {
  agents: number;
  workers: number;
  tasks: number;
  taskMs: number;
  seconds: number;
  tasksPerSecond: number;
  statementsPerTask: number;
  /** Tasks started more than once (a worker stopped, a node taken for dead under load). */
  retried: number;
}

/**
 * Tasks per second: `tasks` rows of a no-op (or `taskMs`-long) job, `agents` agents × `workers`
 * worker processes. The clock starts when the rows become available (the agents are already up
 * and idle) and stops when the last row is closed. Statements per task: committed transactions
 * of the database (every Pampa statement is its own transaction) during the run, per task.
 */
export async function benchThroughput(
  agents: number,
  workers: number,
  tasks: number,
  taskMs: number,
): Promise<ThroughputResult> {
  const dbh = await benchDatabase();
  const db = client(dbh.url);
  const procs: AgentProcess[] = [];
  try {
    await db.query('DROP TABLE IF EXISTS bench_tasks');
    await db.query('DROP SCHEMA IF EXISTS pampa CASCADE');
    await db.query(`CREATE TABLE bench_tasks (id bigint PRIMARY KEY, noop_reserved_by varchar(500),
      noop_reserved_at timestamptz, noop_tries integer NOT NULL DEFAULT 0, noop_started_at timestamptz,
      noop_ended_at timestamptz, noop_success boolean, noop_error text)`);
    await db.query(
      'CREATE INDEX ON bench_tasks (id) WHERE noop_reserved_by IS NULL AND noop_ended_at IS NULL',
    );
    await db.query(
      'CREATE INDEX ON bench_tasks (noop_reserved_by) WHERE noop_reserved_by IS NOT NULL AND noop_ended_at IS NULL',
    );
    // Rows exist but are held back (ended) until the clock starts, so agents start idle.
    await db.query(
      `INSERT INTO bench_tasks (id, noop_ended_at) SELECT g, now() FROM generate_series(1, $1::bigint) g`,
      [tasks],
    );
    await db.query('VACUUM ANALYZE bench_tasks');
    const env = { PAMPA_BENCH_TASK_MS: String(taskMs) };
    for (let i = 1; i <= agents; i++)
      procs.push(startAgent(CONFIG, `b${i}`, dbh.url, ['--workers', String(workers)], env));
    await waitFor(
      'agents to register',
      async () => {
        const r = await db
          .query('SELECT count(*)::int AS n FROM pampa.nodes WHERE stopped_at IS NULL')
          .catch(() => null);
        return r !== null && r.rows[0].n === agents;
      },
      60_000,
      100,
    );
    await new Promise((r) => setTimeout(r, 2000));

    const before = await commits(db);
    const t0 = performance.now();
    await db.query('UPDATE bench_tasks SET noop_ended_at = NULL');
    await waitFor(
      'all tasks to close',
      async () => {
        const r = await db.query(
          'SELECT count(*)::int AS n FROM bench_tasks WHERE noop_ended_at IS NULL',
        );
        return r.rows[0].n === 0;
      },
      600_000,
      200,
    );
    const seconds = (performance.now() - t0) / 1000;
    const after = await commits(db);
    const bad = await db.query(
      'SELECT count(*)::int AS n FROM bench_tasks WHERE noop_success IS NOT TRUE',
    );
    if (bad.rows[0].n !== 0) throw new Error(`${bad.rows[0].n} tasks did not succeed`);
    const retried = await db.query(
      'SELECT count(*)::int AS n FROM bench_tasks WHERE noop_tries > 1',
    );

    return {
      agents,
      workers,
      tasks,
      taskMs,
      seconds,
      tasksPerSecond: Math.round(tasks / seconds),
      retried: retried.rows[0].n,
      statementsPerTask: Number(((after - before - 2) / tasks).toFixed(3)),
    };
  } finally {
    await Promise.all(procs.map((p) => stopAgent(p)));
    await db.end();
    await dbh.stop();
  }
}

async function commits(db: import('pg').Pool): Promise<number> {
  const r = await db.query<{ n: string }>(
    'SELECT xact_commit::text AS n FROM pg_stat_database WHERE datname = current_database()',
  );
  await db.query('SELECT pg_stat_clear_snapshot()');

  return Number(r.rows[0].n);
}
