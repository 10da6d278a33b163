import type pg from 'pg';
import type { JobTable } from '../db/table.js';
import type { Logger } from '../log.js';
import { HookResults, type HookRunner, hookContext } from './run.js';

/** Hook calls of one step (per worker, per row) run at most this many at a time. */
export const HOOK_CONCURRENCY = 16;

/**
 * Calls `fn` on every item, at most `limit` at a time, and returns the results in the items'
 * order. A step whose hooks all hang then waits one hook timeout per `limit` items, not one per
 * item.
 */
export async function mapLimited<T, R>(
  items: readonly T[],
  limit: number,
  fn: (item: T) => Promise<R>,
): Promise<R[]> {
  const out = new Array<R>(items.length);
  let next = 0;
  const lane = async (): Promise<void> => {
    while (next < items.length) {
      const i = next++;
      out[i] = await fn(items[i]);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, lane));

  return out;
}

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
  await mapLimited(rows, HOOK_CONCURRENCY, (row) =>
    hooks.call(table.job.name, 'relauncher', () => relauncher(row, ctx), HookResults.any),
  );
}
