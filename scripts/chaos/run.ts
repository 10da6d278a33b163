import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { pino, type Logger } from 'pino';
import { migrateQaJob } from '../../test/helpers/fixture.js';
import { runChecks, type CheckResult, type PauseFacts, type RunFacts } from './checks.js';
import { CLUSTER, failText, schemaSql, writeConfig } from './fixture.js';
import { Fleet } from './fleet.js';
import { startRestartablePostgres } from './pg.js';

export interface ChaosOptions {
  agents: number;
  tasks: number;
  /** Worker processes per agent. */
  workers: number;
  /** Mean ms between SIGKILLs (each wait is drawn from 0.5×–1.5× this). */
  killEveryMs: number;
  /** How long the dispatcher stays SIGSTOPped (must exceed the lease ttl). */
  stopMs: number;
  leaseTtlMs: number;
  relaunchScanMs: number;
  nodeDeadAfterMs: number;
  maxJobDurationMinutes: number;
  maxTryTimes: number;
  /** The run is abandoned (and fails) when not every task is closed by then. */
  timeoutMs: number;
  seed: number;
  /** Progress lines on stderr. */
  progress: boolean;
  log?: Logger;
}

export const DEFAULTS: ChaosOptions = {
  agents: 4,
  tasks: 20_000,
  workers: 4,
  killEveryMs: 4000,
  stopMs: 3000,
  leaseTtlMs: 1500,
  relaunchScanMs: 500,
  nodeDeadAfterMs: 4000,
  maxJobDurationMinutes: 0.05,
  maxTryTimes: 3,
  timeoutMs: 20 * 60_000,
  seed: 1,
  progress: true,
};

export interface ChaosSummary {
  pass: boolean;
  options: Omit<ChaosOptions, 'log'>;
  seconds: number;
  tasks: { total: number; sleepShort: number; sleepLong: number; throwing: number };
  outcome: { succeeded: number; failed: number; notClosed: number };
  executions: number;
  kills: {
    total: number;
    dispatcher: number;
    at: { node: string; agent: string | null; dispatcher: boolean; at: string }[];
  };
  sigstop: {
    agent: string;
    stoppedMs: number;
    epochBefore: number | null;
    takeover: { holder: string; epoch: number; afterMs: number } | null;
  } | null;
  pgRestart: { downMs: number; at: string } | null;
  agentRuns: number;
  /** From the first spawn until every agent logged "agent started". */
  allUpMs: number;
  /** Median time from an agent's spawn to its "agent started". */
  medianStartMs: number;
  workerDeathsNotByHarness: number;
  checks: CheckResult[];
  logDir: string;
}

