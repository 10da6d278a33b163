import '../polyfills.js';
import { loadConfig } from '../config/load.js';
import type { JobConfig } from '../config/schema.js';
import { createPool, isTransientDbError } from '../db/pool.js';
import { inspectJobTable, type JobTable } from '../db/table.js';
import { componentLogger } from '../log.js';
import type { FromWorker, ToWorker, WorkerInit } from './protocol.js';
import {
  finishTasks,
  startTasks,
  unstartTasks,
  type StartedTask,
  type TaskResult,
} from './statements.js';

/**
 * A worker process: runs the job function over the tasks reserved to its worker id, one at a
 * time. Tasks are started in batches sized so that a batch runs for about START_BUDGET_MS
 * (one task at a time for slow tasks, the whole queue for fast ones), and finished in one
 * statement per batch.
 */
const START_BUDGET_MS = 20;
/** Exit code after a task overran: the process goes, and any code it left running with it. */
export const EXIT_OVERRUN = 75;

const init = JSON.parse(process.argv[2] ?? '{}') as WorkerInit;
const log = componentLogger('worker', { worker: init.workerId, job: init.job });

function send(msg: FromWorker): void {
  if (process.send && process.connected) process.send(msg);
}

/** Resolves once the message is handed to the kernel: the agent reads it even if we die next. */
function sendConfirmed(msg: FromWorker): Promise<void> {
  return new Promise((resolve) => {
    if (!process.send || !process.connected) return resolve();
    process.send(msg, undefined, {}, () => resolve());
  });
}

let wakeUp: (() => void) | null = null;
let draining = false;
let runningSince: number | null = null;
let runningTask: string | null = null;

process.on('message', (msg: ToWorker) => {
  if (msg.t === 'drain') draining = true;
  wakeUp?.();
});
// The agent is gone (killed): nobody supervises this process any more, and the dispatcher will
// relaunch its tasks elsewhere, so a task still running here must not go on.
process.on('disconnect', () => process.exit(1));
process.on('SIGTERM', () => {
  draining = true;
  wakeUp?.();
});
process.on('SIGINT', () => undefined);

setInterval(() => send({ t: 'heartbeat', runningSince, task: runningTask }), 500).unref();

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(done, ms);
    function done() {
      clearTimeout(timer);
      wakeUp = null;
      resolve();
    }
    wakeUp = done;
  });
}

async function withRetry<T>(what: string, fn: () => Promise<T>): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await fn();
    } catch (err) {
      if (!isTransientDbError(err) || attempt >= 30) throw err;
      log.warn({ err, attempt }, `${what} failed; retrying`);
      await sleep(Math.min(2000, 50 * 2 ** attempt));
    }
  }
}

function errorText(err: unknown): string {
  if (err instanceof Error) return err.stack ?? `${err.name}: ${err.message}`;

  return String(err);
}

