import { noise } from '@chainsafe/libp2p-noise';
import { yamux } from '@chainsafe/libp2p-yamux';
import { gossipsub, type GossipSub } from '@chainsafe/libp2p-gossipsub';
import { identify } from '@libp2p/identify';
import type { Identify } from '@libp2p/identify';
import type { Libp2p, PrivateKey, PubSub } from '@libp2p/interface';
import { ping, type Ping } from '@libp2p/ping';
import { preSharedKey } from '@libp2p/pnet';
import { tcp } from '@libp2p/tcp';
import { createLibp2p } from 'libp2p';
import { clusterKeyToPsk } from './key.js';

/**
 * Tuning of the libp2p node. Each number was chosen on Node 20 with libp2p 2.10 (see
 * /work/shared/stack.md §3): the defaults detect a frozen peer only after 9–15 s and use up all
 * reconnect retries within 30 ms.
 */
export const MeshNodeTuning = {
  /**
   * Ping every connection this often (ms); a frozen peer is dropped within about 8 s. Each ping
   * opens a stream, which costs more than an advert, and a node has a dozen connections; a
   * dead or cut-off node is told by its silence on gossip (adverts every second), not by pings.
   */
  pingIntervalMs: 5000,
  /**
   * Shortest ping timeout (ms); the adaptive timeout grows from here on slow links. Short ones
   * closed healthy connections of busy agents (30 on one 2-core host), whose re-dials made
   * them busier still.
   */
  pingMinTimeoutMs: 3000,
  /** Longest ping timeout (ms). */
  pingMaxTimeoutMs: 10000,
  /** libp2p re-dials a KEEP_ALIVE peer this many times after it disconnects. */
  reconnectRetries: 8,
  /** First re-dial delay (ms), multiplied by reconnectBackoffFactor per try. */
  reconnectRetryIntervalMs: 500,
  reconnectBackoffFactor: 1.5,
  /**
   * Inbound connections accepted per second from one IP. The default, 5, makes 30 agents on one
   * host (the local test bed) refuse each other at start-up.
   */
  inboundConnectionThreshold: 200,
  /** Inbound connections still in their handshake at once (default 10). */
  maxIncomingPendingConnections: 100,
  /**
   * Gossipsub mesh degree (default 6), with its low and high marks and the number of peers sent
   * gossip about recent messages each heartbeat. Every node receives each message about D times
   * and every node publishes an advert each second, so the mesh's cost grows with D × the number
   * of nodes; 4 still leaves each node several disjoint paths.
   */
  gossipD: 4,
  gossipDlo: 3,
  gossipDhi: 8,
  gossipDlazy: 4,
  /**
   * IDONTWANT notices (gossipsub 1.2) are sent for messages at least this big. They pay off for
   * large messages; for adverts of a few hundred bytes they would double the traffic.
   */
  idontwantMinDataSize: 64 * 1024,
} as const;

export interface MeshNodeOptions {
  /** Listen multiaddrs, e.g. `/ip4/0.0.0.0/tcp/4001`. */
  listen: string[];
  /** 64 hex characters; when set, only peers with the same key can connect. */
  clusterKey?: string;
  /** Identity of the node; a new Ed25519 key is generated when absent. */
  privateKey?: PrivateKey;
}

export type MeshServices = {
  pubsub: PubSub;
  identify: Identify;
  ping: Ping;
};

export type MeshNode = Libp2p<MeshServices>;

/**
 * A libp2p node as Pampa uses it: TCP + noise + yamux, optional pre-shared key, identify, ping
 * (the connection monitor needs it on both sides) and gossipsub with strict signing. The node is
 * returned not yet started.
 */
export async function createMeshNode(options: MeshNodeOptions): Promise<MeshNode> {
  const t = MeshNodeTuning;

  return createLibp2p({
    start: false,
    privateKey: options.privateKey,
    addresses: { listen: options.listen },
    transports: [tcp()],
    connectionEncrypters: [noise()],
    streamMuxers: [yamux()],
    connectionProtector:
      options.clusterKey === undefined
        ? undefined
        : preSharedKey({ psk: clusterKeyToPsk(options.clusterKey) }),
    connectionManager: {
      reconnectRetries: t.reconnectRetries,
      reconnectRetryInterval: t.reconnectRetryIntervalMs,
      reconnectBackoffFactor: t.reconnectBackoffFactor,
      inboundConnectionThreshold: t.inboundConnectionThreshold,
      maxIncomingPendingConnections: t.maxIncomingPendingConnections,
    },
    connectionMonitor: {
      pingInterval: t.pingIntervalMs,
      pingTimeout: { minTimeout: t.pingMinTimeoutMs, maxTimeout: t.pingMaxTimeoutMs },
    },
    services: {
      identify: identify(),
      ping: ping(),
      pubsub: gossipsub({
        globalSignaturePolicy: 'StrictSign',
        allowPublishToZeroTopicPeers: true,
        emitSelf: false,
        D: t.gossipD,
        Dlo: t.gossipDlo,
        Dhi: t.gossipDhi,
        Dlazy: t.gossipDlazy,
        idontwantMinDataSize: t.idontwantMinDataSize,
        // Peer scoring defends public networks against strangers. Its IP colocation penalty
        // scores down every peer beyond the tenth from one address and graylists them a few
        // peers later (agents sharing a host or a NAT address stopped hearing each other); its
        // behaviour penalty graylists a peer after a few late IWANT answers, which a busy agent
        // gives. Members of a Pampa cluster are its own machines (with a cluster key, only
        // those), so neither applies.
        scoreParams: { IPColocationFactorWeight: 0, behaviourPenaltyWeight: 0 },
      }),
    },
  });
}

/**
 * gossipsub() is typed as a plain PubSub; the mesh-peer list and graft events live on the
 * GossipSub class.
 */
export function gossipOf(node: MeshNode): GossipSub {
  return node.services.pubsub as unknown as GossipSub;
}
