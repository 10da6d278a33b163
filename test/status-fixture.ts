import { pino } from 'pino';
import type { ClusterStatus } from '../src/status/types.js';

/** A quiet logger for status tests. */
export const silentLog = pino({ level: 'silent' });

/** A token long enough for StatusSchema (16+ characters). */
export const TOKEN = 'correct-horse-battery-staple';

/** A two-node cluster with three workers on two jobs, as the dispatcher on node-a sees it. */
export function clusterStatus(now = Date.now()): ClusterStatus {
  const ago = (s: number): string => new Date(now - s * 1000).toISOString();

  return {
    cluster: 'demo',
    self: {
      node: 'node-a',
      agentId: 'agent-a1',
      peerId: '12D3KooWAaaaaaaaaaaaaaaaaa111111',
      version: '0.1.0',
    },
    generatedAt: new Date(now).toISOString(),
    db: 'ok',
    role: 'dispatcher',
    peers: 1,
    meshSize: 2,
    nodes: [
      {
        name: 'node-a',
        agentId: 'agent-a1',
        peerId: '12D3KooWAaaaaaaaaaaaaaaaaa111111',
        addresses: ['/ip4/10.0.0.1/tcp/4001'],
        statusUrl: 'http://10.0.0.1:8787',
        version: '0.1.0',
        lastHeartbeat: ago(0),
        state: 'alive',
      },
      {
        name: 'node-b',
        agentId: 'agent-b7',
        peerId: '12D3KooWBbbbbbbbbbbbbbbbbb222222',
        addresses: ['/ip4/10.0.0.2/tcp/4001'],
        statusUrl: null,
        version: '0.1.0',
        lastHeartbeat: ago(3),
        state: 'suspect',
      },
    ],
    workers: [
      {
        id: 'node-a.1',
        node: 'node-a',
        job: 'resize',
        busy: true,
        queued: 4,
        freeSlots: 1,
        lastActivity: ago(1),
        done: 120,
        failed: 2,
      },
      {
        id: 'node-a.2',
        node: 'node-a',
        job: 'thumbnails',
        busy: false,
        queued: 0,
        freeSlots: 5,
        lastActivity: ago(42),
        done: 17,
        failed: 0,
      },
      {
        id: 'node-b.1',
        node: 'node-b',
        job: 'resize',
        busy: true,
        queued: 2,
        freeSlots: 3,
        lastActivity: null,
        done: 0,
        failed: 0,
      },
    ],
    dispatcher: { holder: 'agent-a1', holderNode: 'node-a', epoch: 7, secondsToExpiry: 3.2 },
    jobs: [
      {
        name: 'resize',
        table: 'public.images',
        total: 1000,
        completed: 620,
        pending: 340,
        failed: 12,
        running: 2,
        tasksPerSecond: 14.5,
      },
      {
        name: 'thumbnails',
        table: 'app."Thumbs"',
        total: 250,
        completed: 17,
        pending: 233,
        failed: 0,
        running: 0,
        tasksPerSecond: 0.4,
      },
    ],
    dropped: { invalid: 2, oversized: 1 },
    gossip: { received: 120, published: 14 },
  };
}
