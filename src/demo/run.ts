import { spawn, type ChildProcess } from 'node:child_process';
import { createWriteStream, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import cliProgress from 'cli-progress';
import { loadConfig } from '../config/load.js';
import { startLocalPostgres, type LocalPostgres } from '../db/launcher.js';
import { migrate } from '../db/migrations.js';
import { createPool } from '../db/pool.js';
import { inspectJobTable } from '../db/table.js';
import { migrateJobTable } from '../db/user-table.js';
import { quoteIdent } from '../db/quote.js';
import { countTasks } from '../dispatch/statements.js';
import { NodeRegistry } from '../mesh/registry.js';
import type { Logger } from '../log.js';
import { checkNumbers, seedNumbers } from './seed.js';

export interface DemoOptions {
  tasks: number;
  workers: number;
  agents: number;
  hold: boolean;
  log: Logger;
}

const CONFIG = fileURLToPath(new URL('./config.js', import.meta.url));
const CLI = fileURLToPath(new URL('../cli/main.js', import.meta.url));

/**
 * The getting-started example, end to end: a PostgreSQL (DATABASE_URL, or one started here),
 * the `numbers` table with 1..tasks, N agent processes on this machine, a progress bar, and a
 * summary that checks exactly half the rows (rounded up) are odd. Returns the exit code.
 */
export async function runDemo(o: DemoOptions): Promise<number> {
  let local: LocalPostgres | undefined;
  let url = process.env.DATABASE_URL;
  if (!url) {
    o.log.info('no DATABASE_URL: starting a local PostgreSQL');
    // A throwaway database: commits need not survive a crash of this machine.
    local = await startLocalPostgres({ log: o.log, fsync: false });
    url = local.url;
  }
  const agents: ChildProcess[] = [];
  const db = createPool({ url, applicationName: 'pampa-demo', max: 2, log: o.log });
  try {
    process.env.DATABASE_URL = url;
    const config = await loadConfig(CONFIG);
    const job = config.jobs[0];
    await seedNumbers(db, o.tasks);
    await migrate(db, config.schema);
    await db.query(`DELETE FROM ${quoteIdent(config.schema)}.nodes WHERE cluster = $1`, [
      config.name,
    ]);
    await migrateJobTable(db, job, config.schema, o.log);
    const table = await inspectJobTable(db, job);

    const logDir = join(process.cwd(), '.pampa', 'demo-logs');
    mkdirSync(logDir, { recursive: true });
    const started = performance.now();
    for (let i = 1; i <= o.agents; i++) agents.push(startAgent(i, o.workers, url, logDir));
    process.stderr.write(`agents' logs: ${logDir}\n`);

    const bar = new cliProgress.SingleBar(
      {
        format: 'search_odd_numbers [{bar}] {percentage}% | {value}/{total} tasks | {rate} tasks/s',
        hideCursor: true,
      },
      cliProgress.Presets.shades_classic,
    );
    bar.start(o.tasks, 0, { rate: 0 });
    let counters = await countTasks(db, table);
    for (;;) {
      counters = await countTasks(db, table);
      const closed = counters.completed + counters.failed;
      const secs = (performance.now() - started) / 1000;
      bar.update(closed, { rate: Math.round(closed / secs) });
      if (closed >= counters.total) break;
      if (agents.every((a) => a.exitCode !== null))
        throw new Error('every agent exited; see the logs in ' + logDir);
      await new Promise((r) => setTimeout(r, 200));
    }
    bar.stop();
    const elapsed = (performance.now() - started) / 1000;
    const check = await checkNumbers(db, o.tasks);
    const rows = [
      ['tasks done', counters.completed],
      ['tasks failed', counters.failed],
      ['elapsed seconds', elapsed.toFixed(2)],
      ['tasks per second', Math.round(o.tasks / elapsed)],
      ['odd rows', `${check.odd} (expected ${check.expected})`],
      ['check', check.ok ? 'passed' : 'FAILED'],
    ];
    for (const [k, v] of rows) process.stdout.write(`${String(k).padEnd(18)}${v}\n`);

    if (o.hold) await hold(new NodeRegistry(db, config.schema), config.name);

    return check.ok && counters.failed === 0 ? 0 : 1;
  } finally {
    await Promise.all(agents.map((a) => stopAgent(a)));
    await db.end().catch(() => undefined);
    await local?.stop();
  }
}

function startAgent(i: number, workers: number, url: string, logDir: string): ChildProcess {
  const out = createWriteStream(join(logDir, `agent-${i}.log`));
  const child = spawn(
    process.execPath,
    [
      CLI,
      'agent',
      '--config',
      CONFIG,
      '--name',
      `demo${i}`,
      '--workers',
      String(workers),
      '--http-port',
      '0',
    ],
    {
      env: { ...process.env, DATABASE_URL: url, PAMPA_LOG_FORMAT: 'json' },
      stdio: ['ignore', 'pipe', 'pipe'],
      // Own process group: Ctrl-C in the terminal reaches the demo only, which then stops
      // each agent once (a second signal would force the agent out without draining).
      detached: true,
    },
  );
  child.stdout!.pipe(out);
  child.stderr!.pipe(out);

  return child;
}

function stopAgent(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();

  return new Promise((resolve) => {
    child.once('exit', () => resolve());
    child.kill('SIGTERM');
  });
}

/** Prints each running agent's status URL, from the node registry in the configured schema. */
async function hold(registry: NodeRegistry, cluster: string): Promise<void> {
  const nodes = (await registry.listNodes(cluster)).filter((n) => n.stoppedAt === null);
  process.stdout.write('\nagents are running; press Ctrl-C to stop them\n');
  for (const n of nodes)
    process.stdout.write(`  ${n.name}  ${n.statusUrl ?? '(no status port)'}\n`);
  await new Promise<void>((resolve) => {
    process.once('SIGINT', () => resolve());
    process.once('SIGTERM', () => resolve());
  });
}
