import '../src/polyfills.js';
import assert from 'node:assert/strict';
import { after, describe, test } from 'node:test';
import type pg from 'pg';
import { cleanUpQa, invariantViolations, setupQa } from './helpers/core-fixture.js';
import { waitFor } from './helpers/fixture.js';

/**
 * Real agents (`pampa agent` processes with forked workers) over Fixture F of cases.md, at a
 * small scale and with short timings. Every wait polls the database with a deadline.
 */

after(cleanUpQa);

async function count(db: pg.Pool, sql: string, params: unknown[] = []): Promise<number> {
  const r = await db.query<{ n: number }>(`SELECT (${sql})::int AS n`, params);

  return r.rows[0].n;
}

const closedCount = (db: pg.Pool) =>
  count(db, 'SELECT count(*) FROM qa_task WHERE ended_at IS NOT NULL');

async function table(db: pg.Pool) {
  return (
    await db.query<{
      id: string;
      ok: boolean | null;
      tries: number;
      ended: boolean;
      err: string | null;
      by: string | null;
      started: boolean;
      result: string | null;
    }>(
      `SELECT id, ok, rsv_tries AS tries, ended_at IS NOT NULL AS ended, err, rsv_by AS by,
              started_at IS NOT NULL AS started, result
         FROM qa_task ORDER BY id`,
    )
  ).rows;
}

async function execs(db: pg.Pool, id: number) {
  return (
    await db.query<{ worker: string; attempt: number; open: boolean; t_start: Date }>(
      `SELECT worker, attempt, t_end IS NULL AS open, t_start FROM qa_exec_log WHERE task_id = $1 ORDER BY id`,
      [id],
    )
  ).rows;
}

async function assertInvariants(db: pg.Pool): Promise<void> {
  assert.deepEqual(await invariantViolations(db), []);
}

