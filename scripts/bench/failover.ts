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
 * Every reservation of a bench row, with the writer's application_name (the dispatching
 * agent's id) and the database clock when the row was written.
 */
const RESERVATION_AUDIT = `
  CREATE TABLE bench_reservations (at timestamptz DEFAULT clock_timestamp(), app text,
    worker text);
  CREATE FUNCTION bench_reservation_audit() RETURNS trigger LANGUAGE plpgsql AS $$
  BEGIN
    INSERT INTO bench_reservations (app, worker)
      VALUES (current_setting('application_name'), NEW.noop_reserved_by);
    RETURN NULL;
  END $$;
  CREATE TRIGGER bench_reservation_audit AFTER UPDATE OF noop_reserved_by ON bench_tasks
    FOR EACH ROW WHEN (OLD.noop_reserved_by IS NULL AND NEW.noop_reserved_by IS NOT NULL)
    EXECUTE FUNCTION bench_reservation_audit();`;

/**
 * Time from the lease holder's SIGKILL to the first reservation by the new holder, over `kills`
 * kills. Three agents run; rows keep arriving. The killed agent is restarted after each kill.
 * A sample ends at the first reservation written after the kill by an agent of another node
 * (the writer is the reserving connection's application_name, the agent's id), which then
 * holds the lease in a higher epoch: a reservation the killed holder had in flight never
 * counts. Both ends are read from the database clock.
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
    await db.query('DROP TABLE IF EXISTS bench_reservations');
    await db.query('DROP FUNCTION IF EXISTS bench_reservation_audit() CASCADE');
    await db.query(RESERVATION_AUDIT);
    for (const n of ['f1', 'f2', 'f3'])
      agents.set(n, startAgent(CONFIG, n, dbh.url, ['--workers', '1']));
    const feeder = setInterval(
      () => void db.query('INSERT INTO bench_tasks DEFAULT VALUES').catch(() => undefined),
      20,
    );
    try {
      for (let k = 0; k < kills; k++) {
        const lease = await waitFor(
          'a lease holder',
          async () => {
            const r = await db
              .query<{ holder: string; epoch: string }>(
                'SELECT holder, epoch FROM pampa.leases WHERE expires_at > now() AND holder IS NOT NULL',
              )
              .catch(() => ({ rows: [] as { holder: string; epoch: string }[] }));
            return r.rows[0];
          },
          30_000,
        );
        const node = lease.holder.split('-')[0];
        // Let the holder dispatch for a moment, as in steady state.
        await new Promise((r) => setTimeout(r, 1500));
        const killedAt = (await db.query('SELECT now() AS t')).rows[0].t as Date;
        await stopAgent(agents.get(node)!, 'SIGKILL');
        const first = await waitFor(
          'a reservation by the new holder',
          async () => {
            const r = await db.query<{ at: Date; app: string }>(
              `SELECT at, app FROM bench_reservations
                WHERE at > $1 AND app NOT LIKE $2 ORDER BY at LIMIT 1`,
              [killedAt, `${node}-%`],
            );
            return r.rows[0];
          },
          30_000,
          20,
        );
        const next = await db.query<{ holder: string; epoch: string }>(
          'SELECT holder, epoch FROM pampa.leases',
        );
        if (Number(next.rows[0]?.epoch) <= Number(lease.epoch))
          throw new Error(`reservation by ${first.app} after the kill, yet the epoch did not grow`);
        samples.push(first.at.getTime() - killedAt.getTime());
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
