import '../src/polyfills.js';
import assert from 'node:assert/strict';
import { after, describe, test } from 'node:test';
import type { ClusterStatus } from '../src/status/types.js';
import { cleanUpQa, invariantViolations, setupQa, type QaSetup } from './helpers/core-fixture.js';
import { StallingProxy } from './helpers/db-proxy.js';
import {
  TEST_SETTINGS,
  isRunning,
  logged,
  statusUrl,
  waitFor,
  type AgentProcess,
} from './helpers/fixture.js';

/**
 * Fault kind "overload self-fence". An agent fences (kills its running tasks) when its registry
 * heartbeat has been lost for ¾·nodeDeadAfterMs AND it has lost every peer: only then may the
 * others declare it dead and run its tasks again. Its database goes through a proxy that the
 * test stalls, so its heartbeat, lease and task writes hang, as on an overloaded or cut-off node.
 */

const CLUSTER = 'fence';
const DEAD_MS = TEST_SETTINGS.mesh.nodeDeadAfterMs;
const FENCE_LOG = 'registry heartbeat lost; stopping running tasks';

interface Setup extends QaSetup {
  proxy: StallingProxy;
  /** The agent behind the proxy, and the pid of its worker running task 1. */
  stalled: AgentProcess;
  workerPid: number;
  /** Its peer, straight on the database, once connected. */
  peer?: AgentProcess;
  peerStatus?: () => Promise<ClusterStatus>;
}

const proxies: StallingProxy[] = [];
after(async () => {
  await cleanUpQa();
  await Promise.all(proxies.map((p) => p.close()));
});

/**
 * Task 1 (`sleep:20000`) running on agent fa, whose database is behind a proxy; with `peer`,
 * agent fb connected to fa in the mesh and seeing it alive.
 */
async function setup(peer = true): Promise<Setup> {
  const s = await setupQa([[1, 'sleep:20000']], { cluster: CLUSTER });
  const { proxy, url } = await StallingProxy.before(s.db.url);
  proxies.push(proxy);

  const stalled = s.start('fa', 1, url);
  const exec = await waitFor(
    'task 1 running on fa',
    async () =>
      (
        await s.db.pool.query<{ pid: number }>(
          `SELECT pid FROM qa_exec_log WHERE task_id = 1 AND worker = 'fa.1' AND t_end IS NULL`,
        )
      ).rows[0],
    30_000,
    50,
    s.logs,
  );
  if (!peer) return { ...s, proxy, stalled, workerPid: exec.pid };

  const fb = s.start('fb', 1);
  const fbUrl = await statusUrl(fb);
  const peerStatus = async () => (await (await fetch(`${fbUrl}/status`)).json()) as ClusterStatus;
  await waitFor(
    'fb connected to fa and seeing it alive',
    async () => {
      const st = await peerStatus().catch(() => null);

      return st?.peers === 1 && st.nodes.some((n) => n.name === 'fa' && n.state === 'alive');
    },
    30_000,
    100,
    s.logs,
  );

  return { ...s, proxy, stalled, workerPid: exec.pid, peer: fb, peerStatus };
}

/** Age of fa's registry heartbeat by the database clock (ms). */
async function heartbeatAgeMs(s: Setup): Promise<number> {
  const r = await s.db.pool.query<{ ms: number }>(
    `SELECT (extract(epoch FROM now() - heartbeat_at) * 1000)::float8 AS ms
       FROM pampa.nodes WHERE cluster = $1 AND name = 'fa'`,
    [CLUSTER],
  );

  return r.rows[0].ms;
}

/** Twice the death limit by the database clock: fa's own fence limit (¾ of it) is long past. */
async function heartbeatLongLost(s: Setup): Promise<void> {
  await waitFor('fa heartbeat twice past the limit', async () => {
    return (await heartbeatAgeMs(s)) > 2 * DEAD_MS;
  });
}

async function killPeer(s: Setup): Promise<void> {
  s.peer!.killGroup();
  await s.peer!.exited;
}

