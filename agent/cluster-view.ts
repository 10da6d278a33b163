import type { ClusterConfig } from '../src/config/schema.js';
import type { Logger } from '../src/log.js';
import { Membership } from '../src/mesh/membership.js';
import { Mesh } from '../src/mesh/mesh.js';
import { NodeRegistry, type NodeRecord } from '../src/mesh/registry.js';
import type { AssignmentMessage, CapacityAdvert, WorkerAdvert } from '../src/mesh/types.js';
import type pg from 'pg';

export interface ClusterViewOptions {
  config: ClusterConfig;
  db: pg.Pool;
  node: string;
  agentId: string;
  version: string;
  listen: string[];
  log: Logger;
  /** This agent's workers as it would advertise them. */
  localWorkers: () => WorkerAdvert[];
  lease: () => CapacityAdvert['lease'];
  statusUrl: () => string | null;
  draining: () => boolean;
  /** Workers of this node that received tasks from a remote dispatcher. */
  onAssignment: (workers: string[]) => void;
  /** A change a dispatcher may act on at once (an advert with free slots). */
  onChange: () => void;
  /** A node was just declared dead: its tasks may be relaunched now. */
  onDeath: () => void;
}

/** Change-driven adverts of one agent are at least this far apart (ms). */
const ADVERT_MIN_GAP_MS = 50;
/**
 * Advert periods without hearing any other node after which this agent counts itself cut off
 * from its peers (for self-fencing); every node adverts each period, so a live mesh is never
 * this quiet.
 */
const GOSSIP_SILENCE = 2.5;

/**
 * The agent's view of the cluster: its libp2p mesh (adverts, assignments), membership (alive,
 * suspect, dead) and the node registry (heartbeats, addresses for discovery). Gossip decides
 * where to dispatch; the registry decides who is dead and must have its tasks relaunched.
 */
export class ClusterView {
  readonly mesh: Mesh;
  readonly membership: Membership;
  private readonly registry: NodeRegistry;
  private seq = 0;
  private advertTimer: NodeJS.Timeout | undefined;
  private heartbeatTimer: NodeJS.Timeout | undefined;
  private records: NodeRecord[] = [];
  private lastAdvertKey = '';
  /** When the last advert went out (monotonic ms), and the pending trailing one. */
  private lastAdvertAt = -Infinity;
  private trailingAdvert: NodeJS.Timeout | undefined;
  private dbOk = true;
  /** Send time (monotonic) of the last registry heartbeat that succeeded. */
  private heartbeatOkAt = performance.now();
  /** Since when heartbeats have succeeded without a break (monotonic), or null. */
  private dbSince: number | null = null;
  /** When the last registry read completed (monotonic ms). */
  private readAt = -Infinity;
  /** Whether a peer was ever connected (a node that never had one cannot be cut off). */
  private everConnected = false;
  /** When an advert of another node was last accepted (monotonic ms). */
  private lastPeerAdvertAt: number | null = null;
  private readonly dead = new Set<string>();
  /** Adverts dropped as older than one already seen from their node. */
  private stale = 0;

  constructor(private readonly o: ClusterViewOptions) {
    const m = o.config.mesh;
    this.mesh = new Mesh({
      cluster: o.config.name,
      listen: o.listen,
      bootstrap: m.bootstrap,
      clusterKey: m.clusterKey,
      maxDialPeers: m.dialPeers,
      log: o.log.child({ component: 'mesh' }),
    });
    this.membership = new Membership({
      advertTtlMs: m.advertTtlMs,
      nodeDeadAfterMs: m.nodeDeadAfterMs,
    });
    this.registry = new NodeRegistry(o.db, o.config.schema);
    this.mesh.on('advert', (a) => {
      if (a.node === o.node && a.agentId === o.agentId) return;
      const before = this.membership.lastAdvert(a.node);
      const verdict = this.membership.observeAdvert(a);
      if (verdict === 'stale') {
        this.stale += 1;
        return;
      }
      this.lastPeerAdvertAt = performance.now();
      // A dispatch round when a node offers more than before (or is new), not on every advert:
      // in a large cluster adverts arrive by the dozen each second.
      if (freeSlots(a) > (before && before.agentId === a.agentId ? freeSlots(before) : 0))
        o.onChange();
    });
    this.mesh.on('assignment', (msg: AssignmentMessage) => {
      const mine = msg.workers.filter((w) => w.id.startsWith(`${o.node}.`)).map((w) => w.id);
      if (mine.length > 0) o.onAssignment(mine);
    });
    this.mesh.on('peer:connect', (p) => this.membership.peerConnected(p));
    this.mesh.on('peer:disconnect', (p) => this.membership.peerDisconnected(p));
  }

