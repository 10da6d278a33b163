import type pg from 'pg';
import type { JobTable } from '../src/db/table.js';
import { isTransientDbError } from '../src/db/pool.js';
import { queuedPerWorker } from '../src/dispatch/statements.js';
import type { Logger } from '../src/log.js';

export interface QueueCountsOptions {
  db: pg.Pool;
  tables: Map<string, JobTable>;
  /** This node's worker ids. */
  workers: () => string[];
  /** How often the queues are read (ms): the advert period, so each advert carries a fresh count. */
  intervalMs: number;
  log: Logger;
}

/**
 * The tasks queued to each of this node's workers — reserved to it, not yet started — as the
 * database has them, read once per advert period with one statement per job (the dispatcher's
 * own queue count, on the reserved-by index). A worker may hold tasks of several jobs (a
 * reassignment gives the old job's back a moment later): its count is their sum. A read that
 * fails keeps the last counts.
 */
export class QueueCounts {
  private counts = new Map<string, number>();
  private timer: NodeJS.Timeout | undefined;
  private reading = false;

  constructor(private readonly o: QueueCountsOptions) {}

  start(): void {
    if (this.timer) return;
    void this.refresh();
    this.timer = setInterval(() => void this.refresh(), this.o.intervalMs);
    this.timer.unref();
  }

  stop(): void {
    clearInterval(this.timer);
    this.timer = undefined;
  }

  /** Reserved-but-unstarted tasks of `worker` at the last read (0 before the first). */
  of(worker: string): number {
    return this.counts.get(worker) ?? 0;
  }

  async refresh(): Promise<void> {
    if (this.reading) return;
    this.reading = true;
    try {
      const workers = this.o.workers();
      const counts = new Map<string, number>();
      for (const table of this.o.tables.values()) {
        const got = await queuedPerWorker(this.o.db, table, workers);
        for (const [w, n] of got) counts.set(w, (counts.get(w) ?? 0) + n);
      }
      this.counts = counts;
    } catch (err) {
      if (!isTransientDbError(err)) this.o.log.warn({ err }, 'could not count queued tasks');
    } finally {
      this.reading = false;
    }
  }
}
