import { EventEmitter } from 'node:events';
import { generateKeyPair } from '@libp2p/crypto/keys';
import {
  KEEP_ALIVE,
  TopicValidatorResult,
  type Message,
  type PeerId,
  type PrivateKey,
} from '@libp2p/interface';
import { peerIdFromString } from '@libp2p/peer-id';
import { componentLogger, type Logger } from '../log.js';
import { Dialer, type DialTarget } from './dialer.js';
import {
  DROP_REASONS,
  advertTopic,
  assignmentTopic,
  decodeAdvert,
  decodeAssignment,
  encodeAdvert,
  encodeAssignment,
  type Decoded,
  type DropReason,
} from './messages.js';
import { createMeshNode, gossipOf, type MeshNode } from './node.js';
import type { AssignmentMessage, CapacityAdvert } from './types.js';

/** How often known-but-disconnected peers are checked for a re-dial (ms). */
const REDIAL_TICK_MS = 250;
/**
 * A connected peer that gossip does not see subscribed for this long is hung up on, so the
 * dialer connects afresh (ms). Seen under load: two agents dial each other at once, one of the
 * two connections is pruned, and gossipsub's streams went with it while the other stayed up.
 */
const UNSUBSCRIBED_GRACE_MS = 5000;
/** "Published to no peer" is logged at most this often (ms). */
const NO_PEERS_LOG_MS = 10_000;

export interface MeshOptions {
  /** Cluster name: namespaces the topics; messages of other clusters are dropped. */
  cluster: string;
  /** libp2p listen multiaddrs, e.g. `/ip4/0.0.0.0/tcp/4001`. */
  listen: string[];
  /** Multiaddrs with `/p2p/<peer id>`, dialed at start and re-dialed while disconnected. */
  bootstrap?: string[];
  /** 64 hex characters; peers without the same key cannot connect. */
  clusterKey?: string;
  /** Identity; generated once per Mesh instance when absent (kept across stop/start). */
  privateKey?: PrivateKey;
  /** Registry peers this node dials at most (see dialer.ts); all of them by default. */
  maxDialPeers?: number;
  log?: Logger;
}

export interface MeshEvents {
  advert: [advert: CapacityAdvert, from: string];
  assignment: [message: AssignmentMessage, from: string];
  'peer:connect': [peerId: string];
  'peer:disconnect': [peerId: string];
}

export interface MeshStats {
  /** Peers with an open connection. */
  peers: number;
  /** Gossipsub mesh peers on the advert topic. */
  meshSize: number;
  /** Received messages dropped, by reason. */
  dropped: Record<DropReason, number>;
  /** Valid messages received (both topics). */
  received: number;
  /** Messages this node published (both topics). */
  published: number;
}

interface Decoders {
  advert: string;
  assignment: string;
}

type Accepted =
  { topic: 'advert'; value: CapacityAdvert } | { topic: 'assignment'; value: AssignmentMessage };

/**
 * The agent's gossip endpoint: a libp2p node subscribed to the cluster's advert and assignment
 * topics. Every received message is decoded and validated in gossipsub's topic validator, so an
 * invalid one is neither delivered nor forwarded; valid ones are emitted as events.
 *
 * start() and stop() are idempotent; a start that fails stops whatever it had started.
 */
export class Mesh extends EventEmitter<MeshEvents> {
  private readonly options: MeshOptions;
  private readonly log: Logger;
  private readonly topics: Decoders;
  private privateKey: PrivateKey | undefined;
  private node: MeshNode | undefined;
  private dialer: Dialer | undefined;
  private timer: NodeJS.Timeout | undefined;
  private starting: Promise<void> | undefined;
  private known: string[] = [];
  private staleKnown: ReadonlySet<string> = new Set();
  private readonly decoded = new WeakMap<Message, Accepted>();
  private readonly dropped = Object.fromEntries(DROP_REASONS.map((r) => [r, 0])) as Record<
    DropReason,
    number
  >;
  private received = 0;
  private published = 0;
  private lastNoPeersLog = -Infinity;
  /** Connected peers not (yet) seen subscribed, with since when (monotonic ms). */
  private readonly unsubscribedSince = new Map<string, number>();
  private repairs = 0;

