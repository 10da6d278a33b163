import '../src/polyfills.js';
import assert from 'node:assert/strict';
import { after, describe, it } from 'node:test';
import { generateKeyPair } from '@libp2p/crypto/keys';
import type { PrivateKey } from '@libp2p/interface';
import { multiaddr } from '@multiformats/multiaddr';
import { generateClusterKey } from '../src/mesh/key.js';
import { Mesh } from '../src/mesh/mesh.js';
import {
  MAX_MESSAGE_BYTES,
  advertTopic,
  assignmentTopic,
  encodeAdvert,
} from '../src/mesh/messages.js';
import { createMeshNode, gossipOf } from '../src/mesh/node.js';
import { waitFor } from './helpers/fixture.js';
import { CLUSTER, LOOPBACK, TestAgent, advertOf, log, othersHeard } from './helpers/mesh.js';

describe('Mesh gossip on 127.0.0.1', () => {
  const agents: TestAgent[] = [];
  let aKey: PrivateKey;
  let aPort = '';
  let aAddrs: string[] = [];

  after(async () => {
    await Promise.all(agents.map((a) => a.stop()));
  });

  it('three agents form a mesh and hear each other', async (t) => {
    const began = performance.now();
    aKey = await generateKeyPair('Ed25519');
    const a = await new TestAgent('a', { privateKey: aKey }).start();
    agents.push(a);
    aAddrs = a.mesh.multiaddrs();
    aPort = /\/tcp\/(\d+)\//.exec(aAddrs[0])?.[1] ?? '';
    const [b, c] = await Promise.all([
      new TestAgent('b', { bootstrap: aAddrs }).start(),
      new TestAgent('c', { bootstrap: aAddrs }).start(),
    ]);
    agents.push(b, c);

    await waitFor('adverts from every peer', () => othersHeard(agents));
    const heardMs = performance.now() - began;
    await waitFor('gossipsub meshes', () => agents.every((x) => x.mesh.stats().meshSize >= 1));
    const meshMs = performance.now() - began;
    t.diagnostic(`all adverts heard ${heardMs.toFixed(0)} ms, mesh formed ${meshMs.toFixed(0)} ms`);

    const stats = a.mesh.stats();
    assert.ok(stats.peers >= 2);
    assert.ok(stats.received > 0 && stats.published > 0);
    assert.deepEqual(Object.values(stats.dropped), [0, 0, 0, 0, 0]);
  });

  it('a fourth agent bootstrapped from one address hears everyone', async (t) => {
    const began = performance.now();
    const d = await new TestAgent('d', { bootstrap: aAddrs }).start();
    agents.push(d);
    await waitFor('adverts to and from d', () => othersHeard(agents));
    t.diagnostic(`joined in ${(performance.now() - began).toFixed(0)} ms`);
  });

  it('with registry addresses the rest keep talking after the bootstrap agent stops', async () => {
    const [a, b, c, d] = agents;
    const registry = [b, c, d].flatMap((x) => x.mesh.multiaddrs());
    for (const x of [b, c, d]) x.mesh.dialKnown(registry);
    await waitFor('direct connections', () =>
      [b, c, d].every((x) => [b, c, d].every((y) => x === y || x.connected.has(y.mesh.peerId))),
    );

    await a.stop();
    const stoppedAt = performance.now();
    await waitFor('adverts after a stopped', () => othersHeard([b, c, d], stoppedAt));
    assert.ok(
      ![b, c, d].some((x) => x.mesh.connectedPeers().includes(aAddrs[0].split('/p2p/')[1])),
    );
  });

  it('a restarted bootstrap agent (same key and port) is re-dialed and rejoins', async (t) => {
    const began = performance.now();
    const a = await new TestAgent('a', {
      privateKey: aKey,
      listen: [`/ip4/127.0.0.1/tcp/${aPort}`],
    }).start();
    agents[0] = a;
    await waitFor('adverts to and from the restarted a', () => othersHeard(agents, began));
    t.diagnostic(`rejoined in ${(performance.now() - began).toFixed(0)} ms`);
  });
});

