import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import {
  agentStatus,
  benchDatabase,
  client,
  resetBenchTables,
  startAgent,
  stopAgent,
  waitFor,
  type AgentProcess,
} from './harness.js';

const CONFIG = fileURLToPath(new URL('./failover-config.js', import.meta.url));

/**
 * Mesh formation for `n` agents on this machine: from spawning them all at once until every
 * agent's status has shown all n nodes alive (it hears each one's adverts through gossip); then
 * the time until all others show one of them gone (SIGTERM); and an idle agent's resident
 * memory (VmRSS of the agent process, its worker process not included).
 */
export async function benchMesh(
  n: number,
): Promise<{ agents: number; formSeconds: number; leaveSeconds: number; idleRssMb: number }> {
  const dbh = await benchDatabase();
  const db = client(dbh.url);
  const agents: AgentProcess[] = [];
  try {
    await resetBenchTables(db);
    const t0 = performance.now();
    for (let i = 1; i <= n; i++)
      agents.push(startAgent(CONFIG, `m${i}`, dbh.url, ['--workers', '1']));
    const registered = await waitFor(
      'every agent registered',
      async () => {
        const r = await db
          .query<{ name: string; status_url: string }>(
            `SELECT name, status_url FROM pampa.nodes
              WHERE stopped_at IS NULL AND status_url IS NOT NULL`,
          )
          .catch(() => ({ rows: [] as { name: string; status_url: string }[] }));
        return r.rows.length === n ? r.rows : false;
      },
      300_000,
      200,
    );
    const urls = registered.map((r) => r.status_url);
    // Formed: every agent has heard every other one through gossip (all n nodes 'alive' in its
    // view), each timed on its own, read every 2 s (a status read costs the agent CPU too). On
    // a small machine 30 agents keep both cores busy and an advert may come late, so a node can
    // flicker to 'suspect' now and then; requiring all views to be complete at one instant
    // would measure that flicker, not the formation.
    const formedAt = new Map<string, number>();
    await waitFor(
      'every agent to hear every other one',
      async () => {
        await Promise.all(
          urls.map(async (u) => {
            if (formedAt.has(u)) return;
            const s = await agentStatus(u);
            const alive = s ? s.nodes.filter((x) => x.state === 'alive').length : 0;
            if (alive >= n) formedAt.set(u, performance.now());
          }),
        );
        return formedAt.size === urls.length;
      },
      300_000,
      2000,
    );
    const formSeconds = (Math.max(...formedAt.values()) - t0) / 1000;

    // Leave: one agent stops (SIGTERM); timed until every other agent shows it no longer alive.
    const leaving = agents.pop()!;
    const t1 = performance.now();
    await stopAgent(leaving, 'SIGTERM');
    const left = (s: Awaited<ReturnType<typeof agentStatus>>) =>
      s !== null && s.nodes.every((x) => x.name !== leaving.name || x.state !== 'alive');
    const rest = registered.filter((r) => r.name !== leaving.name).map((r) => r.status_url);
    const seenAt = new Map<string, number>();
    await waitFor(
      'all to see the leave',
      async () => {
        await Promise.all(
          rest.map(async (u) => {
            if (!seenAt.has(u) && left(await agentStatus(u))) seenAt.set(u, performance.now());
          }),
        );
        return seenAt.size === rest.length;
      },
      120_000,
      100,
    );
    const leaveSeconds = (Math.max(...seenAt.values()) - t1) / 1000;

    await new Promise((r) => setTimeout(r, 2000));
    const proc = readFileSync(`/proc/${agents[0].child.pid}/status`, 'utf8');
    const idleRssMb = Number(/VmRSS:\s+(\d+)/.exec(proc)![1]) / 1024;

    return { agents: n, formSeconds, leaveSeconds, idleRssMb: Math.round(idleRssMb) };
  } finally {
    await Promise.all(agents.map((a) => stopAgent(a, 'SIGKILL')));
    await db.end();
    await dbh.stop();
  }
}
