import '../src/polyfills.js';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { after, describe, test } from 'node:test';
import type pg from 'pg';
import { cleanUpQa, invariantViolations, setupQa, type QaSetup } from './helpers/core-fixture.js';
import { StallingProxy } from './helpers/db-proxy.js';
import { TEST_SETTINGS, isRunning, logged, statusUrl, waitFor } from './helpers/fixture.js';

/**
 * Regression tests for fault kinds that chaos runs and benchmarks found, one per kind, with
 * real agent processes over Fixture F. Each names the fix it guards.
 */

const proxies: StallingProxy[] = [];
after(async () => {
  await cleanUpQa();
  await Promise.all(proxies.map((p) => p.close()));
});

/** The open execution of task `id` on `worker`, once there is one. */
async function running(s: QaSetup, id: number, worker: string): Promise<{ pid: number }> {
  const open = async () => {
    const r = await s.db.pool.query<{ pid: number }>(
      'SELECT pid FROM qa_exec_log WHERE task_id = $1 AND worker = $2 AND t_end IS NULL',
      [id, worker],
    );

    return r.rows[0];
  };

  return waitFor(`task ${id} running on ${worker}`, open, 30_000, 50, s.logs);
}

/** Tries and executions (worker, ended) of every task, once all of them succeeded. */
async function allDone(s: QaSetup) {
  const read = async (db: pg.Pool) => {
    const r = await db.query<{ id: string; ok: boolean | null; tries: number; execs: string[] }>(
      `SELECT t.id, t.ok, t.rsv_tries AS tries,
              array(SELECT worker FROM qa_exec_log e WHERE e.task_id = t.id ORDER BY e.id) AS execs
         FROM qa_task t ORDER BY t.id`,
    );

    return r.rows.every((t) => t.ok) ? r.rows : null;
  };

  return waitFor('every task done', () => read(s.db.pool), 60_000, 100, s.logs);
}

