import type { CapacityAdvert } from './types.js';

/**
 * Who is in the cluster, from three signals: the last capacity advert of each node (gossip),
 * whether its libp2p connection is up, and its heartbeat age in the node registry (PostgreSQL).
 * Pure bookkeeping: no timers, no I/O, and time comes from an injected monotonic clock, so the
 * state rules below can be tested step by step.
 *
 * - alive: an advert younger than advertTtlMs, and the node's peer not seen disconnected since.
 * - suspect: not alive, but either the advert or the registry heartbeat is still fresh (a
 *   frozen or partitioned node, or one that has not gossiped yet).
 * - dead: the advert is stale (or absent) and the registry heartbeat is older than
 *   nodeDeadAfterMs (or absent); or the registry says the agent stopped cleanly.
 */

/** Gossip copies of an advert sent before a connection dropped arrive within this (ms). */
const GOSSIP_IN_FLIGHT_MS = 500;

export type NodeState = 'alive' | 'suspect' | 'dead';

export type AdvertVerdict = 'accepted' | 'stale';

export interface MembershipOptions {
  /** An advert older than this no longer proves the node alive (ms). */
  advertTtlMs: number;
  /** A node whose registry heartbeat is older than this, with gossip silent, is dead (ms). */
  nodeDeadAfterMs: number;
  /** Monotonic clock in ms; performance.now() by default. */
  now?: () => number;
}

/** What membership needs from a node registry row (registry.ts NodeRecord fits). */
export interface RegistryHeartbeat {
  name: string;
  agentId: string;
  /** Heartbeat age by the database clock when the row was read (ms). */
  heartbeatAgeMs: number;
  stoppedAt: Date | null;
}

export interface NodeView {
  node: string;
  state: NodeState;
  agentId: string | null;
  peerId: string | null;
  /** ms since the last advert arrived, or null if none did. */
  advertAgeMs: number | null;
  /** null when this agent never had a connection to the node's peer. */
  connected: boolean | null;
  /** Registry heartbeat age now, or null when the node has no registry row. */
  heartbeatAgeMs: number | null;
  stopped: boolean;
  draining: boolean;
}

interface AdvertEntry {
  advert: CapacityAdvert;
  receivedAt: number;
}

interface RegistryEntry {
  row: RegistryHeartbeat;
  observedAt: number;
}

interface SeqEntry {
  seq: number;
  seenAt: number;
}

export class Membership {
  private readonly advertTtlMs: number;
  private readonly nodeDeadAfterMs: number;
  private readonly now: () => number;
  private readonly adverts = new Map<string, AdvertEntry>();
  private readonly registry = new Map<string, RegistryEntry>();
  /** Per peer id: whether the connection is up, and since when (monotonic ms). */
  private readonly connections = new Map<string, { up: boolean; at: number }>();
  private readonly seqs = new Map<string, SeqEntry>();

  constructor(options: MembershipOptions) {
    this.advertTtlMs = options.advertTtlMs;
    this.nodeDeadAfterMs = options.nodeDeadAfterMs;
    this.now = options.now ?? (() => performance.now());
  }

  /**
   * Records an advert unless its seq is not newer than the last one seen from the same agent
   * (a replay, or gossip delivering an old copy late).
   */
  observeAdvert(advert: CapacityAdvert): AdvertVerdict {
    const now = this.now();
    const last = this.seqs.get(advert.agentId);
    if (last !== undefined && advert.seq <= last.seq) return 'stale';

    this.seqs.set(advert.agentId, { seq: advert.seq, seenAt: now });
    this.adverts.set(advert.node, { advert, receivedAt: now });
    this.pruneSeqs(now);

    return 'accepted';
  }

  peerConnected(peerId: string): void {
    this.connections.set(peerId, { up: true, at: this.now() });
  }

  peerDisconnected(peerId: string): void {
    this.connections.set(peerId, { up: false, at: this.now() });
  }

  /** Replaces the registry view with a fresh read of the nodes table. */
  observeRegistry(rows: readonly RegistryHeartbeat[]): void {
    const now = this.now();
    this.registry.clear();
    for (const row of rows) this.registry.set(row.name, { row, observedAt: now });
  }

  /** Drops everything known about a node (e.g. removed from the cluster). */
  forget(node: string): void {
    const entry = this.adverts.get(node);
    if (entry) this.seqs.delete(entry.advert.agentId);
    this.adverts.delete(node);
    this.registry.delete(node);
  }

