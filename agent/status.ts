import type pg from 'pg';
import type { ClusterConfig } from '../src/config/schema.js';
import type { JobTable } from '../src/db/table.js';
import { countTasks, type JobCounters } from '../src/dispatch/statements.js';
import { jobCounters } from '../src/hooks/counters.js';
import type { LeaseStatus } from '../src/lease/lease.js';
import type { WorkerAdvert } from '../src/mesh/types.js';
import type { ClusterStatus, JobStatus, NodeStatus, WorkerStatus } from '../src/status/types.js';
import { VERSION } from '../src/version.js';
import type { ClusterView } from './cluster-view.js';

export interface JobRatesOptions {
  db: pg.Pool;
  tables: Map<string, JobTable>;
  /** How often each job's closed tasks are counted (ms). */
  sampleMs: number;
  /** The window the rate is taken over (ms). */
  windowMs: number;
  /** Counting pauses when nobody asked for a rate this long (ms): an unwatched agent costs nothing. */
  idleAfterMs: number;
}

/**
 * Tasks per second per job: tasks closed (completed or failed, Pampa's own count, not the
 * counter hooks') over the last windowMs, from counts this agent takes every sampleMs. The
 * figure does not depend on who reads /status nor how often, so two peers show about the same
 * rate (their samples differ by less than one sampling period). A count that fails is skipped.
 * Counting runs only while someone reads the rate (/status, the dashboard, `pampa status`): the
 * first read after a quiet spell shows 0 until two counts were taken.
 */
export class JobRates {
  private samples = new Map<string, { at: number; closed: number }[]>();
  private timer: NodeJS.Timeout | undefined;
  private sampling = false;
  private lastRead = -Infinity;

  constructor(private readonly o: JobRatesOptions) {}

  start(): void {
    if (this.timer) return;
    void this.sample();
    this.timer = setInterval(() => void this.sample(), this.o.sampleMs);
    this.timer.unref();
  }

  stop(): void {
    clearInterval(this.timer);
    this.timer = undefined;
  }

  private async sample(): Promise<void> {
    if (this.sampling) return;
    if (performance.now() - this.lastRead > this.o.idleAfterMs) {
      this.samples.clear();
      return;
    }
    this.sampling = true;
    try {
      for (const [name, t] of this.o.tables) {
        const c = await countTasks(this.o.db, t).catch(() => null);
        if (!c) continue;
        const now = performance.now();
        const list = (this.samples.get(name) ?? []).filter((s) => now - s.at <= this.o.windowMs);
        list.push({ at: now, closed: c.completed + c.failed });
        this.samples.set(name, list);
      }
    } finally {
      this.sampling = false;
    }
  }

  /** Tasks closed per second over the window; 0 until two samples were taken. */
  rate(job: string): number {
    const wasIdle = performance.now() - this.lastRead > this.o.idleAfterMs;
    this.lastRead = performance.now();
    if (wasIdle) void this.sample();
    const list = this.samples.get(job) ?? [];
    if (list.length < 2) return 0;
    const first = list[0];
    const last = list[list.length - 1];

    return Math.max(0, ((last.closed - first.closed) * 1000) / (last.at - first.at));
  }
}

export interface StatusInput {
  config: ClusterConfig;
  db: pg.Pool;
  tables: Map<string, JobTable>;
  node: string;
  agentId: string;
  peerId: string | null;
  lease: LeaseStatus;
  view: ClusterView;
  local: WorkerAdvert[];
  dbHealthy: boolean;
  rates: JobRates;
}

/** The whole cluster as this agent knows it: the registry, fresh adverts, the lease, counters. */
export async function buildStatus(i: StatusInput): Promise<ClusterStatus> {
  const records = i.view.registryRecords();
  const adverts = new Map(i.view.adverts().map((a) => [a.node, a]));
  const nodes: NodeStatus[] = records.map((r) => ({
    name: r.name,
    agentId: r.agentId,
    peerId: r.peerId,
    addresses: r.addresses,
    statusUrl: r.statusUrl,
    version: r.version,
    lastHeartbeat: new Date(Date.now() - r.heartbeatAgeMs).toISOString(),
    state: r.stoppedAt ? 'stopped' : r.name === i.node ? 'alive' : i.view.membership.state(r.name),
  }));
  const workers: WorkerStatus[] = [];
  const push = (node: string, ws: WorkerAdvert[]) => {
    for (const w of ws) {
      workers.push({
        id: w.id,
        node,
        job: w.job,
        busy: w.busy,
        queued: w.queued,
        freeSlots: w.freeSlots,
        lastActivity: w.lastActivityAt ? new Date(w.lastActivityAt).toISOString() : null,
        done: w.done,
        failed: w.failed,
      });
    }
  };
  push(i.node, i.local);
  for (const [node, a] of adverts) if (node !== i.node) push(node, a.workers);
  workers.sort((a, b) => a.id.localeCompare(b.id, 'en', { numeric: true }));

  const jobs: JobStatus[] = [];
  let dbOk = i.dbHealthy;
  for (const [name, t] of i.tables) {
    let c: JobCounters = { total: 0, completed: 0, pending: 0, failed: 0, running: 0 };
    try {
      c = await jobCounters(i.db, t);
    } catch {
      dbOk = false;
    }
    jobs.push({
      name,
      table: t.job.table,
      ...c,
      tasksPerSecond: i.rates.rate(name),
    });
  }

  const holderNode = i.lease.holder
    ? (records.find((r) => r.agentId === i.lease.holder)?.name ?? null)
    : null;
  const stats = i.view.mesh.stats();

  return {
    cluster: i.config.name,
    self: { node: i.node, agentId: i.agentId, peerId: i.peerId, version: VERSION },
    generatedAt: new Date().toISOString(),
    db: dbOk ? 'ok' : 'down',
    role: i.lease.isHolder ? 'dispatcher' : 'worker',
    peers: stats.peers,
    meshSize: stats.meshSize,
    nodes: nodes.sort((a, b) => a.name.localeCompare(b.name)),
    workers,
    dispatcher: {
      holder: i.lease.holder,
      holderNode,
      epoch: i.lease.epoch,
      secondsToExpiry: i.lease.msToExpiry === null ? null : Math.max(0, i.lease.msToExpiry / 1000),
    },
    jobs,
    dropped: i.view.dropped(),
    gossip: { received: stats.received, published: stats.published },
  };
}