describe('Mesh with a cluster key', () => {
  const agents: TestAgent[] = [];

  after(async () => {
    await Promise.all(agents.map((a) => a.stop()));
  });

  it('connects peers with the same key and never those with another key or none', async () => {
    const key = generateClusterKey();
    const e = await new TestAgent('e', { clusterKey: key }).start();
    agents.push(e);
    const addrs = e.mesh.multiaddrs();
    const [f, g, h] = await Promise.all([
      new TestAgent('f', { clusterKey: key, bootstrap: addrs }).start(),
      new TestAgent('g', { clusterKey: generateClusterKey(), bootstrap: addrs }).start(),
      new TestAgent('h', { bootstrap: addrs }).start(),
    ]);
    agents.push(f, g, h);
    e.mesh.dialKnown([...g.mesh.multiaddrs(), ...h.mesh.multiaddrs()]);

    await waitFor('e and f hear each other', () => othersHeard([e, f]));
    // A refused dial fails within milliseconds, or hangs until the 5 s dial timeout.
    const failed = (x: TestAgent): boolean =>
      x.mesh.dialTargets().length > 0 && x.mesh.dialTargets().every((d) => d.failures >= 1);
    await waitFor('a failed dial each way', () => [e, g, h].every(failed), 15_000);

    for (const outsider of [g, h]) {
      assert.equal(outsider.connected.size, 0, `${outsider.node} connected`);
      assert.equal(outsider.mesh.stats().peers, 0);
      assert.equal(outsider.heard.size, 0);
      assert.ok(!e.connected.has(outsider.mesh.peerId));
    }
    assert.deepEqual([...e.heard.keys()], ['f']);
  });
});

describe('Mesh input hardening', () => {
  it('drops and counts garbage, oversized, foreign and spoofed messages without crashing', async () => {
    const x = await new TestAgent('x').start();
    const raw = await createMeshNode({ listen: LOOPBACK });
    try {
      await raw.start();
      const pubsub = raw.services.pubsub;
      const topic = advertTopic(CLUSTER);
      pubsub.subscribe(topic);
      await raw.dial(x.mesh.multiaddrs().map((s) => multiaddr(s)));
      await waitFor('x subscribed, as seen by the raw node', () =>
        pubsub.getSubscribers(topic).some((p) => p.toString() === x.mesh.peerId),
      );
      await waitFor('x in the raw node assignment subscribers', () =>
        gossipOf(raw)
          .getSubscribers(assignmentTopic(CLUSTER))
          .some((p) => p.toString() === x.mesh.peerId),
      );

      const rawId = raw.peerId.toString();
      const utf8 = (s: string): Uint8Array => new TextEncoder().encode(s);
      const sends: [string, Uint8Array][] = [
        [topic, new Uint8Array([0xde, 0xad, 0xbe, 0xef])],
        [topic, utf8('{"v":1,')],
        [topic, new Uint8Array(MAX_MESSAGE_BYTES + 10).fill(0x20)],
        [topic, encodeAdvert(advertOf('r', rawId, 1, 'another-cluster'))],
        [topic, encodeAdvert(advertOf('r', x.mesh.peerId, 1))],
        [topic, utf8(JSON.stringify({ ...advertOf('r', rawId, 1), v: 2 }))],
        [assignmentTopic(CLUSTER), utf8('{"v":1,"cluster":"gossip-test"}')],
      ];
      for (const [to, data] of sends) {
        const result = await pubsub.publish(to, data);
        assert.equal(result.recipients.length, 1);
      }
      await pubsub.publish(topic, encodeAdvert(advertOf('r', rawId, 2)));

      await waitFor('all drops counted', () => {
        const s = x.mesh.stats().dropped;
        return s.malformed + s.oversized + s['wrong-cluster'] + s.invalid + s.version === 7;
      });
      await waitFor('the valid advert', () => x.heard.has('r'));
      assert.deepEqual(x.mesh.stats().dropped, {
        oversized: 1,
        malformed: 2,
        invalid: 2,
        'wrong-cluster': 1,
        version: 1,
      });
      assert.equal(x.mesh.started, true);
    } finally {
      await raw.stop();
      await x.stop();
    }
  });
});

describe('Mesh lifecycle', () => {
  it('start and stop are idempotent, and publishing with no peer is fine', async () => {
    const m = new Mesh({ cluster: CLUSTER, listen: LOOPBACK, log });
    await Promise.all([m.start(), m.start()]);
    await m.start();
    assert.equal(m.started, true);
    assert.equal(await m.publishAdvert(advertOf('m', m.peerId, 1)), 0);
    assert.equal(await m.publishAdvert(advertOf('m', m.peerId, 2)), 0);
    assert.equal(m.stats().published, 2);

    await Promise.all([m.stop(), m.stop()]);
    await m.stop();
    assert.equal(m.started, false);
    await assert.rejects(m.publishAdvert(advertOf('m', 'p', 3)), /not started/);

    await m.start();
    assert.equal(m.started, true);
    await m.stop();
  });

  it('a start that fails leaves nothing running', async () => {
    const holder = new Mesh({ cluster: CLUSTER, listen: LOOPBACK, log });
    await holder.start();
    try {
      const taken = holder.multiaddrs()[0].split('/p2p/')[0];
      const m = new Mesh({ cluster: CLUSTER, listen: [taken], log });
      await assert.rejects(m.start());
      assert.equal(m.started, false);
      assert.deepEqual(m.multiaddrs(), []);
      await m.stop();
    } finally {
      await holder.stop();
    }
  });
});
