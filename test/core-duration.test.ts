import '../src/polyfills.js';
import assert from 'node:assert/strict';
import { after, describe, test } from 'node:test';
import { cleanUpQa, invariantViolations, setupQa, type QaSetup } from './helpers/core-fixture.js';
import { isRunning, waitFor } from './helpers/fixture.js';

/**
 * S02 of cases.md: a task that runs past maxJobDurationMinutes is stopped by its own worker,
 * never by a relaunch while it still runs. 0.05 min is a 3 s limit.
 */

after(() => cleanUpQa());

interface Exec {
  worker: string;
  attempt: number;
  pid: number;
}

/**
 * Polls until task 1 is closed; at every poll, at most one process that ran one of its
 * executions may be alive. Returns the executions in order and the row.
 */
async function watchTask(s: QaSetup, timeoutMs: number) {
  let maxAlive = 0;
  const row = await waitFor(
    'task 1 closed',
    async () => {
      const e = await s.db.pool.query<Exec>(
        'SELECT worker, attempt, pid FROM qa_exec_log WHERE task_id = 1 AND t_end IS NULL',
      );
      const alive = new Set(e.rows.filter((x) => isRunning(x.pid)).map((x) => x.pid));
      maxAlive = Math.max(maxAlive, alive.size);
      const r = await s.db.pool.query<{
        ok: boolean | null;
        tries: number;
        err: string | null;
        ended: boolean;
      }>(
        `SELECT ok, rsv_tries AS tries, err, ended_at IS NOT NULL AS ended
           FROM qa_task WHERE id = 1`,
      );

      return r.rows[0].ended ? r.rows[0] : null;
    },
    timeoutMs,
    50,
    s.logs,
  );
  const execs = await s.db.pool.query<Exec>(
    'SELECT worker, attempt, pid FROM qa_exec_log WHERE task_id = 1 ORDER BY id',
  );

  return { row, execs: execs.rows, maxAlive };
}

describe('S02: a task past maxJobDurationMinutes', { concurrency: false }, () => {
  test('S02-A: every attempt overruns; each is stopped by its worker, then the task is closed', async () => {
    const s = await setupQa([[1, 'sleep:60000']], { maxJobDurationMinutes: 0.05 });
    s.start('oa', 2);

    const { row, execs, maxAlive } = await watchTask(s, 60_000);

    assert.equal(maxAlive, 1, 'two executions of the task were alive at once');
    assert.deepEqual(
      execs.map((e) => e.attempt),
      [1, 2, 3],
      'three attempts, no fourth',
    );
    assert.equal(new Set(execs.map((e) => e.pid)).size, 3, 'each attempt ran in a new process');
    assert.equal(row.ok, false);
    assert.equal(row.tries, 3);
    assert.match(row.err ?? '', /maxJobDurationMinutes \(0\.05 min\)/);
    assert.match(row.err ?? '', /tries used up/);
    assert.deepEqual(await invariantViolations(s.db.pool), []);
  });

  test('S02-B: a worker paused past the limit is stopped; the next attempt succeeds, and no stale write lands', async () => {
    const s = await setupQa([[1, 'sleep:1500']], { maxJobDurationMinutes: 0.05 });
    s.start('ob', 2);
    const first = await waitFor(
      'attempt 1 running',
      async () => {
        const r = await s.db.pool.query<Exec>(
          'SELECT worker, attempt, pid FROM qa_exec_log WHERE task_id = 1',
        );

        return r.rows[0];
      },
      30_000,
      20,
      s.logs,
    );
    process.kill(first.pid, 'SIGSTOP');
    const paused = performance.now();

    const { row, execs, maxAlive } = await watchTask(s, 60_000).finally(() => {
      if (isRunning(first.pid)) process.kill(first.pid, 'SIGCONT');
    });

    assert.ok(performance.now() - paused > 3000, 'not relaunched before the duration limit');
    assert.equal(maxAlive, 1, 'the relaunched copy ran while the paused one was alive');
    assert.deepEqual(
      execs.map((e) => e.attempt),
      [1, 2],
    );
    assert.deepEqual([row.ok, row.tries], [true, 2]);
    // Killed while paused, the first attempt never resumes to write its result over the second.
    assert.ok(!isRunning(first.pid), 'the paused worker process is gone');
    assert.deepEqual(await invariantViolations(s.db.pool), []);
  });
});
