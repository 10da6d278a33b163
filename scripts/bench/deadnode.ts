import { fileURLToPath } from 'node:url';
import {
  waitNoRows,
  benchDatabase,
  client,
  percentile,
  resetBenchTables,
  startAgent,
  stopAgent,
  waitFor,
  waitHeard,
  type AgentProcess,
} from './harness.js';

const CONFIG = fileURLToPath(new URL('./noop-config.js', import.meta.url));

/**
 * A dead node's tasks running elsewhere: two agents (x1 with one worker, x2 with two) run
 * 3-second tasks; the
 * agent running task T is SIGKILLed with its workers; the figure is the time from the kill to
 * T's next start on the other node (database clock). Repeated `rounds` times, the dead agent
 * restarted in between.
 */
export async function benchDeadNode(
  rounds: number,
): Promise<{ rounds: number; medianMs: number; worstMs: number; samples: number[] }> {
  const dbh = await benchDatabase();
  const db = client(dbh.url);
  const env = {
    PAMPA_BENCH_TASK_MS: '3000',
    PAMPA_BENCH_QUEUE_SIZE: '1',
    PAMPA_BENCH_CLUSTER: 'bench-dead',
  };
  const agents = new Map<string, AgentProcess>();
  const samples: number[] = [];
  try {
    await resetBenchTables(db);
    // x2 has a spare worker, so the figure is detection + relaunch + start, not queueing.
    agents.set('x1', startAgent(CONFIG, 'x1', dbh.url, ['--workers', '1'], env));
    agents.set('x2', startAgent(CONFIG, 'x2', dbh.url, ['--workers', '2'], env));
    await waitHeard(db, ['x1', 'x2']);
    for (let k = 0; k < rounds; k++) {
      await db.query('INSERT INTO bench_tasks SELECT FROM generate_series(1, 3)');
      const running = await waitFor(
        'a task running on x1',
        async () => {
          const r = await db.query<{ id: string; tries: number }>(
            "SELECT id::text, noop_tries AS tries FROM bench_tasks WHERE noop_reserved_by = 'x1.1' AND noop_started_at IS NOT NULL AND noop_ended_at IS NULL",
          );
          return r.rows[0];
        },
        60_000,
        20,
      );
      const killedAt = (await db.query('SELECT now() AS t')).rows[0].t as Date;
      await stopAgent(agents.get('x1')!, 'SIGKILL');
      const restarted = await waitFor(
        'the task restarted on x2',
        async () => {
          const r = await db.query<{ t: Date }>(
            "SELECT noop_started_at AS t FROM bench_tasks WHERE id = $1 AND noop_reserved_by LIKE 'x2.%' AND noop_tries > $2 AND noop_started_at IS NOT NULL",
            [running.id, running.tries],
          );
          return r.rows[0]?.t;
        },
        60_000,
        20,
      );
      samples.push(restarted.getTime() - killedAt.getTime());
      await waitNoRows(db, 'all rows closed', 'noop_ended_at IS NULL', 120_000, 100);
      const before = await db.query("SELECT agent_id FROM pampa.nodes WHERE name = 'x1'");
      agents.set('x1', startAgent(CONFIG, 'x1', dbh.url, ['--workers', '1'], env));
      await waitFor(
        'x1 back in the registry',
        async () => {
          const r = await db.query("SELECT agent_id FROM pampa.nodes WHERE name = 'x1'");
          return r.rows[0]?.agent_id !== before.rows[0]?.agent_id;
        },
        60_000,
        50,
      );
      // Its adverts reach x2 (and x2's reach it) before the next round's tasks.
      await waitHeard(db, ['x1', 'x2']);
    }

    return { rounds, medianMs: percentile(samples, 50), worstMs: Math.max(...samples), samples };
  } finally {
    await Promise.all([...agents.values()].map((a) => stopAgent(a, 'SIGKILL')));
    await db.end();
    await dbh.stop();
  }
}