async function fenced(s: Setup, timeoutMs: number): Promise<void> {
  const what = "fa's worker running task 1 killed by the fence";
  await waitFor(
    what,
    () => !isRunning(s.workerPid) && logged(s.stalled, FENCE_LOG),
    timeoutMs,
    50,
    s.logs,
  );
}

/** Task 1 once it succeeded: its tries and the worker pid of each execution. */
async function task1Done(s: Setup): Promise<{ ok: boolean; tries: number; pids: number[] }> {
  const read = async () => {
    const task = await s.db.pool.query<{ ok: boolean | null; tries: number }>(
      'SELECT ok, rsv_tries AS tries FROM qa_task WHERE id = 1',
    );
    const execs = await s.db.pool.query<{ pid: number }>(
      'SELECT pid FROM qa_exec_log WHERE task_id = 1 ORDER BY id',
    );
    const { ok, tries } = task.rows[0];

    return ok === true ? { ok, tries, pids: execs.rows.map((r) => r.pid) } : null;
  };

  return waitFor('task 1 done', read, 60_000, 100, s.logs);
}

describe('self-fencing of an agent with its heartbeat lost', { concurrency: false }, () => {
  test(
    'heartbeat late but peers connected (an overloaded node): its running task keeps running',
    { timeout: 120_000 },
    async () => {
      const s = await setup();
      s.proxy.stall();
      await heartbeatLongLost(s);

      const seen = await s.peerStatus!();
      assert.equal(seen.peers, 1, 'fa still connected to fb');
      assert.equal(seen.nodes.find((n) => n.name === 'fa')?.state, 'alive', 'fb hears fa');
      assert.ok(isRunning(s.workerPid), `fa's worker running task 1 is alive\n${s.logs()}`);

      s.proxy.resume();
      const done = await task1Done(s);
      assert.deepEqual(done, { ok: true, tries: 1, pids: [s.workerPid] }, 'ran once, on fa');
      assert.ok(!logged(s.stalled, FENCE_LOG), 'fa did not fence');
      assert.ok(!logged(s.peer!, 'node declared dead'), 'fb never took fa for dead');
      assert.deepEqual(await invariantViolations(s.db.pool), []);
    },
  );

  test(
    'heartbeat late on an agent that never had a peer (alone in its cluster): no fence',
    { timeout: 120_000 },
    async () => {
      const s = await setup(false);
      s.proxy.stall();
      await heartbeatLongLost(s);
      assert.ok(isRunning(s.workerPid), `fa's worker running task 1 is alive\n${s.logs()}`);

      s.proxy.resume();
      const done = await task1Done(s);
      assert.deepEqual(done, { ok: true, tries: 1, pids: [s.workerPid] }, 'ran once, on fa');
      assert.ok(!logged(s.stalled, FENCE_LOG), 'fa did not fence');
    },
  );

  test(
    'database lost, then its last peer: its running task is stopped, and runs again later',
    { timeout: 120_000 },
    async () => {
      const s = await setup();
      s.proxy.stall();
      await heartbeatLongLost(s);
      assert.ok(isRunning(s.workerPid), 'not fenced while fb is connected');
      await killPeer(s);

      await fenced(s, 30_000);
      assert.equal(s.stalled.child.exitCode, null, 'fa itself runs on');

      // Back on the database, fa gives the task back and runs it again (quickly, this time).
      await s.db.pool.query(`UPDATE qa_task SET payload = 'sleep:0' WHERE id = 1`);
      s.proxy.resume();
      const done = await task1Done(s);
      assert.equal(done.tries, 2);
      assert.deepEqual(done.pids.length, 2);
      assert.equal(done.pids[0], s.workerPid);
      assert.ok(logged(s.stalled, 'registry heartbeat back'));
      assert.deepEqual(await invariantViolations(s.db.pool), []);
    },
  );

  // A partitioned node loses the database and its peers in the same instant: it must still know
  // that it had a peer, though no fence check saw one while its heartbeat was late.
  test(
    'database and every peer lost at once (a partitioned node): its running task is stopped',
    { timeout: 120_000 },
    async () => {
      const s = await setup();
      s.proxy.stall();
      await killPeer(s);

      await fenced(s, 20_000);
    },
  );
});
