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
  const agents: ChildProcess[] = [];
  const interrupt = new Interrupt(agents);
  let local: LocalPostgres | undefined;
  let url = process.env.DATABASE_URL;
  if (!url) {
    o.log.info('no DATABASE_URL: starting a local PostgreSQL');
    // A throwaway database: commits need not survive a crash of this machine. Its own process
    // group: Ctrl-C reaches this process, which stops the agents before the database.
    local = await startLocalPostgres({ log: o.log, fsync: false, ownProcessGroup: true }).catch(
      (err: unknown) => {
        interrupt.dispose();
        throw err;
      },
    );
    url = local.url;
  }
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
      await Promise.race([new Promise((r) => setTimeout(r, 200)), interrupt.signalled]);
      if (interrupt.fired) break;
    }
    bar.stop();
    if (interrupt.fired) {
      process.stderr.write('interrupted: stopping the agents\n');

      return 130;
    }
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

    if (o.hold) {
      await hold(new NodeRegistry(db, config.schema), config.name, url, interrupt.signalled);
      process.stderr.write('stopping the agents\n');
    }

    return check.ok && counters.failed === 0 ? 0 : 1;
  } finally {
    await Promise.all(agents.map((a) => stopAgent(a)));
    await db.end().catch(() => undefined);
    await local?.stop();
    interrupt.dispose();
  }
}

/**
 * SIGINT and SIGTERM while the demo runs: the first one ends the run or the hold, and the demo
 * stops its agents (each drains) and then its database; a second one kills the agents' process
 * groups at once, and the database is stopped all the same.
 */
class Interrupt {
  fired = false;
  readonly signalled: Promise<void>;
  private resolve: () => void = () => undefined;
  private readonly onSignal = (): void => {
    if (this.fired) {
      process.stderr.write('second interrupt: killing the agents\n');
      for (const a of this.agents) {
        if (a.pid && a.exitCode === null && a.signalCode === null) {
          try {
            process.kill(-a.pid, 'SIGKILL');
          } catch {
            // gone already
          }
        }
      }
      return;
    }
    this.fired = true;
    this.resolve();
  };

  constructor(private readonly agents: ChildProcess[]) {
    this.signalled = new Promise((resolve) => (this.resolve = resolve));
    process.on('SIGINT', this.onSignal);
    process.on('SIGTERM', this.onSignal);
  }

  dispose(): void {
    process.off('SIGINT', this.onSignal);
    process.off('SIGTERM', this.onSignal);
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

/**
 * Prints each running agent's status URL (from the node registry in the configured schema) and
 * the database's URL, then waits for Ctrl-C.
 */
async function hold(
  registry: NodeRegistry,
  cluster: string,
  url: string,
  interrupted: Promise<void>,
): Promise<void> {
  const nodes = (await registry.listNodes(cluster)).filter((n) => n.stoppedAt === null);
  process.stdout.write('\nagents are running; press Ctrl-C to stop them\n');
  for (const n of nodes)
    process.stdout.write(`  ${n.name}  ${n.statusUrl ?? '(no status port)'}\n`);
  process.stdout.write(`database: ${redactPassword(url)}\n`);
  await interrupted;
}

/** The URL with its password, if any, replaced by ***. */
function redactPassword(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = '***';

    return u.toString();
  } catch {
    return '(a DATABASE_URL that is not a URL)';
  }
}
