import '../src/polyfills.js';
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { createTestDatabase, type TestDatabase } from './helpers/database.js';
import {
  QA_SCHEMA,
  killGroup,
  startAgentProc,
  stopAll,
  waitUntil,
  writeQaConfig,
  type AgentProc,
} from './helpers/agents.js';

/** Real agent processes on 127.0.0.1 forming a mesh over one database (issues 3 and 4). */
describe('agents in a mesh', () => {
  let db: TestDatabase;
  const agents: AgentProc[] = [];

  before(async () => {
    db = await createTestDatabase();
    await db.pool.query(QA_SCHEMA);
  });
  after(async () => {
    await stopAll(agents);
    await db.drop();
  });

  const count = async (sql: string) => Number((await db.pool.query(sql)).rows[0].n);
  const overlaps = () =>
    count(`SELECT count(*) AS n FROM qa_exec_log a JOIN qa_exec_log b ON a.task_id = b.task_id AND a.ctid < b.ctid
      AND tstzrange(a.t_start, coalesce(a.t_end, 'infinity')) && tstzrange(b.t_start, coalesce(b.t_end, 'infinity'))`);

  it('3 agents share 20,000 rows, a 4th joins mid-run, SIGTERM hands work back (S19), SIGKILL of the dispatcher fails over (S01)', async () => {
    const config = writeQaConfig('mesh1');
    await db.pool.query(
      `INSERT INTO qa_task (id, payload) SELECT g, 'sleep:1' FROM generate_series(1, 20000) g`,
    );
    for (const n of ['a1', 'a2', 'a3'])
      agents.push(startAgentProc(config, n, db.url, ['--workers', '2']));

    // Every agent gets tasks.
    await waitUntil(
      'all three agents to run tasks',
      async () =>
        (await count(`SELECT count(DISTINCT split_part(worker, '.', 1)) AS n FROM qa_exec_log`)) ===
        3,
    );

    // A 4th agent started mid-run receives tasks.
    agents.push(startAgentProc(config, 'a4', db.url, ['--workers', '2']));
    await waitUntil(
      'the 4th agent to run tasks',
      async () =>
        (await count(`SELECT count(*) AS n FROM qa_exec_log WHERE worker LIKE 'a4.%'`)) > 0,
    );

    // SIGTERM: the agent drains and exits 0; it holds nothing afterwards.
    const leaving = agents.find((a) => a.name === 'a2')!;
    leaving.child.kill('SIGTERM');
    const exit = await leaving.exit;
    assert.equal(exit.code, 0);
    assert.equal(
      await count(
        `SELECT count(*) AS n FROM qa_task WHERE rsv_by LIKE 'a2.%' AND ended_at IS NULL`,
      ),
      0,
    );

    // SIGKILL of the dispatcher: another agent takes the lease and work goes on.
    const lease = await db.pool.query(
      `SELECT holder, epoch FROM pampa.leases WHERE cluster = 'mesh1'`,
    );
    const holderNode = String(lease.rows[0].holder).split('-')[0];
    const victim = agents.find((a) => a.name === holderNode && a.child.exitCode === null)!;
    killGroup(victim);
    await victim.exit;
    // The killed agent's executions never record their end: they ended with the process.
    await db.pool.query(
      `UPDATE qa_exec_log SET t_end = clock_timestamp() WHERE t_end IS NULL AND worker LIKE $1`,
      [`${victim.name}.%`],
    );
    await waitUntil(
      'a new dispatcher',
      async () => {
        const r = await db.pool.query(
          `SELECT holder, epoch FROM pampa.leases WHERE cluster = 'mesh1' AND expires_at > now()`,
        );
        return r.rows.length === 1 && Number(r.rows[0].epoch) > Number(lease.rows[0].epoch);
      },
      15_000,
    );

    await waitUntil(
      'every row closed',
      async () => (await count(`SELECT count(*) AS n FROM qa_task WHERE ended_at IS NULL`)) === 0,
      120_000,
    );
    assert.equal(await count(`SELECT count(*) AS n FROM qa_task WHERE ok IS NOT TRUE`), 0);
    assert.equal(
      await count(`SELECT count(*) AS n FROM qa_task WHERE rsv_tries > 3 OR rsv_tries < 1`),
      0,
    );
    assert.equal(await overlaps(), 0, 'no task ran twice at once');
    assert.equal(
      await count(`SELECT count(*) AS n FROM qa_task WHERE note IS DISTINCT FROM 'keep-me'`),
      0,
    );
    // Rows the killed agent was running were started twice at most; none lost.
    assert.equal(
      await count(
        `SELECT count(*) AS n FROM (SELECT task_id FROM qa_exec_log GROUP BY 1 HAVING count(*) > 3) x`,
      ),
      0,
    );
  });

  it('S07: a dispatcher paused past its lease writes nothing until it wins again', async () => {
    const config = writeQaConfig('mesh3');
    await db.pool.query(`DELETE FROM qa_task; DELETE FROM qa_exec_log; DELETE FROM qa_write_log`);
    await db.pool.query(
      `INSERT INTO qa_task (id, payload) SELECT g, 'sleep:30' FROM generate_series(1, 800) g`,
    );
    const group = ['s1', 's2', 's3'].map((n) =>
      startAgentProc(config, n, db.url, ['--workers', '1']),
    );
    agents.push(...group);
    const lease = await waitUntil('a holder', async () => {
      const r = await db.pool.query(
        `SELECT holder, epoch FROM pampa.leases WHERE cluster = 'mesh3' AND expires_at > now()`,
      );
      return r.rows[0] as { holder: string; epoch: string } | undefined;
    });
    const victim = group.find((a) => a.name === lease.holder.split('-')[0])!;
    const stoppedAt = (await db.pool.query('SELECT now() AS t')).rows[0].t as Date;
    process.kill(victim.child.pid!, 'SIGSTOP');
    await waitUntil(
      'another holder',
      async () => {
        const r = await db.pool.query(
          `SELECT holder, epoch FROM pampa.leases WHERE cluster = 'mesh3'`,
        );
        return r.rows[0].holder !== lease.holder && Number(r.rows[0].epoch) > Number(lease.epoch);
      },
      15_000,
    );
    await new Promise((r) => setTimeout(r, 500));
    process.kill(victim.child.pid!, 'SIGCONT');
    await new Promise((r) => setTimeout(r, 2500));
    const after = await db.pool.query(`SELECT holder FROM pampa.leases WHERE cluster = 'mesh3'`);
    assert.notEqual(
      after.rows[0].holder,
      lease.holder,
      'the paused agent did not win the lease back',
    );
    const stale = await db.pool.query(
      `SELECT count(*)::int AS n FROM qa_write_log WHERE app = $1 AND old_by IS NULL AND new_by IS NOT NULL AND at > $2`,
      [lease.holder, stoppedAt],
    );
    assert.equal(stale.rows[0].n, 0, 'no reservation written by the paused ex-holder');
    await waitUntil(
      'every row closed',
      async () => (await count(`SELECT count(*) AS n FROM qa_task WHERE ended_at IS NULL`)) === 0,
      120_000,
    );
    assert.equal(await overlaps(), 0);
  });

  it('S10: database connections killed again and again: no agent crashes, work resumes', async () => {
    const config = writeQaConfig('mesh4');
    await db.pool.query(`DELETE FROM qa_task; DELETE FROM qa_exec_log; DELETE FROM qa_write_log`);
    await db.pool.query(
      `INSERT INTO qa_task (id, payload) SELECT g, 'sleep:20' FROM generate_series(1, 600) g`,
    );
    const group = ['d1', 'd2', 'd3'].map((n) =>
      startAgentProc(config, n, db.url, ['--workers', '1']),
    );
    agents.push(...group);
    await waitUntil(
      'work to start',
      async () => (await count(`SELECT count(*) AS n FROM qa_exec_log`)) > 20,
    );
    for (let i = 0; i < 15; i++) {
      await db.pool.query(
        `SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name LIKE 'd_-%' AND pid <> pg_backend_pid()`,
      );
      await new Promise((r) => setTimeout(r, 300));
    }
    for (const a of group) assert.equal(a.child.exitCode, null, `${a.name} is still running`);
    await waitUntil(
      'every row closed',
      async () => (await count(`SELECT count(*) AS n FROM qa_task WHERE ended_at IS NULL`)) === 0,
      120_000,
    );
    for (const a of group) assert.equal(a.child.exitCode, null, `${a.name} is still running`);
    assert.equal(await count(`SELECT count(*) AS n FROM qa_task WHERE rsv_tries > 3`), 0);
    assert.equal(
      await count(`SELECT count(*) AS n FROM qa_task WHERE rsv_by IS NOT NULL AND rsv_at IS NULL`),
      0,
    );
    assert.equal(await overlaps(), 0);
  });

  it('an agent without the cluster key cannot join', async () => {
    const key = 'ab'.repeat(32);
    const config = writeQaConfig(
      'mesh2',
      `mesh: { clusterKey: '${key}', advertIntervalMs: 300, advertTtlMs: 1500 },`,
    );
    const a = startAgentProc(config, 'k1', db.url, ['--workers', '1']);
    const b = startAgentProc(config, 'k2', db.url, ['--workers', '1']);
    const outsider = startAgentProc(config, 'k3', db.url, ['--workers', '1'], {
      PAMPA_CLUSTER_KEY: 'cd'.repeat(32),
    });
    agents.push(a, b, outsider);
    const peersOf = async (p: AgentProc) => {
      const line = p.logs.find((l) => l.msg === 'agent started');
      if (!line) return null;
      const res = await fetch(`${String(line.statusUrl)}/status`).catch(() => null);
      return res && res.ok ? ((await res.json()) as { peers: number }).peers : null;
    };
    await waitUntil(
      'k1 and k2 to connect',
      async () => (await peersOf(a)) === 1 && (await peersOf(b)) === 1,
      30_000,
    );
    // Give the outsider time to dial the others from the registry, then check it is still alone.
    await new Promise((r) => setTimeout(r, 3000));
    assert.equal(await peersOf(outsider), 0);
    assert.equal(await peersOf(a), 1);
  });
});