  get dbHealthy(): boolean {
    return this.dbOk;
  }

  async start(): Promise<void> {
    await this.mesh.start();
    const sent = performance.now();
    await this.registry.upsertNode(this.registration());
    this.heartbeatOkAt = sent;
    this.dbSince = sent;
    await this.refreshRegistry();
    const m = this.o.config.mesh;
    this.advertTimer = setInterval(() => void this.advertise(true), m.advertIntervalMs);
    this.heartbeatTimer = setInterval(() => void this.heartbeat(), m.heartbeatIntervalMs);
    void this.advertise(true);
  }

  private registration() {
    return {
      cluster: this.o.config.name,
      name: this.o.node,
      agentId: this.o.agentId,
      peerId: this.mesh.peerId,
      addresses: this.mesh.multiaddrs(),
      statusUrl: this.o.statusUrl(),
      version: this.o.version,
      workers: this.o.localWorkers().map((w) => w.id),
    };
  }

  /**
   * Publishes this agent's capacity; `always` false publishes only when it changed — a worker
   * started or finished a batch (its queue shrank: the dispatcher may top it up), went busy or
   * idle, or its slots changed — and at most every ADVERT_MIN_GAP_MS, the last change following
   * at the end of the gap, so fast tasks do not flood the mesh.
   */
  async advertise(always: boolean): Promise<void> {
    const workers = this.o.localWorkers();
    const draining = this.o.draining();
    const key = JSON.stringify([
      workers.map((w) => [w.id, w.freeSlots, w.busy, w.lastActivityAt]),
      draining,
    ]);
    if (!always && key === this.lastAdvertKey) return;
    const wait = this.lastAdvertAt + ADVERT_MIN_GAP_MS - performance.now();
    if (!always && wait > 0) {
      this.trailingAdvert ??= setTimeout(() => {
        this.trailingAdvert = undefined;
        void this.advertise(false);
      }, wait);
      return;
    }
    this.lastAdvertKey = key;
    this.lastAdvertAt = performance.now();
    if (!this.mesh.started) return;
    const advert: CapacityAdvert = {
      v: 1,
      cluster: this.o.config.name,
      node: this.o.node,
      agentId: this.o.agentId,
      peerId: this.mesh.peerId,
      seq: ++this.seq,
      sentAt: Date.now(),
      version: this.o.version,
      statusUrl: this.o.statusUrl(),
      draining,
      lease: this.o.lease(),
      workers,
    };
    try {
      await this.mesh.publishAdvert(advert);
    } catch (err) {
      this.o.log.debug({ err }, 'advert not published');
    }
  }

  async publishAssignment(epoch: number, given: Map<string, number>): Promise<void> {
    const remote = [...given].filter(([id]) => !id.startsWith(`${this.o.node}.`));
    if (remote.length === 0 || !this.mesh.started) return;
    try {
      await this.mesh.publishAssignment({
        v: 1,
        cluster: this.o.config.name,
        epoch,
        workers: remote.map(([id, tasks]) => ({ id, tasks })),
      });
    } catch (err) {
      this.o.log.debug({ err }, 'assignment not published');
    }
  }

  private async heartbeat(): Promise<void> {
    const sent = performance.now();
    try {
      const mine = await this.registry.heartbeat(
        this.o.config.name,
        this.o.node,
        this.o.agentId,
        this.o.localWorkers().map((w) => w.id),
      );
      if (!mine) await this.registry.upsertNode(this.registration());
      this.heartbeatOkAt = sent;
      this.dbSince ??= sent;
      await this.refreshRegistry();
      this.dbOk = true;
    } catch (err) {
      if (this.dbOk)
        this.o.log.warn({ err: { message: (err as Error).message } }, 'registry heartbeat failed');
      this.dbOk = false;
      this.dbSince = null;
    }
  }

