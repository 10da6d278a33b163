import '../src/polyfills.js';
import assert from 'node:assert/strict';
import { after, describe, test } from 'node:test';
import { cleanUp, scalar, setupJobs, waitFor } from './helpers/jobs.js';

/**
 * Several jobs in one cluster, two of them over one table with their own reservation columns;
 * the second is chained on the first's success by its selecting hook.
 */

after(cleanUp);

describe('several jobs', { concurrency: false }, () => {
  test(
    'jobs over one table keep apart; a job chained on another runs only its successes',
    { timeout: 90_000 },
    async () => {
      const s = await setupJobs({
        sql: `CREATE TABLE doc (id bigint PRIMARY KEY, body text NOT NULL, words int, published boolean);
          INSERT INTO doc SELECT g, CASE WHEN g % 5 = 0 THEN 'bad' ELSE repeat('w ', g) END
            FROM generate_series(1, 25) g;
          CREATE TABLE ping (id bigint PRIMARY KEY); INSERT INTO ping SELECT generate_series(1, 15)`,
        migrate: [
          { name: 'parse', table: 'doc', primaryKey: 'id' },
          {
            name: 'publish',
            table: 'doc',
            primaryKey: 'id',
            columns: {
              reservedBy: 'pub_by',
              reservedAt: 'pub_at',
              tries: 'pub_tries',
              startedAt: 'pub_start',
              endedAt: 'pub_end',
              success: 'pub_ok',
              error: null,
            },
          },
          { name: 'ping', table: 'ping', primaryKey: 'id' },
        ],
        body: `jobs: [
          defineJob({ name: 'parse', table: 'doc', primaryKey: 'id', maxTryTimes: 1,
            run: async (task, ctx) => {
              await record(ctx, task);
              if (task.body === 'bad') throw new Error('unparsable');
              await ctx.db.query('UPDATE doc SET words = $2 WHERE id = $1',
                [task.id, task.body.trim().split(' ').length]);
            } }),
          defineJob({ name: 'publish', table: 'doc', primaryKey: 'id',
            columns: { reservedBy: 'pub_by', reservedAt: 'pub_at', tries: 'pub_tries',
              startedAt: 'pub_start', endedAt: 'pub_end', success: 'pub_ok', error: null },
            selecting: () => ({ where: 'parse_ended_at IS NOT NULL AND parse_success' }),
            run: async (task, ctx) => {
              await record(ctx, task);
              if (task.words === null) throw new Error('published before it was parsed');
              await ctx.db.query('UPDATE doc SET published = true WHERE id = $1', [task.id]);
            } }),
          defineJob({ name: 'ping', table: 'ping', primaryKey: 'id',
            run: async (task, ctx) => { await record(ctx, task); } }),
        ],`,
      });
      const a = s.start('n1', 3);
      await waitFor(
        'every job done',
        async () =>
          (await scalar(
            s.pool,
            `((SELECT count(*) FROM doc WHERE parse_ended_at IS NOT NULL)
              + (SELECT count(*) FROM doc WHERE pub_ok)
              + (SELECT count(*) FROM ping WHERE ping_success))::int`,
          )) ===
          25 + 20 + 15,
        60_000,
        100,
        s.logs,
      );
      await new Promise((r) => setTimeout(r, 1000));
      const docs = await s.pool.query<{
        id: string;
        parse_success: boolean;
        pub_ok: boolean | null;
        pub_tries: number;
        published: boolean | null;
      }>('SELECT id, parse_success, pub_ok, pub_tries, published FROM doc ORDER BY id');
      for (const d of docs.rows) {
        if (Number(d.id) % 5 === 0) {
          assert.deepEqual([d.parse_success, d.pub_ok, d.pub_tries], [false, null, 0], d.id);
        } else {
          assert.deepEqual(
            [d.parse_success, d.pub_ok, d.pub_tries, d.published],
            [true, true, 1, true],
          );
        }
      }
      const early = await scalar(
        s.pool,
        `SELECT count(*)::int FROM exec_log p JOIN exec_log q ON q.task_id = p.task_id
          WHERE p.job = 'publish' AND q.job = 'parse' AND p.at < q.at`,
      );
      assert.equal(early, 0, 'no publish before its parse');
      const perJob = await s.pool.query<{ job: string; n: number }>(
        'SELECT job, count(*)::int AS n FROM exec_log GROUP BY 1 ORDER BY 1',
      );
      assert.deepEqual(
        perJob.rows.map((r) => [r.job, r.n]),
        [
          ['parse', 25],
          ['ping', 15],
          ['publish', 20],
        ],
        'each task ran once per job',
      );
      assert.deepEqual(await a.term(), { code: 0, signal: null }, s.logs());
    },
  );
});