describe('fault regressions with real agents', { concurrency: false }, () => {
  // S07: an agent paused (SIGSTOP) past nodeDeadAfterMs is taken for dead and its tasks are
  // relaunched elsewhere, but its worker processes were not paused with it: each stops by itself
  // once its agent is silent for half of nodeDeadAfterMs, so no task runs twice at once.
  test('S07: an agent paused past the death limit: its running task is stopped before it runs elsewhere', async () => {
    const s = await setupQa([[1, 'sleep:8000']]);
    const paused = s.start('pa', 1);
    const { pid } = await running(s, 1, 'pa.1');
    const other = s.start('pb', 1);
    await statusUrl(other);

    process.kill(paused.pid, 'SIGSTOP');
    let maxAlive = 0;
    try {
      await waitFor(
        'the task running on pb',
        async () => {
          const r = await s.db.pool.query<{ pid: number; worker: string }>(
            'SELECT pid, worker FROM qa_exec_log WHERE task_id = 1 AND t_end IS NULL',
          );
          maxAlive = Math.max(maxAlive, r.rows.filter((x) => isRunning(x.pid)).length);

          return r.rows.some((x) => x.worker === 'pb.1');
        },
        30_000,
        25,
        s.logs,
      );
      assert.ok(!isRunning(pid), "pa's worker stopped its task");
    } finally {
      process.kill(paused.pid, 'SIGCONT');
    }

    const [task] = await allDone(s);
    assert.equal(maxAlive, 1, 'the task ran on two nodes at once');
    assert.deepEqual([task.tries, task.execs], [2, ['pa.1', 'pb.1']]);
    assert.ok(logged(paused, 'agent silent; worker stops so its tasks cannot run twice'));
    assert.equal(paused.child.exitCode, null, 'the resumed agent runs on');
    assert.deepEqual(await invariantViolations(s.db.pool), []);
  });

  // Fixed in 5ee05e6 ("workers die with their agent"): a worker whose agent is gone has no
  // supervisor, and the dispatcher will relaunch its task elsewhere.
  test('an agent SIGKILLed alone: its worker stops the running task at once', async () => {
    const s = await setupQa([[1, 'sleep:60000']]);
    const agent = s.start('wa', 1);
    const { pid } = await running(s, 1, 'wa.1');

    process.kill(agent.pid, 'SIGKILL');
    await agent.exited;
    // The task would run for a minute: a worker gone well before that stopped it.
    await waitFor('the orphaned worker to exit', () => !isRunning(pid), 20_000, 50, s.logs);

    const r = await s.db.pool.query<{ ended: boolean; result: string | null }>(
      `SELECT e.t_end IS NOT NULL AS ended, t.result
         FROM qa_exec_log e JOIN qa_task t ON t.id = e.task_id WHERE e.task_id = 1`,
    );
    assert.deepEqual(r.rows, [{ ended: false, result: null }], 'the task did not run on');
  });

  // Fixed in 5ee05e6 ("start retries on DB faults"): an agent started while the database is
  // unreachable waits for it, as a supervisor would, instead of exiting.
  test('an agent started while its database is unreachable starts once it is back', async () => {
    const s = await setupQa([[1, 'sleep:0']]);
    const { proxy, url } = await StallingProxy.before(s.db.url);
    proxies.push(proxy);
    proxy.stall();
    const agent = s.start('ra', 1, url);

    await waitFor(
      'a failed start, retried',
      () => logged(agent, 'agent start failed; retrying') || agent.child.exitCode !== null,
      30_000,
      100,
      s.logs,
    );
    assert.equal(agent.child.exitCode, null, `the agent is still running\n${s.logs()}`);

    proxy.resume();
    const [task] = await allDone(s);
    assert.deepEqual([task.tries, task.execs], [1, ['ra.1']]);
    assert.ok(logged(agent, 'agent started'));
  });

  // Found by a newcomer: the worker's init JSON on its command line carried the database URL,
  // password included, for any local user to read (ps). It goes in the environment now.
  test('no worker process shows the database URL on its command line', async () => {
    const s = await setupQa([[1, 'sleep:60000']]);
    const secretUrl = new URL(s.db.url);
    secretUrl.password = 'not-in-ps';
    const agent = s.start('ca', 1, secretUrl.toString());
    const { pid } = await running(s, 1, 'ca.1');
    const cmdline = readFileSync(`/proc/${pid}/cmdline`, 'utf8');
    assert.match(cmdline, /worker\/child\.js/);
    assert.doesNotMatch(cmdline, /not-in-ps|postgres:\/\//);
    agent.killGroup();
  });

  // An agent stopping while its database is gone gives up releasing its killed workers' tasks
  // after a few tries (the dispatcher releases them once the node is taken for dead) instead of
  // retrying for minutes; found by Ctrl-C on the demo, whose database had stopped first.
  test('SIGTERM while the database is gone: the agent still stops', async () => {
    const s = await setupQa([[1, 'sleep:60000']]);
    const { proxy, url } = await StallingProxy.before(s.db.url);
    proxies.push(proxy);
    const agent = s.start('ga', 1, url);
    await running(s, 1, 'ga.1');
    await proxy.close();

    const stopping = agent.term();
    const exit = await waitFor(
      'the agent to exit',
      () => Promise.race([stopping, new Promise<null>((r) => setTimeout(() => r(null), 100))]),
      30_000,
      0,
      s.logs,
    );
    assert.deepEqual(exit, { code: 0, signal: null }, s.logs());
    assert.ok(logged(agent, 'agent stopped'));
  });

  // Fixed in 3e2b9dd ("deaths judged only on a current registry read"). A dispatcher paused
  // longer than nodeDeadAfterMs, but not past its lease, wakes up with every registry heartbeat
  // it last read stale and every advert old: judged on that read, every other node is dead and
  // its running tasks are relaunched while they still run.
  test('a dispatcher paused within its lease takes no live node for dead', async () => {
    const s = await setupQa([[1, 'sleep:20000']], {
      cluster: 'deaths',
      workerFilter: '^dw\\.',
      settings: { lease: { ttlMs: 30_000, renewIntervalMs: 1000, renewDeadlineMs: 20_000 } },
    });
    const dispatcher = s.start('dd', 1);
    const ddStatus = await statusUrl(dispatcher);
    const other = s.start('dw', 1);
    const dwStatus = await statusUrl(other);
    await running(s, 1, 'dw.1');
    const view = async (url: string) =>
      (await (await fetch(`${url}/status`)).json()) as {
        role: string;
        nodes: { name: string; state: string }[];
      };
    const hears = (st: { nodes: { name: string; state: string }[] }, node: string) =>
      st.nodes.some((n) => n.name === node && n.state === 'alive');
    // Each must have heard the other's adverts: a node never heard through gossip is taken for
    // dead only at three times the limit, which this pause does not reach.
    await waitFor('dd dispatching, and dd and dw hearing each other', async () => {
      const [d, w] = await Promise.all([view(ddStatus), view(dwStatus)]);

      return d.role === 'dispatcher' && hears(d, 'dw') && hears(w, 'dd');
    });

    process.kill(dispatcher.pid, 'SIGSTOP');
    // dw reads dd's heartbeat stale; dd's last read of dw's heartbeat is about as old.
    await waitFor('dd paused twice past the death limit', async () => {
      const r = await s.db.pool.query<{ ms: number }>(
        `SELECT (extract(epoch FROM now() - heartbeat_at) * 1000)::float8 AS ms
           FROM pampa.nodes WHERE name = 'dd'`,
      );

      return r.rows[0].ms > 2 * TEST_SETTINGS.mesh.nodeDeadAfterMs;
    });
    process.kill(dispatcher.pid, 'SIGCONT');

    const [task] = await allDone(s);
    assert.deepEqual([task.tries, task.execs], [1, ['dw.1']], 'the task ran once, on dw');
    assert.ok(!logged(dispatcher, 'node declared dead', { node: 'dw' }), 'dd took dw for dead');
    assert.ok(logged(other, 'node declared dead', { node: 'dd' }), 'dw saw dd paused');
    assert.deepEqual(await invariantViolations(s.db.pool), []);
  });
});
