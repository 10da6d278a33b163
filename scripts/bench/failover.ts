import { fileURLToPath } from 'node:url';
import {
  benchDatabase,
  client,
  resetBenchTables,
  percentile,
  startAgent,
  stopAgent,
  waitFor,
  type AgentProcess,
} from './harness.js';

const CONFIG = fileURLToPath(new URL('./failover-config.js', import.meta.url));

/**
 * Time from the lease holder's SIGKILL to the first reservation by the new holder, over `kills`
 * kills. Three agents run; rows keep arriving. The killed agent is restarted after each kill.
 * "First reservation" is the first row whose reservation time is after the kill and whose
 * worker belongs to another node, read from the database clock.
 */
export async function benchFailover(
  kills: number,
): Promise<{ kills: number; medianMs: number; worstMs: number; samples: number[] }> {
  const dbh = await benchDatabase();
  const db = client(dbh.url);
  const agents = new Map<string, AgentProcess>();
  const samples: number[] = [];
  try {
    await resetBenchTables(db);
    for (const n of ['f1', 'f2', 'f3'])
      agents.set(n, startAgent(CONFIG, n, dbh.url, ['--workers', '1']));
    const feeder = setInterval(
      () => void db.query('INSERT INTO bench_tasks DEFAULT VALUES').catch(() => undefined),
      20,
    );
    try {
      for (let k = 0; k < kills; k++) {
        const holder = await waitFor(
          'a lease holder',
          async () => {
            const r = await db
              .query(
                'SELECT holder FROM pampa.leases WHERE expires_at > now() AND holder IS NOT NULL',
              )
              .catch(() => ({ rows: [] as { holder: string }[] }));
            return r.rows[0]?.holder as string | undefined;
          },
          30_000,
        );
        const node = holder.split('-')[0];
        // Let the holder dispatch for a moment, as in steady state.
        await new Promise((r) => setTimeout(r, 1500));
        const killedAt = (await db.query('SELECT now() AS t')).rows[0].t as Date;
        await stopAgent(agents.get(node)!, 'SIGKILL');
        const first = await waitFor(
          'a reservation by the new holder',
          async () => {
            const r = await db.query(
              `SELECT min(noop_reserved_at) AS t FROM bench_tasks WHERE noop_reserved_at > $1 AND noop_reserved_by NOT LIKE $2`,
              [killedAt, `${node}.%`],
            );
            return (r.rows[0].t as Date | null) ?? undefined;
          },
          30_000,
          20,
        );
        samples.push(first.getTime() - killedAt.getTime());
        agents.set(node, startAgent(CONFIG, node, dbh.url, ['--workers', '1']));
      }
    } finally {
      clearInterval(feeder);
    }

    return { kills, medianMs: percentile(samples, 50), worstMs: Math.max(...samples), samples };
  } finally {
    await Promise.all([...agents.values()].map((a) => stopAgent(a, 'SIGKILL')));
    await db.end();
    await dbh.stop();
  }
}