  constructor(options: MeshOptions) {
    super();
    this.options = options;
    this.privateKey = options.privateKey;
    this.log = options.log ?? componentLogger('mesh', { cluster: options.cluster });
    this.topics = {
      advert: advertTopic(options.cluster),
      assignment: assignmentTopic(options.cluster),
    };
  }

  get started(): boolean {
    return this.node !== undefined;
  }

  /** This node's peer id; throws before the first start. */
  get peerId(): string {
    if (!this.node) throw new Error('mesh is not started: peerId is known after start()');

    return this.node.peerId.toString();
  }

  /** Listen addresses with `/p2p/<peer id>`, as other agents should dial them. */
  multiaddrs(): string[] {
    return this.node ? this.node.getMultiaddrs().map((a) => a.toString()) : [];
  }

  async start(): Promise<void> {
    if (this.node) return;
    if (this.starting) return this.starting;

    this.starting = this.startNode().finally(() => {
      this.starting = undefined;
    });

    return this.starting;
  }

  async stop(): Promise<void> {
    if (this.starting) await this.starting.catch(() => undefined);
    const node = this.node;
    if (!node) return;

    this.node = undefined;
    clearInterval(this.timer);
    this.timer = undefined;
    this.dialer?.stop();
    this.dialer = undefined;
    await this.teardown(node);
    this.log.info({ peer_id: node.peerId.toString() }, 'mesh stopped');
  }

  /**
   * Addresses of the other agents (from the node registry), replacing the previous list. They
   * are dialed at once and re-dialed while disconnected, backing off to one try per 5 s; beyond
   * maxDialPeers only the best-ranked are (peers in `stale`, with an old heartbeat, rank last).
   */
  dialKnown(addrs: readonly string[], stale: ReadonlySet<string> = new Set()): void {
    this.known = [...addrs];
    this.staleKnown = stale;
    this.dialer?.setKnown(this.known, this.staleKnown);
    this.dialer?.tick();
  }

  /** Publishes an advert; resolves with the number of peers it was sent to (0 is fine). */
  async publishAdvert(advert: CapacityAdvert): Promise<number> {
    return this.publish(this.topics.advert, encodeAdvert(advert));
  }

  async publishAssignment(message: AssignmentMessage): Promise<number> {
    return this.publish(this.topics.assignment, encodeAssignment(message));
  }

  /** Peer ids with an open connection. */
  connectedPeers(): string[] {
    return this.node ? this.node.getPeers().map((p) => p.toString()) : [];
  }

  /** Bootstrap and registry peers this node keeps dialing, with their failure counts. */
  dialTargets(): DialTarget[] {
    return this.dialer ? this.dialer.targets() : [];
  }

  stats(): MeshStats {
    const node = this.node;

    return {
      peers: node ? node.getPeers().length : 0,
      meshSize: node ? gossipOf(node).getMeshPeers(this.topics.advert).length : 0,
      dropped: { ...this.dropped },
      received: this.received,
      published: this.published,
    };
  }

  private async startNode(): Promise<void> {
    this.privateKey ??= await generateKeyPair('Ed25519');
    const node = await createMeshNode({
      listen: this.options.listen,
      clusterKey: this.options.clusterKey,
      privateKey: this.privateKey,
    });

    try {
      const pubsub = node.services.pubsub;
      pubsub.topicValidators.set(this.topics.advert, this.validate);
      pubsub.topicValidators.set(this.topics.assignment, this.validate);
      pubsub.addEventListener('message', this.onMessage);
      node.addEventListener('peer:connect', this.onPeerConnect);
      node.addEventListener('peer:disconnect', this.onPeerDisconnect);

      await node.start();
      pubsub.subscribe(this.topics.advert);
      pubsub.subscribe(this.topics.assignment);
    } catch (err) {
      await this.teardown(node);
      this.log.error({ err, listen: this.options.listen }, 'mesh start failed');
      throw err;
    }

    this.node = node;
    this.dialer = new Dialer({
      dial: async (addrs, signal) => (await node.dial(addrs, { signal })).remotePeer.toString(),
      isConnected: (peerId) => this.isConnected(peerId),
      selfPeerId: node.peerId.toString(),
      maxKnownPeers: this.options.maxDialPeers,
      log: this.log,
    });
    this.dialer.setBootstrap(this.options.bootstrap ?? []);
    this.dialer.setKnown(this.known, this.staleKnown);
    this.timer = setInterval(() => this.tick(), REDIAL_TICK_MS);
    this.timer.unref();
    this.tick();
    this.log.info(
      { peer_id: node.peerId.toString(), addrs: this.multiaddrs(), private: this.isPrivate() },
      'mesh started',
    );
  }

