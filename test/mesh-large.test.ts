import '../src/polyfills.js';
import { after, describe, it } from 'node:test';
import { waitFor } from './helpers/fixture.js';
import { TestAgent, othersHeard } from './helpers/mesh.js';

/**
 * 16 libp2p nodes in one process take both cores for a while, which slowed their connections
 * past any fair timeout while other test files ran beside them; this file runs with the
 * cluster test bed (`npm run test:cluster`, PAMPA_CLUSTER_TEST=1), one file at a time.
 */
const skip = process.env.PAMPA_CLUSTER_TEST === '1' ? false : 'runs with `npm run test:cluster`';

describe('a mesh of 16 agents on one address', { skip }, () => {
  const agents: TestAgent[] = [];
  after(async () => {
    await Promise.all(agents.map((a) => a.stop()));
  });

  // Regression: gossipsub's IP colocation penalty scored down peers beyond the tenth from one
  // address, so agents connected to 14 or more others on one host heard nobody.
  it(
    'every agent hears every other one with 14 or more direct peers each',
    { timeout: 300_000 },
    async () => {
      for (let i = 0; i < 16; i++) agents.push(await new TestAgent(`n${i}`, {}, 1000).start());
      const all = agents.flatMap((a) => a.mesh.multiaddrs());
      for (const a of agents) a.mesh.dialKnown(all);
      // With scoring on, 14 or more peers from one address score -80 or less each: below the
      // publish threshold and out of the mesh, so nobody would hear anybody.
      await waitFor(
        '14 direct peers each',
        () => agents.every((a) => a.connected.size >= 14),
        150_000,
      );
      const since = performance.now();
      await waitFor(
        'adverts from every peer after connecting',
        () => othersHeard(agents, since),
        120_000,
      );
    },
  );
});
