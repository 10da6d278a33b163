import pMap from 'p-map';
import type pg from 'pg';
import type { JobTable } from '../db/table.js';
import type { Logger } from '../log.js';
import { HookResults, type HookRunner, hookContext } from './run.js';

/**
 * Hook calls of one step (per worker, per row) run at most this many at a time: hooks that hang
 * cost a step one hook timeout per this many calls, and hooks that query `ctx.db` (the agent's
 * pool, 6 connections) leave the dispatcher's own statements connections to run on.
 */
export const HOOK_CONCURRENCY = 4;

/**
 * Runs a job's relauncher hook on rows just given back to the queue, whoever gave them back:
 * the dispatcher (overrun, dead node, relaunching, recurrence) or the agent of a worker process
 * that is gone (crash, memory limit, overrun it stopped itself, shutdown). Its return value is
 * not used; a throw or a timeout is reported with the job's and the hook's name.
 */
export async function runRelauncher(
  hooks: HookRunner,
  table: JobTable,
  db: pg.Pool,
  log: Logger,
  rows: Record<string, unknown>[] | undefined,
): Promise<void> {
  const relauncher = table.job.relauncher;
  if (!relauncher || !rows || rows.length === 0) return;
  const ctx = hookContext(table, db, log);
  await pMap(
    rows,
    (row) => hooks.call(table.job.name, 'relauncher', () => relauncher(row, ctx), HookResults.any),
    { concurrency: HOOK_CONCURRENCY },
  );
}