  private async teardown(node: MeshNode): Promise<void> {
    const pubsub = node.services.pubsub;
    pubsub.removeEventListener('message', this.onMessage);
    node.removeEventListener('peer:connect', this.onPeerConnect);
    node.removeEventListener('peer:disconnect', this.onPeerDisconnect);
    pubsub.topicValidators.delete(this.topics.advert);
    pubsub.topicValidators.delete(this.topics.assignment);
    try {
      await node.stop();
    } catch (err) {
      this.log.warn({ err }, 'libp2p node stop failed');
    }
  }

  private isPrivate(): boolean {
    return this.options.clusterKey !== undefined;
  }

  private isConnected(peerId: string): boolean {
    const node = this.node;
    if (!node) return false;

    try {
      return node.getConnections(peerIdFromString(peerId)).length > 0;
    } catch {
      return false;
    }
  }

  private tick(): void {
    try {
      this.dialer?.tick();
      this.repairSilentPeers();
    } catch (err) {
      this.log.warn({ err }, 'peer re-dial round failed');
    }
  }

  /**
   * Hangs up on peers connected for UNSUBSCRIBED_GRACE_MS without a gossip subscription and an
   * open gossip stream both ways.
   */
  private repairSilentPeers(): void {
    const node = this.node;
    if (!node) return;
    const now = performance.now();
    const gossip = gossipOf(node);
    const subscribed = new Set(
      gossip
        .getSubscribers(this.topics.advert)
        .map((p) => p.toString())
        .filter(
          (p) =>
            gossip.streamsOutbound.has(p) &&
            gossip.streamsInbound.has(p) &&
            gossipStreamsOpen(node, p),
        ),
    );
    const connected = new Set(node.getPeers().map((p) => p.toString()));
    for (const peer of this.unsubscribedSince.keys()) {
      if (!connected.has(peer) || subscribed.has(peer)) this.unsubscribedSince.delete(peer);
    }
    for (const peer of connected) {
      if (subscribed.has(peer)) continue;
      const since = this.unsubscribedSince.get(peer);
      if (since === undefined) {
        this.unsubscribedSince.set(peer, now);
      } else if (now - since > UNSUBSCRIBED_GRACE_MS) {
        this.unsubscribedSince.delete(peer);
        this.repairs += 1;
        this.log.warn({ peer }, 'connected peer without gossip; reconnecting');
        void node.hangUp(peerIdFromString(peer)).catch(() => undefined);
      }
    }
  }

  private async publish(topic: string, data: Uint8Array): Promise<number> {
    const node = this.node;
    if (!node) throw new Error('mesh is not started: call start() before publishing');

    try {
      const result = await node.services.pubsub.publish(topic, data);
      this.published += 1;
      if (result.recipients.length === 0) this.logNoPeers(topic);

      return result.recipients.length;
    } catch (err) {
      this.log.warn({ err, topic }, 'gossip publish failed');

      return 0;
    }
  }

  private logNoPeers(topic: string): void {
    const now = performance.now();
    if (now - this.lastNoPeersLog < NO_PEERS_LOG_MS) return;

    this.lastNoPeersLog = now;
    this.log.debug({ topic }, 'published to no peer');
  }

