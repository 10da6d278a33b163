import { randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import type pg from 'pg';
import type { ClusterConfig } from '../src/config/schema.js';
import { migrate } from '../src/db/migrations.js';
import { createPool, isTransientDbError } from '../src/db/pool.js';
import { inspectJobTable, type JobTable } from '../src/db/table.js';
import { readAssignments } from '../src/dispatch/assignments.js';
import { Dispatcher, type EligibleWorker } from '../src/dispatch/dispatcher.js';
import { releaseTasks } from '../src/dispatch/release.js';
import { LeaseThread } from '../src/lease/lease-thread.js';
import type { Logger } from '../src/log.js';
import { AgentMetrics } from '../src/status/metrics.js';
import { StatusServer } from '../src/status/server.js';
import { VERSION } from '../src/version.js';
import { WorkerPool } from '../src/worker/pool.js';
import { agentSilentMs } from '../src/worker/protocol.js';
import { StandaloneRunner } from '../src/worker/standalone.js';
import { buildStatus, JobRates } from './status.js';
import { ClusterView } from './cluster-view.js';
import { NewTaskListener } from './listener.js';
import { QueueCounts } from './queues.js';

export interface AgentOptions {
  configPath: string;
  config: ClusterConfig;
  /** Node name; default: the host name. */
  node?: string;
  /** Worker processes; default: the node's maxWorkers in the config. */
  workers?: number;
  listen?: string[];
  httpPort?: number;
  httpHost?: string;
  log: Logger;
}

/**
 * One agent per node: its workers, its place in the mesh, its bid for the dispatcher lease,
 * and its status port. start() undoes what it started if it fails; stop() drains.
 */
export class Agent {
  readonly node: string;
  readonly agentId: string;
  readonly log: Logger;
  readonly metrics = new AgentMetrics();
  private readonly config: ClusterConfig;
  private db!: pg.Pool;
  private tables = new Map<string, JobTable>();
  private pool!: WorkerPool;
  private lease!: LeaseThread;
  private dispatcher!: Dispatcher;
  private listener!: NewTaskListener;
  private standalone!: StandaloneRunner;
  /** This node's workers' jobs, as last read from the assignments table. */
  private assignments = new Map<string, string | null>();
  private assignmentTimer: NodeJS.Timeout | undefined;
  private view!: ClusterView;
  private queues!: QueueCounts;
  private status!: StatusServer;
  private statusUrl: string | null = null;
  private draining = false;
  private stopping: Promise<void> | undefined;
  private rates!: JobRates;
  private readonly started: (() => Promise<void>)[] = [];
  private fenceTimer: NodeJS.Timeout | undefined;
  private fenced = false;

  constructor(private readonly o: AgentOptions) {
    this.config = o.config;
    this.node = o.node ?? (hostname().replace(/[^A-Za-z0-9_-]/g, '-') || 'node');
    this.agentId = `${this.node}-${randomBytes(3).toString('hex')}`;
    this.log = o.log.child({ node: this.node, agent: this.agentId });
  }

  workerCount(): number {
    return this.o.workers ?? this.config.nodes.find((n) => n.name === this.node)?.maxWorkers ?? 2;
  }

  async start(): Promise<{ statusUrl: string | null }> {
    try {
      await this.startParts();
    } catch (err) {
      for (const undo of this.started.reverse()) await undo().catch(() => undefined);
      this.started.length = 0;
      throw err;
    }
    this.log.info(
      { workers: this.pool.ids().length, statusUrl: this.statusUrl, version: VERSION },
      'agent started',
    );

    return { statusUrl: this.statusUrl };
  }

  private async startParts(): Promise<void> {
    const c = this.config;
    const url = c.databaseUrl!;
    this.db = createPool({
      url,
      applicationName: this.agentId,
      max: 6,
      log: this.log.child({ component: 'db' }),
    });
    this.started.push(() => this.db.end());

    await migrate(this.db, c.schema);
    for (const job of c.jobs) this.tables.set(job.name, await inspectJobTable(this.db, job));
    this.metrics.declareJobs(this.tables.keys());

    const count = this.workerCount();
    const workerIds = Array.from({ length: count }, (_, i) => `${this.node}.${i + 1}`);
    // Tasks still held by this node's worker ids belong to a previous run of this node.
    for (const table of this.tables.values()) {
      const r = await releaseTasks(this.db, table, {
        reason: 'worker lost: its agent restarted',
        workers: workerIds,
      });
      if (r.requeued + r.closed > 0)
        this.log.info({ job: table.job.name, ...r }, 'tasks of a previous run released');
    }
    await this.readAssignments(workerIds);

    // The lease runs in a thread of its own with its own connection: user hooks running in
    // this event loop, or a busy pool, cannot delay its renewals.
    this.lease = new LeaseThread({
      url,
      applicationName: `${this.agentId}/lease`,
      schema: c.schema,
      cluster: c.name,
      holder: this.agentId,
      ttlMs: c.lease.ttlMs,
      renewIntervalMs: c.lease.renewIntervalMs,
      renewDeadlineMs: c.lease.renewDeadlineMs,
      log: this.log.child({ component: 'lease' }),
    });
    this.lease.on('elected', (epoch) => {
      this.metrics.observeLease(this.agentId, epoch, this.agentId);
      this.metrics.setDispatcher(true, epoch);
      this.dispatcher.kick();
      void this.view?.advertise(true);
    });
    this.lease.on('stepped-down', (epoch) => {
      this.metrics.setDispatcher(false, epoch);
      void this.view?.advertise(true);
    });

    this.pool = new WorkerPool({
      configPath: this.o.configPath,
      databaseUrl: url,
      agentId: this.agentId,
      node: this.node,
      count,
      jobOf: (id) => this.assignments.get(id) ?? null,
      maxMemoryMb: c.nodes.find((n) => n.name === this.node)?.maxMemoryMb,
      maxCpuPercent: c.nodes.find((n) => n.name === this.node)?.maxCpuPercent,
      tables: this.tables,
      db: this.db,
      pollMs: c.workerPollMs,
      agentSilentMs: agentSilentMs(c.mesh.nodeDeadAfterMs),
      log: this.log.child({ component: 'workers' }),
      onCapacity: () => {
        this.dispatcher?.kick();
        void this.view?.advertise(false);
      },
      onActivity: (e) => {
        if (e.kind === 'started') this.metrics.tasksStarted(e.job, e.n);
        if (e.kind === 'succeeded') this.metrics.tasksSucceeded(e.job, e.n);
        if (e.kind === 'failed') this.metrics.tasksFailed(e.job, e.n);
      },
    });

    this.dispatcher = new Dispatcher({
      db: this.db,
      schema: c.schema,
      cluster: c.name,
      tables: this.tables,
      token: () => this.lease.token(),
      workers: () => this.liveWorkers(),
      deadNodes: () => this.view.deadNodes(),
      onReserved: (_job, given, epoch) => {
        this.pool.wake(given.keys());
        void this.view.publishAssignment(epoch, given);
      },
      onAssigned: (changes) => {
        for (const [w, job] of changes) {
          if (w.startsWith(`${this.node}.`)) this.assignments.set(w, job);
        }
        this.pool.assign(changes);
      },
      onRelaunched: (job, reason, n) => this.metrics.tasksRelaunched(job, reason, n),
      onRound: (job, seconds, n) => this.metrics.observeReservation(job, seconds, n),
      nodeTags: new Map(c.nodes.map((n) => [n.name, n.tags])),
      intervalMs: c.dispatchIntervalMs,
      relaunchScanMs: c.relaunchScanMs,
      log: this.log.child({ component: 'dispatcher' }),
    });

    this.view = new ClusterView({
      config: c,
      db: this.db,
      node: this.node,
      agentId: this.agentId,
      version: VERSION,
      listen: this.o.listen ?? c.nodes.find((n) => n.name === this.node)?.listen ?? c.mesh.listen,
      log: this.log,
      localWorkers: () => this.localAdverts(),
      lease: () => {
        const s = this.lease.status();
        return { holder: s.holder, epoch: s.epoch, isHolder: s.isHolder };
      },
      statusUrl: () => this.statusUrl,
      draining: () => this.draining,
      onAssignment: (ids) => {
        void this.readAssignments().then(() => this.pool.wake(ids));
      },
      onChange: () => this.dispatcher.kick(),
      onDeath: () => this.dispatcher.scanNow(),
    });
    this.metrics.countDropsFrom(() => this.view.dropped());

    this.queues = new QueueCounts({
      db: this.db,
      tables: this.tables,
      workers: () => this.pool.ids(),
      intervalMs: c.mesh.advertIntervalMs,
      log: this.log.child({ component: 'queues' }),
    });
    this.queues.start();
    this.started.push(async () => this.queues.stop());
    this.rates = new JobRates({
      db: this.db,
      tables: this.tables,
      sampleMs: 1000,
      windowMs: 10_000,
      idleAfterMs: 60_000,
    });
    this.rates.start();
    this.started.push(async () => this.rates.stop());

    const st = c.status;
    const port =
      this.o.httpPort ?? c.nodes.find((n) => n.name === this.node)?.statusPort ?? st.port;
    this.status = new StatusServer({
      host: this.o.httpHost ?? st.host,
      port,
      token: st.token,
      log: this.log,
      metrics: this.metrics,
      status: () => this.clusterStatus(),
      healthy: () =>
        this.view.dbHealthy ? { ok: true } : { ok: false, reason: 'database unreachable' },
    });
    this.statusUrl = (await this.status.start()).url;
    this.started.push(() => this.status.stop());

    await this.view.start();
    this.started.push(() => this.view.stop());

    this.pool.start();
    this.started.push(async () => this.pool.stop());
    this.assignmentTimer = setInterval(() => void this.readAssignments(), c.workerPollMs);
    this.assignmentTimer.unref();
    this.started.push(async () => clearInterval(this.assignmentTimer));
    await this.lease.start();
    this.started.push(() => this.lease.stop());
    this.dispatcher.start();
    this.started.push(() => this.dispatcher.stop());

    this.fenceTimer = setInterval(() => this.checkFence(), 250);
    this.started.push(async () => clearInterval(this.fenceTimer));

    this.listener = new NewTaskListener(
      url,
      `${this.agentId}/listen`,
      () => this.dispatcher.rowsArrived(),
      this.log,
    );
    this.listener.start();
    this.started.push(() => this.listener.stop());

    this.standalone = new StandaloneRunner({
      configPath: this.o.configPath,
      databaseUrl: url,
      agentId: this.agentId,
      node: this.node,
      cluster: c.name,
      schema: c.schema,
      db: this.db,
      lease: c.lease,
      agentSilentMs: agentSilentMs(c.mesh.nodeDeadAfterMs),
      processes: c.standalone,
      isHolder: () => this.lease.token() !== null && !this.draining,
      log: this.log.child({ component: 'standalone' }),
    });
    this.standalone.start();
    this.started.push(() => this.standalone.stop());
  }

  /**
   * Reads this node's workers' assignments (written by whichever agent dispatches) and hands
   * changes to the worker processes. A database error leaves the last known assignment.
   */
  private async readAssignments(workers = this.pool?.ids()): Promise<void> {
    try {
      const rows = await readAssignments(this.db, this.config.schema, this.config.name, workers);
      for (const w of workers ?? []) this.assignments.set(w, rows.get(w)?.job ?? null);
      this.pool?.assign(this.assignments);
    } catch (err) {
      if (!isTransientDbError(err)) this.log.warn({ err }, 'could not read assignments');
    }
  }

  /** Workers that may be assigned and given tasks: this node's live ones, and fresh adverts'. */
  private liveWorkers(): EligibleWorker[] {
    const local = this.draining
      ? []
      : this.pool
          .states()
          .filter((w) => w.pid !== null)
          .map((w) => ({ id: w.id, job: w.job, freeSlots: w.responsive ? 1 : 0, busy: w.busy }));
    const remote = this.view
      .liveAdverts()
      .filter((a) => a.node !== this.node)
      .flatMap((a) =>
        a.workers.map((w) => ({ id: w.id, job: w.job, freeSlots: w.freeSlots, busy: w.busy })),
      );

    return [...local, ...remote];
  }

  /**
   * Self-fencing: the dispatcher declares this node dead once its gossip is lost and its
   * registry heartbeat is older than nodeDeadAfterMs. Before that can happen (at three quarters
   * of it, with no peer connected), running tasks are stopped, so a node cut off from the
   * database and the mesh never runs a task another node also runs.
   */
  private checkFence(): void {
    this.view.checkDeaths();
    const mesh = this.view.mesh.stats();
    this.metrics.setPeers(mesh.peers);
    this.metrics.setMeshSize(mesh.meshSize);
    const lease = this.lease.status();
    this.metrics.observeLease(lease.holder, lease.epoch, this.agentId);
    // Peers are noted on every check, so a node that loses its database and its peers in the
    // same instant (a partition) still knows it had some.
    const lost = this.view.peersLost(mesh.peers);
    const limit = 0.75 * this.config.mesh.nodeDeadAfterMs;
    const since = this.view.msSinceHeartbeat();
    if (since < limit) {
      if (this.fenced) this.log.info({ sinceMs: Math.round(since) }, 'registry heartbeat back');
      this.fenced = false;
      return;
    }
    // While peers are connected, this node's gossip still reaches them and they hold it alive
    // (death needs gossip lost AND the registry stale): no one will relaunch its tasks. A node
    // that never had a peer is alone in its cluster, or still joining: nobody to run them twice.
    if (this.fenced || this.draining || !lost) return;
    this.fenced = true;
    this.log.warn(
      { sinceMs: Math.round(since), limitMs: limit },
      'registry heartbeat lost; stopping running tasks',
    );
    this.pool.fence(`worker lost: node ${this.node} lost its registry heartbeat`);
  }

  private localAdverts() {
    const queueOf = (job: string) => this.tables.get(job)?.job.queueSize ?? 0;

    return this.pool.states().map((w) => ({
      id: w.id,
      job: w.job,
      freeSlots:
        this.draining || w.pid === null || w.job === null || !w.responsive ? 0 : queueOf(w.job),
      queued: this.queues?.of(w.id) ?? 0,
      busy: w.busy,
      lastActivityAt: w.lastActivityAt,
      done: w.done,
      failed: w.failed,
    }));
  }

  private async clusterStatus() {
    return buildStatus({
      config: this.config,
      db: this.db,
      tables: this.tables,
      node: this.node,
      agentId: this.agentId,
      peerId: this.view.mesh.started ? this.view.mesh.peerId : null,
      lease: this.lease.status(),
      view: this.view,
      local: this.localAdverts(),
      dbHealthy: this.view.dbHealthy,
      rates: this.rates,
    });
  }

  /**
   * SIGTERM: adverts drop to zero free slots, the lease is given up so another agent
   * dispatches at once, queued tasks go back, running ones get shutdownGraceMs, then the
   * node is marked stopped and the pool closed — only after the release writes committed.
   */
  stop(): Promise<void> {
    this.stopping ??= this.shutdown();

    return this.stopping;
  }

  /**
   * A dispatcher elsewhere may have reserved tasks to this node before it heard the node was
   * draining: give those back too, last thing before the pool closes.
   */
  private async releaseLate(): Promise<void> {
    if (!this.pool) return;
    const workers = this.pool.ids();
    for (const table of this.tables.values()) {
      try {
        const r = await releaseTasks(this.db, table, { reason: 'shutdown', workers });
        if (r.requeued + r.closed > 0)
          this.log.info({ job: table.job.name, ...r }, 'late reservations given back');
      } catch (err) {
        this.log.warn({ err, job: table.job.name }, 'could not give back late reservations');
      }
    }
  }

  private async shutdown(): Promise<void> {
    this.log.info({ graceMs: this.config.shutdownGraceMs }, 'agent stopping');
    this.draining = true;
    clearInterval(this.fenceTimer);
    await this.view?.advertise(true).catch(() => undefined);
    await this.dispatcher?.stop();
    await this.standalone?.stop();
    clearInterval(this.assignmentTimer);
    this.queues?.stop();
    this.rates?.stop();
    await this.lease?.stop();
    await this.listener?.stop();
    await this.pool?.drain(this.config.shutdownGraceMs);
    await this.view?.stop().catch(() => undefined);
    await this.releaseLate();
    await this.status?.stop();
    // A start that failed has closed the pool already.
    if (this.db && !this.db.ending && !this.db.ended) {
      await this.db.end().catch((err) => {
        if (!isTransientDbError(err)) this.log.warn({ err }, 'pool close failed');
      });
    }
    this.log.info('agent stopped');
  }
}
