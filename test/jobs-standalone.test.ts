import '../src/polyfills.js';
import assert from 'node:assert/strict';
import { after, describe, test } from 'node:test';
import { cleanUp, scalar, setupJobs, waitFor } from './helpers/jobs.js';

/**
 * Standalone processes: run periodically, one at a time, on the lease holder (moving with the
 * lease) or on a named node; a failing run is logged and the next one comes; runOnce.
 */

after(cleanUp);

describe('standalone processes', { concurrency: false }, () => {
  test(
    'one instance at a time on the lease holder or the named node, start to start',
    { timeout: 90_000 },
    async () => {
      const s = await setupJobs({
        sql: `CREATE TABLE runs (id bigserial PRIMARY KEY, name text, node text, pid int,
            t_start timestamptz DEFAULT clock_timestamp(), t_end timestamptz);
          CREATE TABLE noop (id bigint PRIMARY KEY)`,
        migrate: [{ name: 'noop', table: 'noop', primaryKey: 'id' }],
        body: `
        standalone: [
          { name: 'tick', everySeconds: 1, run: async (ctx) => {
              const r = await ctx.db.query(
                'INSERT INTO runs (name, node, pid) VALUES ($1, $2, $3) RETURNING id',
                [ctx.name, ctx.node, process.pid]);
              await sleep(600);
              await ctx.db.query('UPDATE runs SET t_end = clock_timestamp() WHERE id = $1', [r.rows[0].id]);
            } },
          { name: 'flaky', everySeconds: 0.5, run: async (ctx) => {
              await ctx.db.query('INSERT INTO runs (name, node) VALUES ($1, $2)', [ctx.name, ctx.node]);
              throw new Error('flaky run');
            } },
          { name: 'once', everySeconds: 0.2, runOnce: true, run: (ctx) =>
              ctx.db.query('INSERT INTO runs (name, node) VALUES ($1, $2)', [ctx.name, ctx.node]) },
          { name: 'pinned', everySeconds: 0.5, node: 'nb', run: (ctx) =>
              ctx.db.query('INSERT INTO runs (name, node) VALUES ($1, $2)', [ctx.name, ctx.node]) },
        ],
        jobs: [defineJob({ name: 'noop', table: 'noop', primaryKey: 'id', run: () => undefined })],`,
      });
      const na = s.start('na', 1);
      await waitFor(
        'na holds the lease',
        async () =>
          (await scalar(
            s.pool,
            `SELECT count(*)::int FROM pampa.leases WHERE holder LIKE 'na-%'`,
          )) === 1,
      );
      const nb = s.start('nb', 1);
      await waitFor(
        'four ticks, three flaky runs, a pinned run',
        async () =>
          (await scalar<boolean>(
            s.pool,
            `(SELECT count(*) FROM runs WHERE name = 'tick' AND t_end IS NOT NULL) >= 4
              AND (SELECT count(*) FROM runs WHERE name = 'flaky') >= 3
              AND (SELECT count(*) FROM runs WHERE name = 'pinned') >= 1`,
          )) === true,
        45_000,
        100,
        s.logs,
      );
      const byNode = await s.pool.query<{ name: string; node: string; n: number }>(
        `SELECT name, node, count(*)::int AS n FROM runs GROUP BY 1, 2 ORDER BY 1, 2`,
      );
      const where = Object.fromEntries(byNode.rows.map((r) => [`${r.name}@${r.node}`, r.n]));
      assert.equal(where['once@na'], 1, 'runOnce: once');
      assert.equal(where['tick@nb'], undefined, 'tick runs only on the lease holder');
      assert.equal(where['pinned@na'], undefined, 'pinned runs only on its node');
      // One instance at a time, and start to start: each tick starts >= 1 s after the last.
      // A run stopped by a lease blip (under load) has no t_end; after a complete run, the next
      // one starts only once it ended, and a period after it started.
      const ticks = await s.pool.query<{ gap: number; overlap: boolean }>(
        `SELECT gap, overlap FROM (
           SELECT extract(epoch FROM t_start - lag(t_start) OVER w)::float8 AS gap,
                  t_start < lag(t_end) OVER w AS overlap, lag(t_end) OVER w AS prev_end
             FROM runs WHERE name = 'tick' WINDOW w AS (ORDER BY t_start)) x
          WHERE prev_end IS NOT NULL`,
      );
      assert.ok(ticks.rows.length >= 3);
      for (const t of ticks.rows) {
        assert.equal(t.overlap, false);
        // t_start is written by the run's own process once it has booted: under load that
        // takes a varying few tens of ms, so two starts 1 s apart can read a little closer.
        assert.ok(t.gap >= 0.8, `start to start: ${t.gap}`);
      }

      // The holder goes: the tick moves to the other node, still one at a time.
      assert.deepEqual(await na.term(), { code: 0, signal: null }, s.logs());
      await waitFor(
        'ticks on nb',
        async () =>
          (await scalar(
            s.pool,
            `SELECT count(*)::int FROM runs WHERE name = 'tick' AND node = 'nb' AND t_end IS NOT NULL`,
          )) >= 2,
        30_000,
        100,
        s.logs,
      );
      const overlaps = await scalar(
        s.pool,
        `SELECT count(*)::int FROM runs a JOIN runs b ON a.id < b.id AND a.name = 'tick' AND b.name = 'tick'
          WHERE b.t_start < a.t_end AND a.t_end IS NOT NULL`,
      );
      assert.equal(overlaps, 0, 'never two ticks at once');
      assert.deepEqual(await nb.term(), { code: 0, signal: null }, s.logs());
    },
  );
});
