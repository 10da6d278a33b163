import { randomBytes } from 'node:crypto';

/**
 * The optional cluster key: 32 random bytes as 64 hex characters, shared by every agent of a
 * cluster. libp2p's private-network protector (@libp2p/pnet) encrypts every connection with it,
 * so a peer without the key cannot even finish the handshake.
 */

const CLUSTER_KEY = /^[0-9a-fA-F]{64}$/;

export function isClusterKey(key: string): boolean {
  return CLUSTER_KEY.test(key);
}

/** A new random cluster key (64 lowercase hex characters). */
export function generateClusterKey(): string {
  return randomBytes(32).toString('hex');
}

/**
 * The cluster key in the swarm-key file format that @libp2p/pnet reads:
 * `/key/swarm/psk/1.0.0/\n/base16/\n<hex>`. The hex is lowercased: pnet's base16 decoder
 * rejects uppercase digits.
 */
export function clusterKeyToPsk(key: string): Uint8Array {
  if (!isClusterKey(key)) {
    throw new Error(`cluster key must be 64 hexadecimal characters, got ${key.length} characters`);
  }

  return new TextEncoder().encode(`/key/swarm/psk/1.0.0/\n/base16/\n${key.toLowerCase()}`);
}
