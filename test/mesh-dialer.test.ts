import '../src/polyfills.js';
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { Multiaddr } from '@multiformats/multiaddr';
import { pino } from 'pino';
import { Dialer, MAX_RETRY_MS } from '../src/mesh/dialer.js';

const SELF = '12D3KooWSelf1111111111111111111111111111111111111111';
const PEER = '12D3KooWQYhTNQdmr3ArTeUHRYzFg94BKyTkoWBDWez9kSCVe2Xo';

function setup(reachable: () => boolean) {
  let now = 0;
  const dials: string[][] = [];
  const connected = new Set<string>();
  const dialer = new Dialer({
    selfPeerId: SELF,
    log: pino({ level: 'silent' }),
    now: () => now,
    isConnected: (p) => connected.has(p),
    dial: async (addrs: Multiaddr[]) => {
      dials.push(addrs.map((a) => a.toString()));
      if (!reachable()) throw new Error('refused');
      connected.add(PEER);

      return PEER;
    },
  });

  return { dialer, dials, connected, advance: (ms: number) => (now += ms) };
}

const settle = (): Promise<void> => new Promise((r) => setImmediate(r));

describe('Dialer', () => {
  it('groups addresses by peer, skips its own, and backs off to at most 5 s', async () => {
    let up = false;
    const { dialer, dials, connected, advance } = setup(() => up);
    dialer.setKnown([
      `/ip4/10.0.0.1/tcp/4001/p2p/${PEER}`,
      `/ip4/10.0.0.2/tcp/4001/p2p/${PEER}`,
      `/ip4/10.0.0.9/tcp/4001/p2p/${SELF}`,
      'not a multiaddr',
    ]);

    const delays: number[] = [];
    for (let i = 0; i < 8; i++) {
      const before = dials.length;
      let waited = 0;
      while (dials.length === before) {
        dialer.tick();
        await settle();
        if (dials.length === before) {
          advance(50);
          waited += 50;
        }
      }
      delays.push(waited);
    }
    assert.deepEqual(dials[0], [
      `/ip4/10.0.0.1/tcp/4001/p2p/${PEER}`,
      `/ip4/10.0.0.2/tcp/4001/p2p/${PEER}`,
    ]);
    assert.deepEqual(delays, [0, 250, 500, 1000, 2000, 4000, MAX_RETRY_MS, MAX_RETRY_MS]);

    up = true;
    advance(MAX_RETRY_MS);
    dialer.tick();
    await settle();
    assert.equal(dialer.targets()[0].connected, true);
    assert.equal(dialer.targets()[0].failures, 0);

    const count = dials.length;
    dialer.tick();
    await settle();
    assert.equal(dials.length, count, 'a connected peer is not dialed');

    connected.delete(PEER);
    dialer.tick();
    await settle();
    assert.equal(dials.length, count + 1, 'a lost peer is dialed again at once');
  });

  it('stops dialing peers dropped from the known list, and everything after stop()', async () => {
    const { dialer, dials } = setup(() => false);
    dialer.setKnown([`/ip4/10.0.0.1/tcp/4001/p2p/${PEER}`]);
    dialer.setKnown([]);
    dialer.tick();
    await settle();
    assert.equal(dials.length, 0);

    dialer.setBootstrap([`/ip4/10.0.0.1/tcp/4001/p2p/${PEER}`]);
    dialer.stop();
    dialer.tick();
    await settle();
    assert.equal(dials.length, 0);
  });
});