  /** gossipsub topic validator: decides delivery and forwarding, and counts drops. */
  private readonly validate = (_from: PeerId, msg: Message): TopicValidatorResult => {
    try {
      const result = this.decode(msg);
      if (result.ok) return TopicValidatorResult.Accept;

      this.dropped[result.reason] += 1;
      this.log.debug(
        { reason: result.reason, topic: msg.topic, from: fromOf(msg), bytes: msg.data.byteLength },
        'gossip message dropped',
      );

      return result.reason === 'version'
        ? TopicValidatorResult.Ignore
        : TopicValidatorResult.Reject;
    } catch (err) {
      this.dropped.invalid += 1;
      this.log.warn({ err, topic: msg.topic }, 'gossip message validation failed');

      return TopicValidatorResult.Reject;
    }
  };

  private decode(msg: Message): Decoded<unknown> {
    const from = fromOf(msg);
    if (msg.topic === this.topics.advert) {
      const result = decodeAdvert(msg.data, this.options.cluster);
      if (!result.ok) return result;
      // Strict signing proves who published; an advert must describe its own publisher.
      if (result.value.peerId !== from) return { ok: false, reason: 'invalid' };

      this.decoded.set(msg, { topic: 'advert', value: result.value });

      return result;
    }

    if (msg.topic === this.topics.assignment) {
      const result = decodeAssignment(msg.data, this.options.cluster);
      if (result.ok) this.decoded.set(msg, { topic: 'assignment', value: result.value });

      return result;
    }

    return { ok: false, reason: 'wrong-cluster' };
  }

  private readonly onMessage = (event: CustomEvent<Message>): void => {
    try {
      const msg = event.detail;
      const accepted = this.decoded.get(msg);
      if (!accepted) return;

      this.decoded.delete(msg);
      const from = fromOf(msg);
      if (from === null) return;

      this.received += 1;
      if (accepted.topic === 'advert') this.emit('advert', accepted.value, from);
      else this.emit('assignment', accepted.value, from);
    } catch (err) {
      this.log.error({ err }, 'gossip message handler failed');
    }
  };

  private readonly onPeerConnect = (event: CustomEvent<PeerId>): void => {
    try {
      const peer = event.detail;
      const peerId = peer.toString();
      this.dialer?.peerConnected(peerId);
      this.node?.peerStore
        .merge(peer, { tags: { [KEEP_ALIVE]: { value: 1 } } })
        .catch((err: unknown) => this.log.warn({ err, peer_id: peerId }, 'peer tag failed'));
      this.log.debug({ peer_id: peerId }, 'peer connected');
      this.emit('peer:connect', peerId);
    } catch (err) {
      this.log.error({ err }, 'peer connect handler failed');
    }
  };

  private readonly onPeerDisconnect = (event: CustomEvent<PeerId>): void => {
    try {
      const peerId = event.detail.toString();
      this.log.debug({ peer_id: peerId }, 'peer disconnected');
      this.emit('peer:disconnect', peerId);
    } catch (err) {
      this.log.error({ err }, 'peer disconnect handler failed');
    }
  };
}

function fromOf(msg: Message): string | null {
  return msg.type === 'signed' ? msg.from.toString() : null;
}

/**
 * Whether `peer` has, on some connection, a gossip stream this node can still write and one it
 * can still read. gossipsub keeps a stream that ended cleanly (no reset) in its own maps, so
 * being there is not enough; a closed stream leaves the connection's list.
 */
function gossipStreamsOpen(node: MeshNode, peer: string): boolean {
  let writable = false;
  let readable = false;
  for (const connection of node.getConnections(peerIdFromString(peer))) {
    for (const s of connection.streams) {
      if (!s.protocol?.startsWith('/meshsub/') || s.status !== 'open') continue;
      if (s.direction === 'outbound' && s.writeStatus !== 'closing' && s.writeStatus !== 'closed') {
        writable = true;
      }
      if (s.direction === 'inbound' && s.readStatus === 'ready') readable = true;
    }
  }

  return writable && readable;
}
