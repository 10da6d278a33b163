import { createHash } from 'node:crypto';

/**
 * Which registry peers a node dials when the cluster is larger than its dial budget. Every node
 * dials its two neighbours on a ring of all peer ids (sorted), so when all nodes read the same
 * registry the connections form one cycle through every node and the mesh is connected; the
 * rest of the budget goes to peers ranked by a hash of both ids (rendezvous hashing), which
 * spreads the extra links evenly and changes little when a node joins or leaves.
 *
 * Peers whose registry heartbeat is stale come last: a node that died is not worth a slot.
 * Returns every candidate, best first; the dialer walks the list until its budget is used.
 */
export function rankPeers(
  selfPeerId: string,
  candidates: readonly string[],
  stale: ReadonlySet<string> = new Set(),
): string[] {
  const peers = [...new Set(candidates)].filter((p) => p !== selfPeerId);
  const live = peers.filter((p) => !stale.has(p));
  const dead = peers.filter((p) => stale.has(p));

  return [...rankGroup(selfPeerId, live), ...rankGroup(selfPeerId, dead)];
}

function rankGroup(selfPeerId: string, peers: string[]): string[] {
  if (peers.length <= 2) return [...peers].sort();

  const ring = [...peers, selfPeerId].sort();
  const at = ring.indexOf(selfPeerId);
  const next = ring[(at + 1) % ring.length];
  const previous = ring[(at - 1 + ring.length) % ring.length];
  const neighbours = next === previous ? [next] : [next, previous];
  const rest = peers
    .filter((p) => !neighbours.includes(p))
    .map((p) => ({ p, rank: createHash('sha256').update(`${selfPeerId}\n${p}`).digest('hex') }))
    .sort((a, b) => (a.rank < b.rank ? -1 : a.rank > b.rank ? 1 : 0))
    .map((x) => x.p);

  return [...neighbours, ...rest];
}
