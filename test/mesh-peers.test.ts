import '../src/polyfills.js';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { describe, it } from 'node:test';
import type { Multiaddr } from '@multiformats/multiaddr';
import { pino } from 'pino';
import { Dialer } from '../src/mesh/dialer.js';
import { Membership } from '../src/mesh/membership.js';
import { rankPeers } from '../src/mesh/peer-choice.js';
import { advertOf } from './helpers/mesh.js';

/** Stand-in peer ids: distinct strings that sort like random ones. */
function ids(n: number, salt = 'p'): string[] {
  return Array.from({ length: n }, (_, i) =>
    createHash('sha256').update(`${salt}${i}`).digest('hex').slice(0, 20),
  );
}

/** Undirected graph of "each node dials its first `budget` ranked peers". */
function dialGraph(all: string[], budget: number, stale = new Set<string>()) {
  const edges = new Map<string, Set<string>>(all.map((p) => [p, new Set<string>()]));
  for (const self of all) {
    if (stale.has(self)) continue;
    for (const peer of rankPeers(self, all, stale).slice(0, budget)) {
      edges.get(self)!.add(peer);
      edges.get(peer)!.add(self);
    }
  }
  return edges;
}

function reachable(edges: Map<string, Set<string>>, from: string, skip: Set<string>): number {
  const seen = new Set([from]);
  const todo = [from];
  while (todo.length > 0) {
    for (const next of edges.get(todo.pop()!)!) {
      if (!seen.has(next) && !skip.has(next)) {
        seen.add(next);
        todo.push(next);
      }
    }
  }
  return seen.size;
}

describe('peer choice in a large cluster', () => {
  it('ranks the two ring neighbours first, the rest by a hash, stale peers last', () => {
    const peers = ['b', 'd', 'f', 'h', 'j'];
    const ranked = rankPeers('e', [...peers, 'e', 'd'], new Set(['h']));
    assert.deepEqual(ranked.slice(0, 2), ['f', 'd'], 'successor and predecessor of e');
    assert.equal(ranked.at(-1), 'h', 'the stale peer comes last');
    assert.deepEqual([...ranked].sort(), peers, 'each peer once, never itself');
    assert.deepEqual(rankPeers('e', [...peers].reverse(), new Set(['h'])), ranked, 'stable');
    assert.deepEqual(rankPeers('a', ['b']), ['b']);
    assert.deepEqual(rankPeers('a', []), []);
  });

  it('30 and 200 nodes dialing 5 peers each form one connected graph of bounded degree', () => {
    for (const n of [30, 200]) {
      const all = ids(n);
      const edges = dialGraph(all, 5);
      assert.equal(reachable(edges, all[0], new Set()), n, `${n} nodes connected`);
      const degrees = [...edges.values()].map((e) => e.size);
      assert.ok(Math.max(...degrees) <= 16, `max degree ${Math.max(...degrees)} for ${n} nodes`);
      assert.ok(Math.min(...degrees) >= 5);
    }
  });

  it('nodes whose heartbeat is stale are passed over, and the live ones stay connected', () => {
    const all = ids(40, 'q');
    const stale = new Set(all.slice(0, 10));
    const edges = dialGraph(all, 5, stale);
    const live = all.filter((p) => !stale.has(p));
    assert.equal(reachable(edges, live[0], stale), live.length);
  });
});

describe('Dialer budget', () => {
  const SELF = 'self-peer';

  function setup(maxKnownPeers: number, unreachable: Set<string>) {
    const dials: string[] = [];
    const connected = new Set<string>();
    let now = 0;
    const dialer = new Dialer({
      selfPeerId: SELF,
      maxKnownPeers,
      log: pino({ level: 'silent' }),
      now: () => now,
      isConnected: (p) => connected.has(p),
      dial: async (addrs: Multiaddr[]) => {
        const peer = addrs[0].getPeerId()!;
        dials.push(peer);
        if (unreachable.has(peer)) throw new Error('refused');
        connected.add(peer);
        return peer;
      },
    });
    return { dialer, dials, advance: (ms: number) => (now += ms) };
  }

  const settle = (): Promise<void> => new Promise((r) => setImmediate(r));
  const peerIds = [
    '12D3KooWQYhTNQdmr3ArTeUHRYzFg94BKyTkoWBDWez9kSCVe2Xo',
    '12D3KooWJWoaqZhDaoEFshF7Rh1bpY9ohihFhzcW6d69Lr2NASuq',
    '12D3KooWRBy97UB99e3J6hiPesre1MZeuNQvfan4gBziswrRJsNK',
    '12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN',
    '12D3KooWCKo5VcvX9ay8v6V6uBEhRhW3XmM1eEWcG3FRZN6Wdz8R',
    '12D3KooWKnDdG3iXw9eTFijk3EWSunZcFi54Zka4wmtqtt6rPxc8',
  ];
  const addr = (p: string) => `/ip4/127.0.0.1/tcp/4001/p2p/${p}`;

  it('dials only its budget of registry peers, in rank order', async () => {
    const { dialer, dials } = setup(3, new Set());
    dialer.setKnown(peerIds.map(addr));
    dialer.tick();
    await settle();
    const expected = rankPeers(SELF, peerIds).slice(0, 3);
    assert.deepEqual([...dials].sort(), [...expected].sort());
    assert.deepEqual(
      dialer
        .targets()
        .filter((t) => t.chosen)
        .map((t) => t.peerId)
        .sort(),
      [...expected].sort(),
    );
  });

  it('a chosen peer that keeps failing gives its place to the next one', async () => {
    const ranked = rankPeers(SELF, peerIds);
    const { dialer, dials, advance } = setup(2, new Set([ranked[0]]));
    dialer.setKnown(peerIds.map(addr));
    for (let i = 0; i < 3; i++) {
      dialer.tick();
      await settle();
      advance(10_000);
    }
    assert.ok(dials.includes(ranked[2]), 'the third-ranked peer is dialed after two failures');
    assert.ok(!dials.includes(ranked[3]));
  });
});

describe('Membership with partial connectivity', () => {
  it('a node heard through gossip after its direct link dropped is alive again', () => {
    let now = 0;
    const m = new Membership({ advertTtlMs: 5000, nodeDeadAfterMs: 5000, now: () => now });
    m.observeRegistry([{ name: 'b', agentId: 'b-agent', heartbeatAgeMs: 0, stoppedAt: null }]);
    m.peerConnected('peer-b');
    m.observeAdvert(advertOf('b', 'peer-b', 1));
    assert.equal(m.state('b'), 'alive');
    now = 100;
    m.peerDisconnected('peer-b');
    assert.equal(m.state('b'), 'suspect', 'the link dropped: not alive on an old advert');
    now = 300;
    m.observeAdvert(advertOf('b', 'peer-b', 2));
    assert.equal(m.state('b'), 'suspect', 'a copy in flight when the link dropped proves nothing');
    now = 1100;
    m.observeAdvert(advertOf('b', 'peer-b', 3));
    assert.equal(m.state('b'), 'alive', 'a later advert came through other peers');
  });
});
