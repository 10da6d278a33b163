import { fileURLToPath } from 'node:url';
import { migrate } from '../../src/db/migrations.js';
import { migrateJobTable } from '../../src/db/user-table.js';
import { loadConfig } from '../../src/config/load.js';
import { rootLogger } from '../../src/log.js';
import {
  waitNoRows,
  benchDatabase,
  client,
  percentile,
  resetBenchTables,
  startAgent,
  stopAgent,
  waitFor,
} from './harness.js';

const CONFIG = fileURLToPath(new URL('./failover-config.js', import.meta.url));

/**
 * New row → task start: one agent with 2 idle workers (one warm-up row started and removed
 * first); then a row is inserted every `gapMs`; for each
 * row, the start time written by the worker minus the row's creation time, both from the
 * database clock (clock_timestamp() at insert; now() of the start statement).
 */
export async function benchLatency(
  samples: number,
  gapMs: number,
): Promise<{ samples: number; p50Ms: number; p99Ms: number }> {
  const dbh = await benchDatabase();
  const db = client(dbh.url);
  const agent = startAgent(CONFIG, 'l1', dbh.url, ['--workers', '2']);
  try {
    await resetBenchTables(db);
    // loadConfig reads DATABASE_URL; set it for this call only (later benchmarks start their own).
    const saved = process.env.DATABASE_URL;
    process.env.DATABASE_URL = dbh.url;
    const config = await loadConfig(CONFIG).finally(() => {
      if (saved === undefined) delete process.env.DATABASE_URL;
      else process.env.DATABASE_URL = saved;
    });
    await migrate(db, config.schema);
    await migrateJobTable(
      db,
      config.jobs[0],
      config.schema,
      rootLogger().child({ component: 'bench' }),
    );
    await waitFor(
      'the agent to dispatch',
      async () => {
        const r = await db
          .query('SELECT 1 FROM pampa.leases WHERE expires_at > now()')
          .catch(() => ({ rows: [] }));
        return r.rows.length === 1;
      },
      60_000,
      100,
    );
    // Warm-up: the agent has the lease, but its workers may not be assigned to the job yet; the
    // first row to start shows they are, and is left out of the samples.
    await db.query('INSERT INTO bench_tasks DEFAULT VALUES');
    await waitNoRows(db, 'the warm-up row started', 'noop_started_at IS NULL', 60_000, 20);
    await db.query('DELETE FROM bench_tasks');
    await new Promise((r) => setTimeout(r, 1000));
    for (let i = 0; i < samples; i++) {
      await db.query('INSERT INTO bench_tasks DEFAULT VALUES');
      await new Promise((r) => setTimeout(r, gapMs));
    }
    await waitNoRows(db, 'every row started', 'noop_started_at IS NULL', 60_000, 50);
    const r = await db.query<{ ms: number }>(
      'SELECT extract(epoch FROM noop_started_at - created_at)::float8 * 1000 AS ms FROM bench_tasks',
    );
    const ms = r.rows.map((x) => x.ms);

    return {
      samples: ms.length,
      p50Ms: round(percentile(ms, 50)),
      p99Ms: round(percentile(ms, 99)),
    };
  } finally {
    await stopAgent(agent, 'SIGKILL');
    await db.end();
    await dbh.stop();
  }
}

function round(n: number): number {
  return Math.round(n * 100) / 100;
}