  state(node: string): NodeState {
    return this.view(node, this.now()).state;
  }

  /** The last advert accepted from a node, however old. */
  lastAdvert(node: string): CapacityAdvert | undefined {
    return this.adverts.get(node)?.advert;
  }

  /** Adverts younger than advertTtlMs from nodes that are not draining, ordered by node. */
  freshAdverts(): CapacityAdvert[] {
    const now = this.now();
    const fresh: CapacityAdvert[] = [];
    for (const { advert, receivedAt } of this.adverts.values()) {
      if (now - receivedAt < this.advertTtlMs && !advert.draining) fresh.push(advert);
    }

    return fresh.sort((a, b) => (a.node < b.node ? -1 : a.node > b.node ? 1 : 0));
  }

  /** Every node known from gossip or the registry, by name. */
  nodes(): string[] {
    return [...new Set([...this.adverts.keys(), ...this.registry.keys()])].sort();
  }

  /** State of every known node, for the status page and the dispatcher. */
  snapshot(): NodeView[] {
    const now = this.now();

    return this.nodes().map((node) => this.view(node, now));
  }

  private view(node: string, now: number): NodeView {
    const entry = this.adverts.get(node);
    const reg = this.registry.get(node);
    const advertAgeMs = entry ? now - entry.receivedAt : null;
    const heartbeatAgeMs = reg ? reg.row.heartbeatAgeMs + (now - reg.observedAt) : null;
    const link = entry ? this.connections.get(entry.advert.peerId) : undefined;
    const connected = link ? link.up : null;
    // In a large cluster a node is not connected to every peer: an advert that arrived through
    // gossip after the direct connection went down shows the node alive all the same; copies
    // still in flight when a node dies arrive within moments, hence the margin.
    const heardSinceDrop =
      link !== undefined && !link.up && entry!.receivedAt > link.at + GOSSIP_IN_FLIGHT_MS;

    const advertFresh = advertAgeMs !== null && advertAgeMs < this.advertTtlMs;
    const registryFresh = heartbeatAgeMs !== null && heartbeatAgeMs < this.nodeDeadAfterMs;
    // A stopped row only counts for the agent that stopped: a fresh advert from a new agent
    // under the same name means the node restarted before we re-read the registry.
    const restarted =
      advertFresh && entry !== undefined && entry.advert.agentId !== reg?.row.agentId;
    const stopped = reg !== undefined && reg.row.stoppedAt !== null && !restarted;

    let state: NodeState;
    if (stopped) state = 'dead';
    else if (advertFresh && (connected !== false || heardSinceDrop)) state = 'alive';
    // Gossip silent or the connection gone, and the registry stale too: dead. A fresh registry
    // heartbeat keeps a node it cannot hear merely suspect (gossip loss alone proves nothing).
    else if (registryFresh) state = 'suspect';
    // Never heard through gossip at all (this agent may still be joining the mesh): only a
    // heartbeat three times past the limit proves such a node dead.
    else if (
      entry === undefined &&
      heartbeatAgeMs !== null &&
      heartbeatAgeMs < 3 * this.nodeDeadAfterMs
    )
      state = 'suspect';
    else state = 'dead';

    return {
      node,
      state,
      agentId: entry?.advert.agentId ?? reg?.row.agentId ?? null,
      peerId: entry?.advert.peerId ?? null,
      advertAgeMs,
      connected,
      heartbeatAgeMs,
      stopped,
      draining: entry?.advert.draining ?? false,
    };
  }

  /**
   * Forgets seq numbers of agents not heard from for a long time (restarted agents get new ids),
   * and connection flags of peers no advert names, so both maps stay bounded.
   */
  private pruneSeqs(now: number): void {
    if (this.seqs.size <= 2 * this.adverts.size + 16) return;

    const current = new Set([...this.adverts.values()].map((e) => e.advert.agentId));
    const horizon = 10 * Math.max(this.advertTtlMs, this.nodeDeadAfterMs);
    for (const [agentId, entry] of this.seqs) {
      if (!current.has(agentId) && now - entry.seenAt > horizon) this.seqs.delete(agentId);
    }

    const peers = new Set([...this.adverts.values()].map((e) => e.advert.peerId));
    for (const peerId of this.connections.keys()) {
      if (!peers.has(peerId)) this.connections.delete(peerId);
    }
  }
}
