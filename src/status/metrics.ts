import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

/**
 * Reservation latency buckets (seconds): from a NOTIFY-driven reservation (a few ms) to a
 * task that waited several dispatcher rounds or a lease hand-over (tens of seconds).
 */
const reservationBuckets = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];

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
    this.reservation = new Histogram({
      name: 'pampa_reservation_latency_seconds',
      help: 'Time from a task becoming pending to its reservation (seconds).',
      labelNames: ['job'],
      buckets: reservationBuckets,
      registers,
    });
    this.leaseChanges = new Counter({
      name: 'pampa_lease_changes_total',
      help: 'Changes of dispatcher lease holder seen by this agent.',
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
    this.dropped = new Counter({
      name: 'pampa_gossip_dropped_total',
      help: 'Gossip messages dropped on receipt, by reason.',
      labelNames: ['reason'],
      registers,
    });
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

  observeReservation(job: string, seconds: number): void {
    this.reservation.observe({ job }, seconds);
  }

  leaseChanged(): void {
    this.leaseChanges.inc();
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

  gossipDropped(reason: string, n = 1): void {
    this.dropped.inc({ reason }, n);
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
