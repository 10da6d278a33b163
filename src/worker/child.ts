import '../polyfills.js';
import { loadConfig } from '../config/load.js';
import type { JobConfig } from '../config/schema.js';
import { createPool, isTransientDbError, withTransaction } from '../db/pool.js';
import { inspectJobTable, type JobTable } from '../db/table.js';
import { releaseTasks } from '../dispatch/release.js';
import { HookResults, HookRunner, hookContext, type HookName } from '../hooks/run.js';
import { componentLogger } from '../log.js';
import { AgentSilence } from './agent-silence.js';
import { EXIT_AGENT_SILENT, EXIT_OVERRUN, childDatabaseUrl } from './protocol.js';
import type { FromWorker, ToWorker, WorkerInit } from './protocol.js';
import { ProgressWriter } from './progress.js';
import {
  finishTasks,
  startTasks,
  unstartTasks,
  type StartedTask,
  type TaskResult,
} from './statements.js';

/**
 * A worker process: runs the function of the job it is assigned over the tasks reserved to its
 * worker id, one at a time. Tasks are started in batches sized so that a batch runs for about
 * START_BUDGET_MS (one task at a time for slow tasks, the whole queue for fast ones), and
 * finished in one statement per batch. When its agent assigns it another job, it finishes the
 * batch at hand, gives back the tasks still queued for the old job, and serves the new one.
 */
const START_BUDGET_MS = 20;

const init = JSON.parse(process.argv[2] ?? '{}') as WorkerInit;
const log = componentLogger('worker', { worker: init.workerId });
const hooks = new HookRunner(log);

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

const progress = new ProgressWriter();
let batchNo = 0;

let wakeUp: (() => void) | null = null;
/** A wake-up that arrived while the loop was busy: the next sleep returns at once. */
let wokenEarly = false;
let draining = false;
/** The job the agent last assigned; the loop switches to it between batches. */
let wanted: string | null = init.job;
let runningSince: number | null = null;
let runningTask: string | null = null;
/** The running task's abort controller, once the task asked for its signal. */
let runningController: AbortController | undefined;
/** The agent's 'stop': the grace period is over; the running task's result is not written. */
let stopped = false;

// A paused or hung agent cannot heartbeat: its node will be taken for dead and its tasks
// relaunched elsewhere, so this worker stops before that can happen.
const silence = new AgentSilence(init.agentSilentMs, (silentMs) => {
  log.error(
    { silentMs, limitMs: init.agentSilentMs, task: runningTask },
    'agent silent; worker stops so its tasks cannot run twice',
  );
  process.exit(EXIT_AGENT_SILENT);
});

