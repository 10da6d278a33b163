import '../src/polyfills.js';
import assert from 'node:assert/strict';
import { afterEach, describe, it } from 'node:test';
import type { Connection, Stream } from '@libp2p/interface';
import { peerIdFromString } from '@libp2p/peer-id';
import { advertTopic } from '../src/mesh/messages.js';
import { gossipOf } from '../src/mesh/node.js';
import { waitFor } from './helpers/fixture.js';
import { CLUSTER, TestAgent, othersHeard } from './helpers/mesh.js';

/**
 * Fault kind "gossip stall": a libp2p connection stays open (pings still pass) while the
 * gossipsub streams on it are gone, so a peer falls silent although connected. gossipsub only
 * opens its streams when a connection opens, so nothing but the mesh's silent-peer repair
 * brings adverts back. Without the repair these tests time out with the connection still open.
 */

/** Longest wait for adverts after a stall: the repair's 5 s grace plus a reconnect, under load. */
const RECOVERY_MS = 45_000;

/** a and b, b bootstrapped from a, hearing each other's adverts. */
async function pair(agents: TestAgent[]): Promise<[TestAgent, TestAgent]> {
  const a = await new TestAgent('a').start();
  agents.push(a);
  const b = await new TestAgent('b', { bootstrap: a.mesh.multiaddrs() }).start();
  agents.push(b);
  await waitFor('adverts both ways', () => othersHeard([a, b]));

  return [a, b];
}

/** The gossipsub streams of x's connection to y, and that connection. */
function gossipStreams(x: TestAgent, y: TestAgent) {
  const [connection] = x.libp2p().getConnections(peerIdFromString(y.mesh.peerId));
  assert.ok(connection, `${x.node} is connected to ${y.node}`);
  const streams = connection.streams.filter((s: Stream) => s.protocol?.startsWith('/meshsub/'));
  assert.equal(streams.length, 2, 'one gossip stream each way');

  return { connection, streams };
}

/** Whether x's gossipsub counts y as a peer subscribed to the advert topic. */
function gossipPeer(x: TestAgent, y: TestAgent): boolean {
  return gossipOf(x.libp2p())
    .getSubscribers(advertTopic(CLUSTER))
    .some((p) => p.toString() === y.mesh.peerId);
}

/**
 * With x and y's connection still open (the stall), waits until they hear each other again
 * through adverts sent after it.
 */
async function heardAgain(
  [x, y]: [TestAgent, TestAgent],
  connection: Connection,
  timeoutMs = RECOVERY_MS,
): Promise<void> {
  assert.equal(connection.status, 'open', 'the stall keeps the connection');
  const stalledAt = performance.now();

  await waitFor(
    'adverts both ways after the stall',
    () => othersHeard([x, y], stalledAt),
    timeoutMs,
  );
}

describe('Mesh silent-peer repair (gossip stall)', () => {
  const agents: TestAgent[] = [];

  afterEach(async () => {
    await Promise.all(agents.splice(0).map((a) => a.stop()));
  });

  it('both gossip streams of a connection reset, the connection open: adverts flow again', async () => {
    const [a, b] = await pair(agents);
    const { connection, streams } = gossipStreams(a, b);

    for (const s of streams) s.abort(new Error('test: gossip stream lost'));
    await waitFor('both sides to drop the other as a gossip peer', () => {
      return !gossipPeer(a, b) && !gossipPeer(b, a);
    });

    await heardAgain([a, b], connection);
    assert.ok(gossipPeer(a, b) && gossipPeer(b, a));
  });

  it('one gossip stream reset: the side that lost its peer repairs, both hear again', async () => {
    const [a, b] = await pair(agents);
    const { connection, streams } = gossipStreams(a, b);

    // a's outbound stream: b sees its inbound reset and drops a; a still counts b as a peer.
    streams.find((s) => s.direction === 'outbound')!.abort(new Error('test: gossip stream lost'));
    await waitFor('b to drop a as a gossip peer', () => !gossipPeer(b, a));
    assert.ok(gossipPeer(a, b), 'a still takes b for a gossip peer');

    await heardAgain([a, b], connection);
  });

  // gossipsub keeps a stream that ended cleanly (FIN, no reset) in its maps, so the repair,
  // which looks for a peer's streams in those maps, takes the peer for healthy. A clean end is
  // what a stream gets when its connection is closed gracefully, as when the connection manager
  // prunes one of two connections between the same peers.
  it('one gossip stream closed cleanly, the connection open: adverts flow again', async () => {
    const [a, b] = await pair(agents);
    const { connection, streams } = gossipStreams(a, b);

    await streams.find((s) => s.direction === 'outbound')!.close();

    await heardAgain([a, b], connection);
  });
});
