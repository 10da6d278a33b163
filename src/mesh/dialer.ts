import { multiaddr, type Multiaddr } from '@multiformats/multiaddr';
import type { Logger } from '../log.js';
import { rankPeers } from './peer-choice.js';

/**
 * Keeps this node connected to every peer it knows of: the configured bootstrap addresses and
 * the addresses the agent reads from the node registry. libp2p itself re-dials a KEEP_ALIVE
 * peer only a fixed number of times and never dials a peer it has not met, so a peer that
 * restarts after a long outage, or joins through the registry, is reached from here.
 *
 * A target that is not connected is dialed at once, then again after 250 ms, 500 ms, 1 s, …,
 * at most every MAX_RETRY_MS; a successful connection resets the delay.
 *
 * In a large cluster a node dials only `maxKnownPeers` of the registry's peers (chosen by
 * peer-choice.ts, so that the connections of all nodes form one connected graph); others reach
 * it by dialing it, and gossip crosses the rest. A chosen peer that keeps failing does not use
 * up a place: the next one in rank is dialed too.
 */

/** First retry delay after a failed dial (ms); doubles per failure. */
export const FIRST_RETRY_MS = 250;
/** Longest delay between two dials of one unreachable peer (ms). */
export const MAX_RETRY_MS = 5000;
/** A dial that has not connected after this long counts as failed (ms). */
export const DIAL_TIMEOUT_MS = 5000;
/** A chosen peer with this many failed dials in a row no longer uses up a place. */
const FAILING_AFTER = 2;

export interface DialerOptions {
  /** Dials all addresses of one peer; resolves with the remote peer id. */
  dial: (addrs: Multiaddr[], signal: AbortSignal) => Promise<string>;
  isConnected: (peerId: string) => boolean;
  /** This node's peer id: its own addresses are never dialed. */
  selfPeerId: string;
  log: Logger;
  /** Monotonic clock (ms); performance.now() by default. */
  now?: () => number;
  /** Registry peers dialed at most (bootstrap addresses are always dialed); all by default. */
  maxKnownPeers?: number;
}

export interface DialTarget {
  /** Peer id when the addresses name one (`/p2p/<id>`) or a dial has revealed it. */
  peerId: string | null;
  addrs: string[];
  source: 'bootstrap' | 'known';
  failures: number;
  connected: boolean;
  /** Whether the dialer currently dials it (bootstrap, or a registry peer within the budget). */
  chosen: boolean;
}

interface Target {
  key: string;
  peerId: string | null;
  addrs: Multiaddr[];
  source: 'bootstrap' | 'known';
  failures: number;
  nextDialAt: number;
  dialing: boolean;
}

export class Dialer {
  private readonly options: DialerOptions;
  private readonly now: () => number;
  private readonly log: Logger;
  private bootstrap = new Map<string, Target>();
  private known = new Map<string, Target>();
  /** Keys of `known`, best first (see peer-choice.ts). */
  private order: string[] = [];
  private readonly badAddrs = new Set<string>();
  private stopped = false;
  private readonly pending = new Set<AbortController>();

  constructor(options: DialerOptions) {
    this.options = options;
    this.now = options.now ?? (() => performance.now());
    this.log = options.log;
  }

  setBootstrap(addrs: readonly string[]): void {
    this.bootstrap = this.merge(this.bootstrap, addrs, 'bootstrap');
  }

  /**
   * Replaces the registry-provided addresses; peers no longer listed are no longer dialed.
   * `stale` holds the peer ids whose registry heartbeat is old: they are chosen last.
   */
  setKnown(addrs: readonly string[], stale: ReadonlySet<string> = new Set()): void {
    this.known = this.merge(this.known, addrs, 'known');
    const byPeer = new Map<string, string>();
    const anonymous: string[] = [];
    for (const [key, t] of this.known) {
      if (t.peerId === null) anonymous.push(key);
      else byPeer.set(t.peerId, key);
    }
    const ranked = rankPeers(this.options.selfPeerId, [...byPeer.keys()], stale);
    this.order = [...ranked.map((p) => byPeer.get(p)!), ...anonymous];
  }