async function main(): Promise<void> {
  const config = await loadConfig(init.configPath);
  const job = config.jobs.find((j) => j.name === init.job) as JobConfig;
  if (!job) throw new Error(`job "${init.job}" is not in ${init.configPath}`);
  const db = createPool({
    url: init.databaseUrl,
    applicationName: `${init.agentId}/${init.workerId}`,
    max: 3,
    log,
  });
  const table = await withRetry('inspect table', () => inspectJobTable(db, job));
  const maxMs = job.maxJobDurationMinutes * 60_000;
  let avgMs = 1000;
  send({ t: 'ready' });

  while (!draining) {
    const limit = Math.max(
      1,
      Math.min(job.queueSize, Math.floor(START_BUDGET_MS / Math.max(avgMs, 0.001))),
    );
    let batch: StartedTask[];
    try {
      batch = await withRetry('start', () => startTasks(db, table, init.workerId, limit));
    } catch (err) {
      log.error({ err }, 'start failed');
      await sleep(init.pollMs);
      continue;
    }
    if (batch.length === 0) {
      await sleep(init.pollMs);
      continue;
    }
    send({ t: 'started', n: batch.length, tasks: batch.map((b) => ({ pk: b.pk, attempt: b.attempt })) });

    const results: TaskResult[] = [];
    let overran = false;
    let i = 0;
    for (; i < batch.length && !(draining && i > 0); i++) {
      const task = batch[i];
      // In a batch, the agent must know which started tasks never ran if this process dies.
      if (batch.length > 1) await sendConfirmed({ t: 'running', index: i });
      const t0 = performance.now();
      const outcome = await runOne(job, table, task, db, maxMs);
      const ms = performance.now() - t0;
      avgMs = avgMs * 0.7 + ms * 0.3;
      results.push(outcome.result);
      if (outcome.overran) {
        overran = true;
        i++;
        break;
      }
    }
    const leftover = batch.slice(i);
    await flush(db, table, results, leftover);
    if (overran) {
      log.error({ maxJobDurationMinutes: job.maxJobDurationMinutes }, 'task overran; worker exits');
      process.exit(EXIT_OVERRUN);
    }
  }

  await db.end().catch(() => undefined);
  process.exit(0);
}

async function runOne(
  job: JobConfig,
  table: JobTable,
  task: StartedTask,
  db: import('pg').Pool,
  maxMs: number,
): Promise<{ result: TaskResult; overran: boolean }> {
  const controller = new AbortController();
  let timer: NodeJS.Timeout | undefined;
  const overrun = new Promise<'overrun'>((resolve) => {
    timer = setTimeout(() => {
      controller.abort(new Error('maxJobDurationMinutes exceeded'));
      resolve('overrun');
    }, maxMs);
  });
  runningSince = Date.now();
  runningTask = task.pk;
  try {
    const out = await Promise.race([
      Promise.resolve().then(() =>
        job.run(task.row, {
          attempt: task.attempt,
          worker: init.workerId,
          job: job.name,
          db,
          log,
          signal: controller.signal,
        }),
      ),
      overrun,
    ]);
    if (out === 'overrun') {
      const error = `task ran longer than maxJobDurationMinutes (${job.maxJobDurationMinutes} min); stopped by its worker`;

      return { result: { pk: task.pk, attempt: task.attempt, ok: false, error }, overran: true };
    }

    return {
      result: { pk: task.pk, attempt: task.attempt, ok: true, error: null },
      overran: false,
    };
  } catch (err) {
    log.debug({ err, task: task.pk, attempt: task.attempt, table: table.job.table }, 'task failed');

    return {
      result: { pk: task.pk, attempt: task.attempt, ok: false, error: errorText(err) },
      overran: false,
    };
  } finally {
    clearTimeout(timer);
    runningSince = null;
    runningTask = null;
  }
}

async function flush(
  db: import('pg').Pool,
  table: JobTable,
  results: TaskResult[],
  leftover: StartedTask[],
): Promise<void> {
  try {
    const written = await withRetry('finish', () => finishTasks(db, table, init.workerId, results));
    const ok = results.filter((r) => r.ok && written.has(r.pk)).length;
    const failed = results.filter((r) => !r.ok && written.has(r.pk)).length;
    const stale = results.length - written.size;
    if (stale > 0) log.warn({ stale }, 'finish discarded: tasks were relaunched meanwhile');
    send({ t: 'finished', ok, failed, stale });
    if (leftover.length > 0) {
      await withRetry('unstart', () => unstartTasks(db, table, init.workerId, leftover));
    }
  } catch (err) {
    // The tasks stay started; the agent or the dispatcher relaunches them.
    log.error({ err, tasks: results.length }, 'finish failed');
  }
}

main().catch((err) => {
  log.fatal({ err }, 'worker failed');
  send({ t: 'fatal', message: err instanceof Error ? err.message : String(err) });
  setTimeout(() => process.exit(1), 50);
});
