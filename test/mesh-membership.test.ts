import '../src/polyfills.js';
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { Membership, type RegistryHeartbeat } from '../src/mesh/membership.js';
import type { CapacityAdvert } from '../src/mesh/types.js';

const TTL = 5000;
const DEAD = 4000;

function advert(node: string, seq: number, extra: Partial<CapacityAdvert> = {}): CapacityAdvert {
  return {
    v: 1,
    cluster: 'c1',
    node,
    agentId: `${node}-agent`,
    peerId: `${node}-peer`,
    seq,
    sentAt: 0,
    version: '0.1.0',
    statusUrl: null,
    draining: false,
    lease: { holder: null, epoch: 0, isHolder: false },
    workers: [],
    ...extra,
  };
}

function row(name: string, heartbeatAgeMs: number, stopped = false): RegistryHeartbeat {
  return {
    name,
    agentId: `${name}-agent`,
    heartbeatAgeMs,
    stoppedAt: stopped ? new Date() : null,
  };
}

function setup(): { m: Membership; advance: (ms: number) => void } {
  let now = 1000;
  const m = new Membership({ advertTtlMs: TTL, nodeDeadAfterMs: DEAD, now: () => now });

  return { m, advance: (ms) => (now += ms) };
}

describe('Membership', () => {
  it('alive → suspect when gossip stops → dead when the registry heartbeat is also stale', () => {
    const { m, advance } = setup();
    assert.equal(m.state('n1'), 'dead', 'unknown node');

    assert.equal(m.observeAdvert(advert('n1', 1)), 'accepted');
    m.observeRegistry([row('n1', 0)]);
    assert.equal(m.state('n1'), 'alive');

    advance(TTL - 1);
    assert.equal(m.state('n1'), 'alive');
    advance(1);
    // The registry row was read TTL ms ago with age 0: its heartbeat is now TTL > DEAD old.
    assert.equal(m.state('n1'), 'dead');

    m.observeRegistry([row('n1', 100)]);
    assert.equal(m.state('n1'), 'suspect', 'gossip silent, registry fresh');
    advance(DEAD - 100);
    assert.equal(m.state('n1'), 'dead');

    m.observeAdvert(advert('n1', 2));
    assert.equal(m.state('n1'), 'alive', 'gossip back');
  });

  it('a disconnected peer is suspect while its registry heartbeat is fresh, alive on reconnect', () => {
    const { m, advance } = setup();
    m.observeAdvert(advert('n1', 1));
    m.observeRegistry([row('n1', 0)]);
    m.peerConnected('n1-peer');
    assert.equal(m.state('n1'), 'alive');

    m.peerDisconnected('n1-peer');
    assert.equal(m.state('n1'), 'suspect');
    advance(DEAD);
    assert.equal(m.state('n1'), 'dead', 'connection gone and registry stale');
    m.observeRegistry([row('n1', 0)]);

    m.peerConnected('n1-peer');
    assert.equal(m.state('n1'), 'alive');

    m.peerDisconnected('n1-peer');
    advance(TTL);
    assert.equal(m.state('n1'), 'dead', 'no registry row and gossip stale');
  });

  it('a node known only from the registry is suspect until its heartbeat is 3× too old', () => {
    const { m, advance } = setup();
    m.observeRegistry([row('n2', 500)]);
    assert.equal(m.state('n2'), 'suspect');
    advance(DEAD - 500);
    assert.equal(m.state('n2'), 'suspect', 'never heard through gossip: not yet');
    advance(2 * DEAD);
    assert.equal(m.state('n2'), 'dead');
    assert.deepEqual(m.nodes(), ['n2']);
  });

  it('a stopped registry row is dead at once, unless a new agent already advertises', () => {
    const { m } = setup();
    m.observeAdvert(advert('n1', 1));
    m.observeRegistry([row('n1', 0, true)]);
    assert.equal(m.state('n1'), 'dead');

    m.observeAdvert(advert('n1', 1, { agentId: 'n1-agent-2' }));
    assert.equal(m.state('n1'), 'alive', 'restarted under a new agent id');
  });

  it('drops adverts whose seq is not newer than the last from that agent', () => {
    const { m } = setup();
    assert.equal(m.observeAdvert(advert('n1', 5)), 'accepted');
    assert.equal(m.observeAdvert(advert('n1', 5)), 'stale');
    assert.equal(m.observeAdvert(advert('n1', 4)), 'stale');
    assert.equal(m.observeAdvert(advert('n1', 6)), 'accepted');
    assert.equal(m.observeAdvert(advert('n1', 1, { agentId: 'new' })), 'accepted');
    assert.equal(m.freshAdverts()[0].agentId, 'new');
  });

  it('freshAdverts skips stale and draining nodes', () => {
    const { m, advance } = setup();
    m.observeAdvert(advert('n1', 1));
    advance(TTL - 10);
    m.observeAdvert(advert('n3', 1));
    m.observeAdvert(advert('n2', 1, { draining: true }));
    assert.deepEqual(
      m.freshAdverts().map((a) => a.node),
      ['n1', 'n3'],
    );

    advance(10);
    assert.deepEqual(
      m.freshAdverts().map((a) => a.node),
      ['n3'],
    );

    const view = m.snapshot().find((v) => v.node === 'n2');
    assert.equal(view?.draining, true);
    assert.equal(view?.state, 'alive');
    assert.equal(view?.advertAgeMs, 10);
  });
});