  /** A peer connected (by anyone's dial): its next disconnect is retried without delay. */
  peerConnected(peerId: string): void {
    for (const target of this.all()) {
      if (target.peerId === peerId) {
        target.failures = 0;
        target.nextDialAt = 0;
      }
    }
  }

  /** Dials every target that is disconnected, not being dialed, and past its backoff. */
  tick(): void {
    if (this.stopped) return;

    const now = this.now();
    for (const target of this.chosen()) {
      if (target.dialing || now < target.nextDialAt) continue;
      if (target.peerId !== null && this.options.isConnected(target.peerId)) continue;
      void this.dial(target);
    }
  }

  /** Aborts dials in flight and dials nothing more. */
  stop(): void {
    this.stopped = true;
    for (const controller of this.pending) controller.abort();
    this.pending.clear();
  }

  targets(): DialTarget[] {
    const chosen = new Set(this.chosen());

    return this.all().map((t) => ({
      peerId: t.peerId,
      addrs: t.addrs.map((a) => a.toString()),
      source: t.source,
      failures: t.failures,
      connected: t.peerId !== null && this.options.isConnected(t.peerId),
      chosen: chosen.has(t),
    }));
  }

  /** Bootstrap targets, then registry peers in rank until the budget is used. */
  private chosen(): Target[] {
    const out = [...this.bootstrap.values()];
    const max = this.options.maxKnownPeers ?? Infinity;
    let used = 0;
    for (const key of this.order) {
      if (used >= max) break;
      const target = this.known.get(key);
      if (!target || this.bootstrap.has(key)) continue;
      out.push(target);
      if (target.failures < FAILING_AFTER) used += 1;
    }

    return out;
  }

  private all(): Target[] {
    const seen = new Map<string, Target>(this.bootstrap);
    for (const [key, target] of this.known) if (!seen.has(key)) seen.set(key, target);

    return [...seen.values()];
  }

  private async dial(target: Target): Promise<void> {
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), DIAL_TIMEOUT_MS);
    this.pending.add(controller);
    target.dialing = true;
    try {
      const peerId = await this.options.dial(target.addrs, controller.signal);
      target.peerId = peerId;
      target.failures = 0;
      target.nextDialAt = 0;
    } catch (err) {
      target.failures += 1;
      const delay = Math.min(MAX_RETRY_MS, FIRST_RETRY_MS * 2 ** (target.failures - 1));
      target.nextDialAt = this.now() + delay;
      if (!this.stopped) {
        this.log.debug(
          { err, peer_id: target.peerId, addrs: target.key, failures: target.failures, delay },
          'peer dial failed',
        );
      }
    } finally {
      clearTimeout(timer);
      this.pending.delete(controller);
      target.dialing = false;
    }
  }

  /**
   * Groups addresses by peer id (addresses without one stand alone), keeping the backoff state
   * of targets that were already known.
   */
  private merge(
    previous: Map<string, Target>,
    addrs: readonly string[],
    source: Target['source'],
  ): Map<string, Target> {
    const grouped = new Map<string, { peerId: string | null; addrs: Multiaddr[] }>();
    for (const text of addrs) {
      const addr = this.parse(text);
      if (addr === null) continue;

      const peerId = addr.getPeerId();
      if (peerId === this.options.selfPeerId) continue;

      const key = peerId ?? addr.toString();
      const group = grouped.get(key) ?? { peerId, addrs: [] };
      if (!group.addrs.some((a) => a.equals(addr))) group.addrs.push(addr);
      grouped.set(key, group);
    }

    const next = new Map<string, Target>();
    for (const [key, group] of grouped) {
      const old = previous.get(key);
      if (old) {
        old.addrs = group.addrs;
        next.set(key, old);
      } else {
        next.set(key, {
          key,
          peerId: group.peerId,
          addrs: group.addrs,
          source,
          failures: 0,
          nextDialAt: 0,
          dialing: false,
        });
      }
    }

    return next;
  }

  private parse(text: string): Multiaddr | null {
    try {
      return multiaddr(text);
    } catch (err) {
      if (!this.badAddrs.has(text) && this.badAddrs.size < 1000) {
        this.badAddrs.add(text);
        this.log.warn({ err, addr: text }, 'ignoring invalid peer address');
      }

      return null;
    }
  }
}
