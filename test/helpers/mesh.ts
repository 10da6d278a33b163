/**
 * In-process gossip tests: Mesh instances on 127.0.0.1 that advertise like an agent does, and
 * remember when they last heard each node.
 */
import { pino } from 'pino';
import { Mesh, type MeshOptions } from '../../src/mesh/mesh.js';
import type { MeshNode } from '../../src/mesh/node.js';
import type { CapacityAdvert } from '../../src/mesh/types.js';

export const CLUSTER = 'gossip-test';
export const LOOPBACK = ['/ip4/127.0.0.1/tcp/0'];
export const log = pino({ level: process.env.PAMPA_LOG_LEVEL ?? 'silent' });

/** A mesh plus what a real agent does with it: advertise (every 200 ms), remember who it heard. */
export class TestAgent {
  readonly mesh: Mesh;
  /** node name → performance.now() of the last advert received from it. */
  readonly heard = new Map<string, number>();
  readonly connected = new Set<string>();
  private seq = 0;
  private timer: NodeJS.Timeout | undefined;

  constructor(
    readonly node: string,
    options: Partial<MeshOptions> = {},
    private readonly advertEveryMs = 200,
  ) {
    this.mesh = new Mesh({ cluster: CLUSTER, listen: LOOPBACK, log, ...options });
    this.mesh.on('advert', (a) => this.heard.set(a.node, performance.now()));
    this.mesh.on('peer:connect', (p) => this.connected.add(p));
  }

  async start(): Promise<this> {
    await this.mesh.start();
    this.timer = setInterval(() => void this.mesh.publishAdvert(this.advert()), this.advertEveryMs);
    void this.mesh.publishAdvert(this.advert());

    return this;
  }

  async stop(): Promise<void> {
    clearInterval(this.timer);
    await this.mesh.stop();
  }

  advert(): CapacityAdvert {
    return advertOf(this.node, this.mesh.peerId, ++this.seq);
  }

  heardSince(nodes: string[], since: number): boolean {
    return nodes.every((n) => (this.heard.get(n) ?? -1) >= since);
  }

  /** The libp2p node inside the mesh, for tests that break its connections. */
  libp2p(): MeshNode {
    const node = this.mesh['node'];
    if (!node) throw new Error(`mesh of ${this.node} is not started`);

    return node;
  }
}

export function advertOf(
  node: string,
  peerId: string,
  seq: number,
  cluster = CLUSTER,
): CapacityAdvert {
  return {
    v: 1,
    cluster,
    node,
    agentId: `${node}-agent`,
    peerId,
    seq,
    sentAt: Date.now(),
    version: 'test',
    statusUrl: null,
    draining: false,
    lease: { holder: null, epoch: 0, isHolder: false },
    workers: [],
  };
}

/** Whether every agent heard every other one since `since` (performance.now()). */
export function othersHeard(agents: TestAgent[], since = 0): boolean {
  const names = agents.map((a) => a.node);

  return agents.every((a) =>
    a.heardSince(
      names.filter((n) => n !== a.node),
      since,
    ),
  );
}