/** mulberry32: a small seeded PRNG, so a run's task mix and kill choices can be repeated. */
function rng(seed: number): () => number {
  let a = seed >>> 0;

  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);

    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function median(v: number[]): number {
  const s = [...v].sort((a, b) => a - b);

  return s.length ? s[Math.floor(s.length / 2)] : NaN;
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/**
 * The chaos run: N agents over T tasks of mixed length while the harness SIGKILLs a random
 * agent's process group (every third kill is the lease holder's), SIGSTOPs the dispatcher past
 * its lease once (at 25 % of the tasks closed) and restarts PostgreSQL once (at 50 %). Then the
 * agents are stopped with SIGTERM and the invariants checked.
 */
export async function runChaos(options: Partial<ChaosOptions> = {}): Promise<ChaosSummary> {
  const o: ChaosOptions = { ...DEFAULTS, ...options };
  if (o.stopMs <= o.leaseTtlMs) throw new Error('--stop-ms must exceed the lease ttl');
  const log = o.log ?? pino({ level: 'warn' }, pino.destination(2));
  const say = (msg: string) => {
    if (o.progress)
      process.stderr.write(`[chaos ${new Date().toISOString().slice(11, 23)}] ${msg}\n`);
  };
  const random = rng(o.seed);
  const dir = mkdtempSync(join(tmpdir(), 'pampa-chaos-'));
  const server = await startRestartablePostgres(log.child({ component: 'chaos-pg' }));
  const db = new pg.Pool({
    connectionString: server.url,
    max: 4,
    application_name: 'chaos-harness',
  });
  db.on('error', () => undefined);
  let fleet: Fleet | undefined;
  try {
    await db.query(schemaSql('pampa'));
    await migrateQaJob(db, log);
    // The task mix: 70 % sleep 0–20 ms, 25 % sleep 50–500 ms, 5 % throw.
    const ids: number[] = [];
    const payloads: string[] = [];
    const mix = { sleepShort: 0, sleepLong: 0, throwing: 0 };
    for (let i = 1; i <= o.tasks; i++) {
      const r = random();
      ids.push(i);
      if (r < 0.7) {
        payloads.push(`sleep:${Math.floor(random() * 21)}`);
        mix.sleepShort++;
      } else if (r < 0.95) {
        payloads.push(`sleep:${50 + Math.floor(random() * 451)}`);
        mix.sleepLong++;
      } else {
        payloads.push(`fail:${failText(i)}`);
        mix.throwing++;
      }
    }
    await db.query(
      'INSERT INTO qa_task (id, payload) SELECT * FROM unnest($1::bigint[], $2::text[])',
      [ids, payloads],
    );
    const config = writeConfig(dir, {
      maxJobDurationMinutes: o.maxJobDurationMinutes,
      maxTryTimes: o.maxTryTimes,
      queueSize: 5,
      leaseTtlMs: o.leaseTtlMs,
      relaunchScanMs: o.relaunchScanMs,
      nodeDeadAfterMs: o.nodeDeadAfterMs,
    });
    fleet = new Fleet({ config, url: server.url, workers: o.workers, dir, restartDelayMs: 500 });
    const f = fleet;
    const nodes = Array.from({ length: o.agents }, (_, i) => `n${i + 1}`);
    const t0 = Date.now();
    for (const n of nodes) f.start(n);
    say(`${o.tasks} tasks, ${o.agents} agents × ${o.workers} workers; logs in ${dir}`);

    const holder = async (): Promise<{ holder: string; epoch: number } | null> => {
      const r = await db
        .query<{ holder: string; epoch: string }>(
          `SELECT holder, epoch::text FROM pampa.leases WHERE cluster = $1 AND expires_at > now()`,
          [CLUSTER],
        )
        .catch(() => ({ rows: [] as { holder: string; epoch: string }[] }));
      const row = r.rows[0];

      return row?.holder ? { holder: row.holder, epoch: Number(row.epoch) } : null;
    };
    const closed = async (): Promise<number | null> => {
      const r = await db
        .query<{ n: number }>('SELECT count(*)::int AS n FROM qa_task WHERE ended_at IS NOT NULL')
        .catch(() => null);

      return r ? r.rows[0].n : null;
    };

    const kills: { node: string; agent: string | null; dispatcher: boolean; at: number }[] = [];
    let pause: PauseFacts | null = null;
    let pausedNode: string | null = null;
    let pgRestart: { downAt: number; upAt: number } | null = null;
    let done = false;
    let lastClosed = 0;

    // SIGSTOP of the dispatcher's agent process (not its workers), held past the lease ttl.
    // Returns false, to be tried again shortly, while no live agent holds the lease (the holder
    // was just killed, say).
    const doPause = async (): Promise<boolean> => {
      const h = await holder();
      const run = h ? f.byAgentId(h.holder) : undefined;
      if (!h || !run || run.diedAt !== null) return false;
      pausedNode = run.node;
      const stopAt = Date.now();
      process.kill(run.pid, 'SIGSTOP');
      let takeover: PauseFacts['takeover'] = null;
      while (Date.now() - stopAt < o.stopMs) {
        const now = await holder();
        if (!takeover && now && now.holder !== h.holder && now.epoch > h.epoch)
          takeover = { holder: now.holder, epoch: now.epoch, at: Date.now() };
        await sleep(50);
      }
      process.kill(run.pid, 'SIGCONT');
      const contAt = Date.now();
      pausedNode = null;
      pause = { agentId: h.holder, stopAt, contAt, epochBefore: h.epoch, takeover };
      say(
        `SIGSTOP ${h.holder} (epoch ${h.epoch}) for ${contAt - stopAt} ms; take-over: ${takeover ? `${takeover.holder} epoch ${takeover.epoch} after ${takeover.at - stopAt} ms` : 'none'}`,
      );

      return true;
    };
    const doRestart = async (): Promise<void> => {
      say('restarting PostgreSQL (fast shutdown)');
      pgRestart = await server.restart(500);
      say(`PostgreSQL back after ${pgRestart.upAt - pgRestart.downAt} ms down`);
    };

    // The chaos starts once every agent is up (they start together, on a loaded machine).
    const upDeadline = Date.now() + 60_000;
    while (nodes.some((n) => !f.current(n)?.upAt) && Date.now() < upDeadline) await sleep(50);
    const allUpMs = Date.now() - t0;
    say(`all agents up after ${allUpMs} ms`);

    const chaos = (async () => {
      let paused = false;
      let restarted = false;
      let next = Date.now() + o.killEveryMs * (0.5 + random());
      while (!done) {
        await sleep(100);
        if (done) break;
        const frac = lastClosed / o.tasks;
        if (!paused && frac >= 0.25) {
          paused = await doPause();
          continue;
        }
        if (!restarted && paused && frac >= 0.5) {
          restarted = true;
          await doRestart();
          continue;
        }
        if (Date.now() < next) continue;
        next = Date.now() + o.killEveryMs * (0.5 + random());
        // Every third kill is the lease holder's agent; the others pick at random. Only agents
        // whose id is known (it names their connections) and that are not paused.
        const candidates = nodes.filter((n) => {
          const r = f.current(n);
          return r && r.agentId && n !== pausedNode;
        });
        if (candidates.length === 0) continue;
        const h = await holder();
        const holderNode = h ? f.byAgentId(h.holder)?.node : undefined;
        let victim = candidates[Math.floor(random() * candidates.length)];
        if (kills.length % 3 === 1 && holderNode && candidates.includes(holderNode))
          victim = holderNode;
        const run = await f.kill(victim);
        if (!run) continue;
        const dispatcher = h?.holder === run.agentId;
        kills.push({ node: victim, agent: run.agentId, dispatcher, at: run.diedAt ?? Date.now() });
        say(
          `SIGKILL ${run.agentId}${dispatcher ? ' (dispatcher)' : ''}; ${lastClosed}/${o.tasks} closed`,
        );
      }
    })();

    // Wait until every task is closed.
    let lastSay = 0;
    let timedOut = false;
    for (;;) {
      const n = await closed();
      if (n !== null) lastClosed = n;
      if (lastClosed >= o.tasks && pgRestart && pause) break;
      if (Date.now() - t0 > o.timeoutMs) {
        timedOut = true;
        say(`timed out with ${lastClosed}/${o.tasks} closed`);
        break;
      }
      if (Date.now() - lastSay > 5000) {
        lastSay = Date.now();
        say(`${lastClosed}/${o.tasks} closed`);
      }
      await sleep(200);
    }
    done = true;
    await chaos;
    const seconds = (Date.now() - t0) / 1000;
    say(
      `${timedOut ? 'gave up' : 'all closed'} after ${seconds.toFixed(1)} s; stopping the agents (SIGTERM)`,
    );
    // Let the last runs' restarts happen and finish starting (an agent's SIGTERM handler is
    // installed during its start), so every process is accounted for, then stop them.
    await sleep(1000);
    const settle = Date.now() + 60_000;
    while (nodes.some((n) => !f.current(n)?.upAt) && Date.now() < settle) await sleep(50);
    await f.stopAll(15_000);

    const runs: RunFacts[] = f.runs.map((r) => ({
      node: r.node,
      agentId: r.agentId,
      spawnAt: r.spawnAt,
      diedAt: r.diedAt,
      cause: r.cause,
      upAt: r.upAt,
      code: r.code,
      signal: r.signal,
      workerDeaths: r.workerDeaths.map((d) => ({ at: d.at, worker: d.worker })),
    }));
    const checks = await runChecks(db, {
      runs,
      pause,
      maxTries: o.maxTryTimes,
      tasks: o.tasks,
      kills: kills.length,
      dispatcherKills: kills.filter((k) => k.dispatcher).length,
      pgRestart,
    });
    const counts = (
      await db.query<{ ok: number; failed: number; open: number; execs: number }>(
        `SELECT count(*) FILTER (WHERE ended_at IS NOT NULL AND ok)::int AS ok,
                count(*) FILTER (WHERE ended_at IS NOT NULL AND ok IS NOT TRUE)::int AS failed,
                count(*) FILTER (WHERE ended_at IS NULL)::int AS open,
                (SELECT count(*) FROM chaos_exec)::int AS execs
           FROM qa_task`,
      )
    ).rows[0];
    const p = pause as PauseFacts | null;
    const restart = pgRestart as { downAt: number; upAt: number } | null;
    const { log: _log, ...plain } = o;
    void _log;

    return {
      pass: !timedOut && checks.every((c) => c.pass),
      options: plain,
      seconds,
      tasks: { total: o.tasks, ...mix },
      outcome: { succeeded: counts.ok, failed: counts.failed, notClosed: counts.open },
      executions: counts.execs,
      kills: {
        total: kills.length,
        dispatcher: kills.filter((k) => k.dispatcher).length,
        at: kills.map((k) => ({ ...k, at: new Date(k.at).toISOString() })),
      },
      sigstop: p
        ? {
            agent: p.agentId,
            stoppedMs: p.contAt - p.stopAt,
            epochBefore: p.epochBefore,
            takeover: p.takeover
              ? {
                  holder: p.takeover.holder,
                  epoch: p.takeover.epoch,
                  afterMs: p.takeover.at - p.stopAt,
                }
              : null,
          }
        : null,
      pgRestart: restart
        ? { downMs: restart.upAt - restart.downAt, at: new Date(restart.downAt).toISOString() }
        : null,
      agentRuns: f.runs.length,
      allUpMs,
      medianStartMs: median(f.runs.filter((r) => r.upAt).map((r) => r.upAt! - r.spawnAt)),
      workerDeathsNotByHarness: f.runs.reduce((a, r) => a + r.workerDeaths.length, 0),
      checks,
      logDir: dir,
    };
  } finally {
    fleet?.killEverything();
    await db.end().catch(() => undefined);
    await server.stop().catch(() => undefined);
  }
}

/** The summary as text: one PASS/FAIL line per check with its counts, then the evidence. */
export function formatSummary(s: ChaosSummary): string {
  const lines: string[] = [];
  lines.push(
    `chaos: ${s.tasks.total} tasks (${s.tasks.sleepShort} short, ${s.tasks.sleepLong} long, ${s.tasks.throwing} throwing), ` +
      `${s.options.agents} agents × ${s.options.workers} workers, ${s.seconds.toFixed(1)} s`,
  );
  lines.push(
    `  outcome: ${s.outcome.succeeded} succeeded, ${s.outcome.failed} failed, ${s.outcome.notClosed} not closed; ${s.executions} executions`,
  );
  lines.push(
    `  chaos: ${s.kills.total} SIGKILLs (${s.kills.dispatcher} of the dispatcher), ${s.agentRuns} agent runs, ` +
      `${s.workerDeathsNotByHarness} worker deaths not caused by the harness; agents up after ${s.allUpMs} ms, ` +
      `median agent start ${s.medianStartMs} ms`,
  );
  if (s.sigstop)
    lines.push(
      `  SIGSTOP: ${s.sigstop.agent} (epoch ${s.sigstop.epochBefore}) for ${s.sigstop.stoppedMs} ms; take-over: ` +
        (s.sigstop.takeover
          ? `${s.sigstop.takeover.holder} epoch ${s.sigstop.takeover.epoch} after ${s.sigstop.takeover.afterMs} ms`
          : 'none'),
    );
  if (s.pgRestart)
    lines.push(`  PostgreSQL restart: down ${s.pgRestart.downMs} ms at ${s.pgRestart.at}`);
  for (const c of s.checks) {
    const counts = Object.entries(c.counts)
      .map(([k, v]) => `${k}=${v}`)
      .join(', ');
    lines.push(`${c.pass ? 'PASS' : 'FAIL'}  ${c.name}  [${counts}]`);
    for (const e of c.evidence) lines.push(`        ${e}`);
  }
  lines.push(s.pass ? 'RESULT: PASS' : 'RESULT: FAIL');

  return lines.join('\n');
}
