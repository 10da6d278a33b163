import { fileURLToPath } from 'node:url';
import {
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
 * agent's status shows all n nodes alive (it hears each one's adverts through gossip); then
 * the time until all others show it gone (SIGTERM); and an idle agent's resident memory (VmRSS of the agent process, its
 * worker process not included).
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
    const urls = await waitFor(
      'every agent registered',
      async () => {
        const r = await db
          .query<{ status_url: string }>(
            'SELECT status_url FROM pampa.nodes WHERE stopped_at IS NULL AND status_url IS NOT NULL',
          )
          .catch(() => ({ rows: [] as { status_url: string }[] }));
        return r.rows.length === n ? r.rows.map((x) => x.status_url) : false;
      },
      300_000,
      200,
    );
    const peers = async (url: string) => {
      const res = await fetch(`${url}/status`).catch(() => null);
      return res?.ok ? ((await res.json()) as { peers: number }).peers : -1;
    };
    // Formed: every agent hears every other one through gossip (all nodes 'alive' in its view).
    const alive = async (url: string) => {
      const res = await fetch(`${url}/status`).catch(() => null);
      if (!res?.ok) return 0;
      const s = (await res.json()) as { nodes: { state: string }[] };
      return s.nodes.filter((x) => x.state === 'alive').length;
    };
    await waitFor(
      'every agent to hear every other one',
      async () => (await Promise.all(urls.map(alive))).every((k) => k >= n),
      300_000,
      250,
    );
    const formSeconds = (performance.now() - t0) / 1000;

    const leaving = agents.pop()!;
    const t1 = performance.now();
    await stopAgent(leaving, 'SIGTERM');
    const reachable = await Promise.all(urls.map(async (u) => ((await peers(u)) >= 0 ? u : null)));
    const rest = reachable.filter((u): u is string => u !== null);
    await waitFor(
      'all to see the leave',
      async () => (await Promise.all(rest.map(alive))).every((k) => k === n - 1),
      120_000,
      100,
    );
    const leaveSeconds = (performance.now() - t1) / 1000;

    await new Promise((r) => setTimeout(r, 2000));
    const { readFileSync } = await import('node:fs');
    const status = readFileSync(`/proc/${agents[0].child.pid}/status`, 'utf8');
    const idleRssMb = Number(/VmRSS:\s+(\d+)/.exec(status)![1]) / 1024;

    return { agents: n, formSeconds, leaveSeconds, idleRssMb: Math.round(idleRssMb) };
  } finally {
    await Promise.all(agents.map((a) => stopAgent(a, 'SIGKILL')));
    await db.end();
    await dbh.stop();
  }
}