  private async refreshRegistry(): Promise<void> {
    this.records = await this.registry.listNodes(this.o.config.name);
    this.readAt = performance.now();
    this.membership.observeRegistry(this.records);
    const others = this.records.filter((r) => r.name !== this.o.node && r.stoppedAt === null);
    const stale = others.filter((r) => r.heartbeatAgeMs > this.o.config.mesh.nodeDeadAfterMs);
    this.mesh.dialKnown(
      others.flatMap((r) => r.addresses),
      new Set(stale.flatMap((r) => (r.peerId === null ? [] : [r.peerId]))),
    );
    this.checkDeaths();
  }

  /**
   * Declares dead the nodes whose gossip is lost and whose registry heartbeat (its age read
   * from the database, plus the time since) is past nodeDeadAfterMs. Cheap: the agent calls it
   * every 250 ms, so a death is noticed within that of the limit, not at the next registry read.
   */
  checkDeaths(): void {
    if (!this.registryCurrent()) return;
    let changed = false;
    for (const r of this.records) {
      const isDead = r.name !== this.o.node && this.membership.state(r.name) === 'dead';
      if (isDead && !this.dead.has(r.name)) {
        this.dead.add(r.name);
        changed = true;
        const view = this.membership.snapshot().find((v) => v.node === r.name);
        this.o.log.warn({ node: r.name, view }, 'node declared dead');
      } else if (!isDead) this.dead.delete(r.name);
    }
    if (changed) this.o.onDeath();
  }

  /**
   * Whether this agent read the registry within two heartbeat periods. Heartbeat ages are read
   * from the database; judging deaths from an old read (this agent's own calls slowed down by
   * load) would take every node for dead.
   */
  private registryCurrent(): boolean {
    return performance.now() - this.readAt < 2 * this.o.config.mesh.heartbeatIntervalMs;
  }

  /**
   * Whether this agent had peers and is now cut off from them: no connection left, or no advert
   * of any other node heard for GOSSIP_SILENCE advert periods. Others judge this node by its
   * adverts, so gossip silence is what matters; it also shows a link that is down but not yet
   * closed (libp2p notices that only at its next ping).
   */
  peersLost(peers: number): boolean {
    if (peers > 0) this.everConnected = true;
    const silence = GOSSIP_SILENCE * this.o.config.mesh.advertIntervalMs;
    const silent =
      this.lastPeerAdvertAt !== null && performance.now() - this.lastPeerAdvertAt > silence;

    return this.everConnected && (peers === 0 || silent);
  }

  /** ms since the send time of the last registry heartbeat that succeeded. */
  msSinceHeartbeat(): number {
    return performance.now() - this.heartbeatOkAt;
  }

  registryRecords(): NodeRecord[] {
    return this.records;
  }

  /**
   * Fresh adverts of nodes that are alive: a fresh advert from a peer whose connection just
   * dropped (a node killed a moment ago) would otherwise keep receiving tasks until it ages out.
   */
  liveAdverts(): CapacityAdvert[] {
    return this.membership.freshAdverts().filter((a) => this.membership.state(a.node) === 'alive');
  }

  /**
   * Nodes that are dead: gossip silent AND registry heartbeat stale. Only once this
   * agent itself has reached the database without a break for nodeDeadAfterMs: right after a
   * database outage every heartbeat is stale, and live nodes need that long to beat again.
   */
  async deadNodes(): Promise<string[]> {
    const since = this.dbSince;
    if (since === null || performance.now() - since < this.o.config.mesh.nodeDeadAfterMs) return [];
    if (!this.registryCurrent()) return [];

    return this.records
      .filter((r) => r.name !== this.o.node && this.membership.state(r.name) === 'dead')
      .map((r) => r.name);
  }

  /** Gossip messages dropped, by reason: the mesh's (on receipt) and stale adverts. */
  dropped(): Record<string, number> {
    return { ...this.mesh.stats().dropped, stale: this.stale };
  }

  adverts(): CapacityAdvert[] {
    return this.membership.freshAdverts();
  }

  async stop(): Promise<void> {
    clearInterval(this.advertTimer);
    clearTimeout(this.trailingAdvert);
    clearInterval(this.heartbeatTimer);
    await this.advertise(true).catch(() => undefined);
    await this.registry
      .markStopped(this.o.config.name, this.o.node, this.o.agentId)
      .catch((err) => this.o.log.warn({ err }, 'could not mark the node stopped'));
    await this.mesh.stop();
  }
}

function freeSlots(a: CapacityAdvert): number {
  return a.workers.reduce((n, w) => n + w.freeSlots, 0);
}