process.on('message', (msg: ToWorker) => {
  silence.heard();
  if (msg.t === 'alive') return;
  if (msg.t === 'stop') {
    stopped = true;
    draining = true;
    runningController?.abort(new Error('shutdown: the grace period is over'));
  }
  if (msg.t === 'drain') draining = true;
  if (msg.t === 'assign' || (msg.t === 'wake' && msg.job !== undefined)) wanted = msg.job ?? null;
  if (wakeUp) wakeUp();
  else wokenEarly = true;
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
    if (wokenEarly) {
      wokenEarly = false;
      resolve();
      return;
    }
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
  const db = createPool({
    url: childDatabaseUrl(),
    applicationName: `${init.agentId}/${init.workerId}`,
    max: 3,
    log,
  });
  const tables = new Map<string, JobTable>();
  for (const job of config.jobs) {
    tables.set(job.name, await withRetry('inspect table', () => inspectJobTable(db, job)));
  }
  const avgMs = new Map<string, number>();
  let serving: string | null = null;
  send({ t: 'ready' });

  while (!draining) {
    if (wanted !== serving) {
      if (serving !== null) await giveBack(db, tables.get(serving)!, wanted);
      serving = wanted;
      log.info({ job: serving }, serving === null ? 'worker unassigned' : 'worker assigned');
    }
    const table = serving === null ? undefined : tables.get(serving);
    if (!table) {
      if (serving !== null) log.error({ job: serving }, 'assigned a job that is not in the config');
      await sleep(init.pollMs);
      continue;
    }
    const job = table.job;
    const avg = avgMs.get(job.name) ?? 1000;
    const limit = Math.max(
      1,
      Math.min(job.queueSize, Math.floor(START_BUDGET_MS / Math.max(avg, 0.001))),
    );
    let batch: StartedTask[];
    const batchStartedAt = Date.now();
    try {
      batch = await withRetry('start', () => start(db, table, limit));
    } catch (err) {
      log.error({ err, job: job.name }, 'start failed');
      await sleep(init.pollMs);
      continue;
    }
    if (batch.length === 0) {
      await sleep(init.pollMs);
      continue;
    }
    batchNo++;
    // Written before any task of the batch runs, so the agent knows the batch if we die in it.
    await sendConfirmed({
      t: 'started',
      job: job.name,
      n: batch.length,
      batch: batchNo,
      tasks: batch.map((b) => ({ pk: b.pk, attempt: b.attempt })),
    });

    // Every task of the batch has the start time of the batch in the database, so each one's
    // duration limit is counted from there too: the worker stops it before the dispatcher
    // would relaunch it. A task whose time is up before it began is given back unrun.
    const deadline = batchStartedAt + job.maxJobDurationMinutes * 60_000;
    runningSince = batchStartedAt;
    const results: TaskResult[] = [];
    let overran = false;
    let i = 0;
    for (; i < batch.length && !(draining && i > 0) && Date.now() < deadline; i++) {
      const task = batch[i];
      // In a batch, the agent must know which started tasks never ran if this process dies.
      if (batch.length > 1) progress.report(batchNo, i);
      const t0 = performance.now();
      const outcome = await runOne(job, task, db, deadline - Date.now());
      const ms = performance.now() - t0;
      avgMs.set(job.name, (avgMs.get(job.name) ?? 1000) * 0.7 + ms * 0.3);
      // An overrun task, or one interrupted by the agent's stop, is not finished here: this
      // process exits with it still running, and the agent releases it once the process is
      // gone, so no other worker can start it while its code may still run here.
      if (outcome.overran || (stopped && !outcome.result.ok)) {
        overran = outcome.overran;
        i++;
        break;
      }
      results.push(outcome.result);
    }
    runningSince = null;
    const leftover = batch.slice(i);
    await flush(db, table, results, leftover);
    if (overran) {
      log.error({ maxJobDurationMinutes: job.maxJobDurationMinutes }, 'task overran; worker exits');
      process.exit(EXIT_OVERRUN);
    }
    if (stopped) break;
  }

  await db.end().catch(() => undefined);
  process.exit(0);
}

/** Gives back the tasks still queued for a job this worker no longer serves (tries unchanged). */
async function giveBack(db: import('pg').Pool, table: JobTable, next: string | null) {
  try {
    const r = await withRetry('give back', () =>
      releaseTasks(db, table, {
        reason: `worker reassigned to ${next ?? 'no job'}`,
        workers: [init.workerId],
        onlyUnstarted: true,
      }),
    );
    if (r.requeued > 0)
      log.info({ job: table.job.name, tasks: r.requeued }, 'queued tasks given back');
  } catch (err) {
    // They go back at maxReservedSeconds.
    log.warn({ err, job: table.job.name }, 'could not give back queued tasks');
  }
}

/** Starts a batch; with a starter hook, in one transaction with the hook's updates. */
async function start(db: import('pg').Pool, table: JobTable, limit: number) {
  const starter = table.job.starter;
  if (!starter) return startTasks(db, table, init.workerId, limit);

  return withTransaction(db, async (client) => {
    const batch = await startTasks(client, table, init.workerId, limit);
    const ctx = hookContext(table, client, log);
    for (const task of batch) {
      await inSavepoint(client, table.job.name, 'starter', () => starter(task.row, ctx));
    }

    return batch;
  });
}

/**
 * Runs a hook inside a savepoint of the statement's transaction: a hook that throws, or
 * whose query fails, is rolled back alone and reported; the start or finish stands.
 */
async function inSavepoint(
  client: import('pg').PoolClient,
  job: string,
  hook: HookName,
  fn: () => unknown,
): Promise<void> {
  await client.query('SAVEPOINT pampa_hook');
  const got = await hooks.call(job, hook, fn, HookResults.any);
  await client.query(got.ok ? 'RELEASE SAVEPOINT pampa_hook' : 'ROLLBACK TO SAVEPOINT pampa_hook');
}

async function runOne(
  job: JobConfig,
  task: StartedTask,
  db: import('pg').Pool,
  maxMs: number,
): Promise<{ result: TaskResult; overran: boolean }> {
  // The abort signal is made only for a task that asks for it: most never do, and a controller
  // per task is a measurable share of a no-op task's cost.
  let controller: AbortController | undefined;
  let overdue: Error | undefined;
  const signal = () => {
    if (!controller) {
      controller = new AbortController();
      runningController = controller;
      if (stopped) controller.abort(new Error('shutdown: the grace period is over'));
    }
    if (overdue) controller.abort(overdue);

    return controller.signal;
  };
  let timer: NodeJS.Timeout | undefined;
  const overrun = new Promise<'overrun'>((resolve) => {
    timer = setTimeout(() => {
      overdue = new Error('maxJobDurationMinutes exceeded');
      controller?.abort(overdue);
      resolve('overrun');
    }, maxMs);
  });
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
          get signal() {
            return signal();
          },
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
    log.debug({ err, job: job.name, task: task.pk, attempt: task.attempt }, 'task failed');

    return {
      result: { pk: task.pk, attempt: task.attempt, ok: false, error: errorText(err) },
      overran: false,
    };
  } finally {
    clearTimeout(timer);
    runningController = undefined;
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
    const written = await withRetry('finish', () => finish(db, table, results));
    const ok = results.filter((r) => r.ok && written.has(r.pk)).length;
    const failed = results.filter((r) => !r.ok && written.has(r.pk)).length;
    const stale = results.length - written.size;
    if (stale > 0) log.warn({ stale }, 'finish discarded: tasks were relaunched meanwhile');
    send({ t: 'finished', job: table.job.name, ok, failed, stale });
    if (leftover.length > 0) {
      await withRetry('unstart', () => unstartTasks(db, table, init.workerId, leftover));
    }
  } catch (err) {
    // The tasks stay started; the agent or the dispatcher relaunches them.
    log.error({ err, tasks: results.length }, 'finish failed');
  }
}

/** Finishes a batch; with a finisher hook, in one transaction with the hook's updates. */
async function finish(db: import('pg').Pool, table: JobTable, results: TaskResult[]) {
  const finisher = table.job.finisher;
  if (!finisher) return finishTasks(db, table, init.workerId, results);

  return withTransaction(db, async (client) => {
    const rows = new Map<string, Record<string, unknown>>();
    const written = await finishTasks(client, table, init.workerId, results, rows);
    const ctx = hookContext(table, client, log);
    const max = table.job.maxTryTimes;
    for (const r of results) {
      const row = rows.get(r.pk);
      if (!row) continue;
      const result = {
        ok: r.ok,
        error: r.error,
        attempt: r.attempt,
        closed: r.ok || r.attempt >= max,
      };
      await inSavepoint(client, table.job.name, 'finisher', () => finisher(row, result, ctx));
    }

    return written;
  });
}

main().catch((err) => {
  log.fatal({ err }, 'worker failed');
  send({ t: 'fatal', message: err instanceof Error ? err.message : String(err) });
  setTimeout(() => process.exit(1), 50);
});
