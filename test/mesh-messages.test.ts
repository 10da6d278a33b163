import '../src/polyfills.js';
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { clusterKeyToPsk, generateClusterKey, isClusterKey } from '../src/mesh/key.js';
import {
  MAX_MESSAGE_BYTES,
  MessageTooLargeError,
  advertTopic,
  assignmentTopic,
  decodeAdvert,
  decodeAssignment,
  encodeAdvert,
  encodeAssignment,
} from '../src/mesh/messages.js';
import type { AssignmentMessage, CapacityAdvert } from '../src/mesh/types.js';

const advert: CapacityAdvert = {
  v: 1,
  cluster: 'c1',
  node: 'n1',
  agentId: 'a1',
  peerId: '12D3KooWxyz',
  seq: 7,
  sentAt: 1_700_000_000_000,
  version: '0.1.0',
  statusUrl: 'http://127.0.0.1:8787',
  draining: false,
  lease: { holder: 'a1', epoch: 3, isHolder: true },
  workers: [
    {
      id: 'n1.1',
      job: 'thumbs',
      freeSlots: 4,
      queued: 1,
      busy: true,
      lastActivityAt: null,
      done: 10,
      failed: 0,
    },
  ],
};

const assignment: AssignmentMessage = {
  v: 1,
  cluster: 'c1',
  epoch: 3,
  workers: [{ id: 'n1.1', tasks: 5 }],
};

const utf8 = (s: string): Uint8Array => new TextEncoder().encode(s);

describe('mesh messages', () => {
  it('names topics by cluster and version', () => {
    assert.equal(advertTopic('c1'), 'pampa/c1/adverts/1');
    assert.equal(assignmentTopic('c1'), 'pampa/c1/assignments/1');
  });

  it('round-trips an advert and an assignment', () => {
    assert.deepEqual(decodeAdvert(encodeAdvert(advert), 'c1'), { ok: true, value: advert });
    assert.deepEqual(decodeAssignment(encodeAssignment(assignment), 'c1'), {
      ok: true,
      value: assignment,
    });
  });

  it('names the reason of every drop', () => {
    const cases: [Uint8Array, string][] = [
      [new Uint8Array(MAX_MESSAGE_BYTES + 1), 'oversized'],
      [new Uint8Array([0xff, 0xfe, 0x00]), 'malformed'],
      [utf8('{"v":1,'), 'malformed'],
      [utf8('[1,2]'), 'malformed'],
      [utf8('null'), 'malformed'],
      [utf8(JSON.stringify({ ...advert, v: 2 })), 'version'],
      [utf8(JSON.stringify({ ...advert, seq: -1 })), 'invalid'],
      [utf8(JSON.stringify({ ...advert, workers: 'none' })), 'invalid'],
      [utf8(JSON.stringify({ ...advert, v: undefined })), 'invalid'],
      [utf8(JSON.stringify({ ...advert, cluster: 'c2' })), 'wrong-cluster'],
    ];
    for (const [bytes, reason] of cases) {
      assert.deepEqual(decodeAdvert(bytes, 'c1'), { ok: false, reason }, reason);
    }
    assert.deepEqual(decodeAssignment(encodeAdvert(advert), 'c1'), {
      ok: false,
      reason: 'invalid',
    });
    assert.deepEqual(decodeAssignment(encodeAssignment(assignment), 'other'), {
      ok: false,
      reason: 'wrong-cluster',
    });
  });

  it('refuses to encode a message over the size limit', () => {
    const big = { ...advert, version: 'x'.repeat(200), workers: [] as CapacityAdvert['workers'] };
    const worker = advert.workers[0];
    for (let i = 0; i < 1000; i++) big.workers.push({ ...worker, id: `n1.${i}`.padEnd(200, '-') });
    assert.throws(() => encodeAdvert(big), MessageTooLargeError);
  });
});

describe('cluster key', () => {
  it('generates 64 hex characters and turns them into a pnet swarm key', () => {
    const key = generateClusterKey();
    assert.ok(isClusterKey(key));
    assert.notEqual(key, generateClusterKey());

    const psk = new TextDecoder().decode(clusterKeyToPsk(key.toUpperCase()));
    assert.equal(psk, `/key/swarm/psk/1.0.0/\n/base16/\n${key}`);
    assert.equal(clusterKeyToPsk(key).byteLength, 95);
  });

  it('rejects keys that are not 64 hex characters', () => {
    assert.throws(() => clusterKeyToPsk('abc'), /64 hexadecimal characters/);
    assert.throws(() => clusterKeyToPsk('g'.repeat(64)), /64 hexadecimal characters/);
  });
});