describe('core agent processes', { concurrency: false }, () => {
  test(
    '(a) 200 rows all succeed once with tries = 1; SIGTERM exits 0',
    { timeout: 90_000 },
    async () => {
      const rows = Array.from({ length: 200 }, (_, i) => [i + 1, 'sleep:0'] as [number, string]);
      const s = await setupQa(rows, { queueSize: 20 });
      const agent = s.start('n1', 2);
      await waitFor(
        '200 closed rows',
        async () => (await closedCount(s.db.pool)) === 200,
        45_000,
        100,
        s.logs,
      );
      const bad = await s.db.pool.query(
        `SELECT t.id, t.ok, t.rsv_tries, t.result, (SELECT count(*) FROM qa_exec_log e WHERE e.task_id = t.id)::int AS execs
         FROM qa_task t WHERE NOT (t.ok AND t.rsv_tries = 1 AND t.result = 'done' AND t.err IS NULL
           AND (SELECT count(*) FROM qa_exec_log e WHERE e.task_id = t.id) = 1)`,
      );
      assert.deepEqual(bad.rows, []);
      assert.equal(
        await count(
          s.db.pool,
          'SELECT count(*) FROM qa_exec_log WHERE t_end IS NULL OR attempt <> 1',
        ),
        0,
      );
      await assertInvariants(s.db.pool);

      const exit = await Promise.race([
        agent.term(),
        new Promise<'late'>((r) => setTimeout(() => r('late'), 15_000).unref()),
      ]);
      assert.deepEqual(exit, { code: 0, signal: null }, s.logs());
      const node = await s.db.pool.query(
        `SELECT stopped_at IS NOT NULL AS stopped FROM pampa.nodes WHERE name = 'n1'`,
      );
      assert.deepEqual(node.rows, [{ stopped: true }]);
    },
  );

  test(
    '(b) a throwing task is retried, then closed as failed after maxTryTimes',
    { timeout: 60_000 },
    async () => {
      const s = await setupQa([
        [1, 'fail:boom from the handler'],
        [2, 'sleep:10'],
        [3, 'sleep:10'],
      ]);
      const agent = s.start('n1', 2);
      await waitFor(
        '3 closed rows',
        async () => (await closedCount(s.db.pool)) === 3,
        30_000,
        100,
        s.logs,
      );
      const [t1, t2, t3] = await table(s.db.pool);
      assert.equal(t1.ok, false);
      assert.equal(t1.tries, 3);
      assert.ok(t1.ended);
      assert.match(t1.err ?? '', /boom from the handler/);
      assert.equal(t1.result, null);
      const e1 = await execs(s.db.pool, 1);
      assert.deepEqual(
        e1.map((e) => [e.attempt, e.open]),
        [
          [1, false],
          [2, false],
          [3, false],
        ],
      );
      for (const t of [t2, t3]) assert.deepEqual([t.ok, t.tries, t.result], [true, 1, 'done']);
      await assertInvariants(s.db.pool);
      // Closed for good: no further attempt.
      await new Promise((r) => setTimeout(r, 1000));
      assert.equal((await execs(s.db.pool, 1)).length, 3);
      assert.deepEqual(await agent.term(), { code: 0, signal: null }, s.logs());
    },
  );

  test(
    '(c) S16: a poison task that kills its worker gets 3 attempts; the agent stays up',
    { timeout: 90_000 },
    async () => {
      const rows: [number, string][] = [[1, 'die']];
      for (let i = 2; i <= 21; i++) rows.push([i, 'sleep:50']);
      const s = await setupQa(rows);
      const agent = s.start('n1', 2);
      await waitFor(
        '21 closed rows',
        async () => (await closedCount(s.db.pool)) === 21,
        45_000,
        100,
        s.logs,
      );
      const all = await table(s.db.pool);
      const poison = all[0];
      assert.equal(poison.ok, false);
      assert.equal(poison.tries, 3);
      assert.ok(poison.ended);
      assert.match(poison.err ?? '', /worker process n1\.\d was killed by SIGKILL/);
      assert.match(poison.err ?? '', /tries used up \(3\)/);
      const e = await execs(s.db.pool, 1);
      assert.deepEqual(
        e.map((x) => x.attempt),
        [1, 2, 3],
      );
      for (const t of all.slice(1)) assert.deepEqual([t.id, t.ok, t.result], [t.id, true, 'done']);
      // Tries are spent only by real executions: a row caught in a crash but never run keeps
      // its count (no row's tries exceed its executions).
      const spent = await s.db.pool.query(
        `SELECT t.id, t.rsv_tries, count(e.*)::int AS execs FROM qa_task t LEFT JOIN qa_exec_log e ON e.task_id = t.id
        GROUP BY 1, 2 HAVING t.rsv_tries <> count(e.*)`,
      );
      assert.deepEqual(spent.rows, []);
      await assertInvariants(s.db.pool);
      // No crash loop: the agent process is the same one, and the poison row is not started again.
      await new Promise((r) => setTimeout(r, 1000));
      assert.equal(agent.child.exitCode, null, 'the agent is still running');
      assert.equal(agent.child.signalCode, null);
      assert.equal((await execs(s.db.pool, 1)).length, 3);
      const owners = await s.db.pool.query(
        `SELECT DISTINCT split_part(app, '/', 1) AS app FROM qa_write_log`,
      );
      assert.equal(owners.rows.length, 1, 'every write came from the one agent');
      assert.deepEqual(await agent.term(), { code: 0, signal: null }, s.logs());
    },
  );

  test(
    '(d) S01: an agent killed mid-task; a second agent relaunches its rows exactly once',
    { timeout: 90_000 },
    async () => {
      const rows = Array.from({ length: 4 }, (_, i) => [i + 1, 'sleep:2500'] as [number, string]);
      const s = await setupQa(rows);
      const a = s.start('na', 2);
      await waitFor(
        'two running executions on na',
        async () =>
          (await count(
            s.db.pool,
            `SELECT count(*) FROM qa_exec_log WHERE t_end IS NULL AND worker LIKE 'na.%'`,
          )) === 2,
        30_000,
        25,
        s.logs,
      );
      a.killGroup();
      await a.exited;
      const killedAt = (await s.db.pool.query<{ t: Date }>('SELECT clock_timestamp() AS t')).rows[0]
        .t;
      const running = (
        await s.db.pool.query<{ task_id: string }>(
          `SELECT task_id FROM qa_exec_log WHERE worker LIKE 'na.%' ORDER BY task_id`,
        )
      ).rows.map((r) => Number(r.task_id));
      assert.equal(running.length, 2);
      const heldUnstarted = (
        await s.db.pool.query<{ id: string }>(
          `SELECT id FROM qa_task WHERE rsv_by LIKE 'na.%' AND started_at IS NULL`,
        )
      ).rows.map((r) => Number(r.id));

      const b = s.start('nb', 2);
      await waitFor(
        '4 closed rows',
        async () => (await closedCount(s.db.pool)) === 4,
        45_000,
        100,
        s.logs,
      );
      const relaunchedBy = (
        await s.db.pool.query<{ t: Date }>(
          `SELECT max(at) AS t FROM qa_write_log WHERE old_by LIKE 'na.%' AND new_by IS NULL`,
        )
      ).rows[0].t;
      assert.ok(
        relaunchedBy.getTime() - killedAt.getTime() < 24_000,
        'relaunched within the orphan bound',
      );

      for (const t of await table(s.db.pool)) {
        const id = Number(t.id);
        const e = await execs(s.db.pool, id);
        assert.equal(t.ok, true, `row ${id}`);
        assert.equal(t.result, 'done');
        if (running.includes(id)) {
          assert.equal(t.tries, 2, `row ${id} was running on na`);
          assert.deepEqual(
            e.map((x) => [x.worker.split('.')[0], x.attempt, x.open]),
            [
              ['na', 1, true],
              ['nb', 2, false],
            ],
            `row ${id}`,
          );
          assert.ok(
            e[1].t_start.getTime() > killedAt.getTime(),
            'the relaunch started after the kill',
          );
        } else {
          assert.equal(
            t.tries,
            1,
            `row ${id} was not running on na (held unstarted: ${heldUnstarted})`,
          );
          assert.deepEqual(
            e.map((x) => [x.worker.split('.')[0], x.attempt, x.open]),
            [['nb', 1, false]],
          );
        }
      }
      await assertInvariants(s.db.pool);
      // No write from na after it was killed.
      const late = await count(
        s.db.pool,
        `SELECT count(*) FROM qa_write_log WHERE app LIKE 'na-%' AND at > $1`,
        [killedAt],
      );
      assert.equal(late, 0);
      assert.deepEqual(await b.term(), { code: 0, signal: null }, s.logs());
    },
  );

  test(
    '(e) S04: a task whose every start kills its agent ends after exactly 3 attempts',
    { timeout: 120_000 },
    async () => {
      const rows: [number, string][] = [[1, 'sleep:3000']];
      for (let i = 2; i <= 11; i++) rows.push([i, 'sleep:100']);
      const s = await setupQa(rows);
      // One worker per agent, so a crash catches only T (the others wait unstarted in its queue).
      let agent = s.start('n1', 1);
      let seen = 0;
      const kills: number[] = [];
      await waitFor(
        'T closed and the 10 others done',
        async () => {
          const n = await count(s.db.pool, 'SELECT count(*) FROM qa_exec_log WHERE task_id = 1');
          if (n > seen) {
            seen = n;
            agent.killGroup();
            await agent.exited;
            kills.push(Date.now());
            agent = s.start('n1', 1); // systemd Restart=always
          }

          return (await closedCount(s.db.pool)) === 11;
        },
        90_000,
        25,
        s.logs,
      );
      const [t, ...others] = await table(s.db.pool);
      assert.equal(kills.length, 3, 'T was started exactly 3 times');
      assert.equal(t.ok, false);
      assert.equal(t.tries, 3);
      assert.ok(t.ended);
      assert.equal(t.by, 'n1.1');
      assert.match(t.err ?? '', /worker lost/);
      assert.match(t.err ?? '', /tries used up \(3\)/);
      const e = await execs(s.db.pool, 1);
      assert.deepEqual(
        e.map((x) => [x.attempt, x.open]),
        [
          [1, true],
          [2, true],
          [3, true],
        ],
      );
      for (const o of others) assert.deepEqual([o.id, o.ok, o.tries], [o.id, true, 1]);
      // The tries of T went 0 → 1 → 2 → 3 and never back.
      const triesSeq = await s.db.pool.query<{ new_tries: number; old_tries: number }>(
        `SELECT old_tries, new_tries FROM qa_write_log WHERE task_id = 1 ORDER BY at`,
      );
      for (const w of triesSeq.rows)
        assert.ok(w.new_tries >= w.old_tries, `tries went ${w.old_tries} → ${w.new_tries}`);
      await assertInvariants(s.db.pool);
      await new Promise((r) => setTimeout(r, 1000));
      assert.equal((await execs(s.db.pool, 1)).length, 3, 'no 4th start');
      assert.deepEqual(await agent.term(), { code: 0, signal: null }, s.logs());
    },
  );

  // A worker starts fast tasks in batches (start time and tries for the whole batch, then runs
  // them one by one). When it dies inside a batch, the tasks after the one it was running never
  // ran: the agent undoes their start, so they are not charged a try.
  test(
    '(g) S16 with fast tasks: rows batch-started behind the poison row are not charged a try',
    { timeout: 60_000 },
    async () => {
      const rows: [number, string][] = [];
      for (let i = 1; i <= 60; i++) rows.push([i, i === 31 ? 'die' : 'sleep:0']);
      const s = await setupQa(rows, { queueSize: 10 });
      const agent = s.start('n1', 1);
      await waitFor(
        '60 closed rows',
        async () => (await closedCount(s.db.pool)) === 60,
        45_000,
        100,
        s.logs,
      );
      const spent = await s.db.pool.query(
        `SELECT t.id, t.rsv_tries, count(e.*)::int AS execs FROM qa_task t
           LEFT JOIN qa_exec_log e ON e.task_id = t.id GROUP BY 1, 2 HAVING t.rsv_tries <> count(e.*) ORDER BY 1`,
      );
      await agent.term();
      assert.deepEqual(spent.rows, [], 'rows whose tries exceed their executions');
    },
  );

  test(
    '(f) SIGTERM drain: a running task is released after the grace, a queued one at once',
    { timeout: 60_000 },
    async () => {
      const s = await setupQa(
        [
          [1, 'sleep:60000'],
          [2, 'sleep:100'],
        ],
        { shutdownGraceMs: 1000 },
      );
      const agent = s.start('n1', 1);
      await waitFor(
        'row 1 running and row 2 queued on n1.1',
        async () =>
          (await count(s.db.pool, `SELECT count(*) FROM qa_exec_log WHERE task_id = 1`)) === 1 &&
          (await count(
            s.db.pool,
            `SELECT count(*) FROM qa_task WHERE id = 2 AND rsv_by = 'n1.1' AND started_at IS NULL`,
          )) === 1,
        30_000,
        25,
        s.logs,
      );
      const t0 = Date.now();
      const exit = await Promise.race([
        agent.term(),
        new Promise<'late'>((r) => setTimeout(() => r('late'), 15_000).unref()),
      ]);
      assert.deepEqual(exit, { code: 0, signal: null }, s.logs());
      assert.ok(Date.now() - t0 >= 900, 'the running task had its grace period');
      const r = await s.db.pool.query(
        `SELECT id, rsv_by, rsv_at, rsv_tries, started_at, ended_at, ok, err, note FROM qa_task ORDER BY id`,
      );
      assert.deepEqual(r.rows, [
        {
          id: '1',
          rsv_by: null,
          rsv_at: null,
          rsv_tries: 1,
          started_at: null,
          ended_at: null,
          ok: null,
          err: 'shutdown',
          note: 'keep-me',
        },
        {
          id: '2',
          rsv_by: null,
          rsv_at: null,
          rsv_tries: 0,
          started_at: null,
          ended_at: null,
          ok: null,
          err: null,
          note: 'keep-me',
        },
      ]);
      // The lease was given up (expiry at or before now), and the node is marked stopped.
      const lease = await s.db.pool.query(
        `SELECT expires_at <= now() AS expired FROM pampa.leases`,
      );
      assert.deepEqual(lease.rows, [{ expired: true }]);
      await assertInvariants(s.db.pool);
    },
  );
});
