import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

/**
 * Reservation statement buckets (seconds): from a round over a small table (a millisecond) to
 * one stuck behind locks or a loaded database (seconds).
 */
const reservationBuckets = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5];

/** Gossip drop counts by reason, since the agent started (the mesh's and the membership's). */
export type DropCounts = () => Record<string, number>;

/**
 * The Prometheus metrics of one agent. Each instance owns its own registry (plus the default
 * process metrics), so two agents in one process or one test never share counters.
 */
export class AgentMetrics {
  readonly registry = new Registry();

  private readonly started: Counter<'job'>;
  private readonly succeeded: Counter<'job'>;
  private readonly failed: Counter<'job'>;
  private readonly relaunched: Counter<'job' | 'reason'>;
  private readonly reservation: Histogram<'job'>;
  private readonly leaseChanges: Counter;
  private readonly peerCount: Gauge;
  private readonly meshSizeGauge: Gauge;
  private readonly dispatcherGauge: Gauge;
  private readonly epochGauge: Gauge;
  private readonly dropped: Counter<'reason'>;
  private dropCounts: DropCounts = () => ({});
  /** The lease as this agent last saw it (`holder/epoch`), undefined before it saw one. */
  private lastLease: string | undefined;

  constructor() {
    const registers = [this.registry];
    collectDefaultMetrics({ register: this.registry });

    this.started = new Counter({
      name: 'pampa_tasks_started_total',
      help: 'Tasks started by the workers of this agent.',
      labelNames: ['job'],
      registers,
    });
    this.succeeded = new Counter({
      name: 'pampa_tasks_succeeded_total',
      help: 'Tasks finished successfully by the workers of this agent.',
      labelNames: ['job'],
      registers,
    });
    this.failed = new Counter({
      name: 'pampa_tasks_failed_total',
      help: 'Task attempts that threw, on the workers of this agent.',
      labelNames: ['job'],
      registers,
    });
    this.relaunched = new Counter({
      name: 'pampa_tasks_relaunched_total',
      help: 'Tasks relaunched by this agent while it was the dispatcher.',
      labelNames: ['job', 'reason'],
      registers,
    });
    // A new row keeps no time of when it became due, so the wait before its reservation cannot
    // be measured; what is measured is the statement that reserved it.
    this.reservation = new Histogram({
      name: 'pampa_reservation_statement_seconds',
      help: 'Duration of each reservation statement that reserved at least one task (seconds).',
      labelNames: ['job'],
      buckets: reservationBuckets,
      registers,
    });
    this.leaseChanges = new Counter({
      name: 'pampa_lease_changes_total',
      help: 'Changes of dispatcher lease holder or epoch seen by this agent.',
      registers,
    });
    this.peerCount = new Gauge({
      name: 'pampa_peers',
      help: 'libp2p peers this agent is connected to.',
      registers,
    });
    this.meshSizeGauge = new Gauge({
      name: 'pampa_mesh_size',
      help: 'Agents in the gossip mesh of this cluster, this one included.',
      registers,
    });
    this.dispatcherGauge = new Gauge({
      name: 'pampa_is_dispatcher',
      help: '1 while this agent holds the dispatcher lease, else 0.',
      registers,
    });
    this.epochGauge = new Gauge({
      name: 'pampa_lease_epoch',
      help: 'Epoch of the dispatcher lease as this agent last saw it.',
      registers,
    });
    const counts = () => this.dropCounts();
    this.dropped = new Counter({
      name: 'pampa_gossip_dropped_total',
      help: 'Gossip messages dropped on receipt, by reason.',
      labelNames: ['reason'],
      registers,
      // The counts live where the drops happen (mesh, membership); each scrape copies them.
      collect() {
        this.reset();
        for (const [reason, n] of Object.entries(counts())) this.inc({ reason }, n);
      },
    });
  }

  /** Shows each job's task counters from the start, at 0, rather than at its first task. */
  declareJobs(jobs: Iterable<string>): void {
    for (const job of jobs) {
      for (const c of [this.started, this.succeeded, this.failed]) c.inc({ job }, 0);
    }
  }

  tasksStarted(job: string, n = 1): void {
    this.started.inc({ job }, n);
  }

  tasksSucceeded(job: string, n = 1): void {
    this.succeeded.inc({ job }, n);
  }

  tasksFailed(job: string, n = 1): void {
    this.failed.inc({ job }, n);
  }

  tasksRelaunched(job: string, reason: string, n = 1): void {
    this.relaunched.inc({ job, reason }, n);
  }

  /** A reservation statement's duration; rounds that reserved nothing are not observed. */
  observeReservation(job: string, seconds: number, reserved: number): void {
    if (reserved > 0) this.reservation.observe({ job }, seconds);
  }

  /**
   * The lease as this agent sees it now. A holder or epoch other than the last seen counts as
   * one change; the first lease seen counts only when this agent holds it (it made the change),
   * as a lease held before the agent started is no change it saw.
   */
  observeLease(holder: string | null, epoch: number, self: string): void {
    if (holder === null) return;
    const key = `${holder}/${epoch}`;
    if (key === this.lastLease) return;
    if (this.lastLease !== undefined || holder === self) this.leaseChanges.inc();
    this.lastLease = key;
  }

  setPeers(n: number): void {
    this.peerCount.set(n);
  }

  setMeshSize(n: number): void {
    this.meshSizeGauge.set(n);
  }

  setDispatcher(isDispatcher: boolean, epoch: number): void {
    this.dispatcherGauge.set(isDispatcher ? 1 : 0);
    this.epochGauge.set(epoch);
  }

  /** Where pampa_gossip_dropped_total reads its counts at each scrape. */
  countDropsFrom(counts: DropCounts): void {
    this.dropCounts = counts;
  }

  /** The Prometheus text exposition format, version 0.0.4. */
  get contentType(): string {
    return this.registry.contentType;
  }

  /**
   * The exposition text. prom-client 15 writes a not-a-number value as `Nan`; Prometheus reads
   * that (Go's ParseFloat ignores case) but the format spells it `NaN`, and stricter readers
   * want that spelling. A value is always last on its line, as no timestamps are written.
   */
  async render(): Promise<string> {
    const text = await this.registry.metrics();

    return text.replace(/ Nan$/gm, ' NaN');
  }
}
