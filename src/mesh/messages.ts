import { z } from 'zod';
import type { AssignmentMessage, CapacityAdvert } from './types.js';

/**
 * Wire format of the two gossip topics: UTF-8 JSON, one message per gossipsub message, at most
 * MAX_MESSAGE_BYTES. A message is checked in this order, and the first failing check names the
 * drop reason: size, JSON syntax, version, schema, cluster.
 */

/**
 * Largest encoded message (bytes). An advert of a node with 256 workers is about 40 KiB, so
 * 64 KiB leaves room and still bounds what a peer can make us parse.
 */
export const MAX_MESSAGE_BYTES = 64 * 1024;

/** The only message version this build speaks; it is also the last segment of the topics. */
export const MESSAGE_VERSION = 1;

export type DropReason = 'oversized' | 'malformed' | 'invalid' | 'wrong-cluster' | 'version';

export const DROP_REASONS: readonly DropReason[] = [
  'oversized',
  'malformed',
  'invalid',
  'wrong-cluster',
  'version',
];

export type Decoded<T> = { ok: true; value: T } | { ok: false; reason: DropReason };

export function advertTopic(cluster: string): string {
  return `pampa/${cluster}/adverts/${MESSAGE_VERSION}`;
}

export function assignmentTopic(cluster: string): string {
  return `pampa/${cluster}/assignments/${MESSAGE_VERSION}`;
}

const name = z.string().min(1).max(256);
const count = z.number().int().min(0).max(Number.MAX_SAFE_INTEGER);

export const WorkerAdvertSchema = z.object({
  id: name,
  job: name.nullable(),
  freeSlots: count,
  queued: count,
  busy: z.boolean(),
  lastActivityAt: count.nullable(),
  done: count,
  failed: count,
});

export const CapacityAdvertSchema = z.object({
  v: z.literal(MESSAGE_VERSION),
  cluster: name,
  node: name,
  agentId: name,
  peerId: name,
  seq: count,
  sentAt: count,
  version: z.string().max(256),
  statusUrl: z.string().max(2048).nullable(),
  draining: z.boolean(),
  lease: z.object({ holder: name.nullable(), epoch: count, isHolder: z.boolean() }),
  workers: z.array(WorkerAdvertSchema).max(4096),
});

export const AssignmentMessageSchema = z.object({
  v: z.literal(MESSAGE_VERSION),
  cluster: name,
  epoch: count,
  workers: z.array(z.object({ id: name, tasks: count })).max(4096),
});

const encoder = new TextEncoder();
const decoder = new TextDecoder('utf-8', { fatal: true });

export class MessageTooLargeError extends Error {
  constructor(
    readonly kind: 'advert' | 'assignment',
    readonly bytes: number,
  ) {
    super(`${kind} message is ${bytes} bytes encoded; the limit is ${MAX_MESSAGE_BYTES}`);
    this.name = 'MessageTooLargeError';
  }
}

export function encodeAdvert(advert: CapacityAdvert): Uint8Array {
  return encode('advert', advert);
}

export function encodeAssignment(message: AssignmentMessage): Uint8Array {
  return encode('assignment', message);
}

export function decodeAdvert(bytes: Uint8Array, cluster: string): Decoded<CapacityAdvert> {
  return decode(bytes, cluster, CapacityAdvertSchema);
}

export function decodeAssignment(bytes: Uint8Array, cluster: string): Decoded<AssignmentMessage> {
  return decode(bytes, cluster, AssignmentMessageSchema);
}

function encode(kind: 'advert' | 'assignment', message: object): Uint8Array {
  const bytes = encoder.encode(JSON.stringify(message));
  if (bytes.byteLength > MAX_MESSAGE_BYTES) throw new MessageTooLargeError(kind, bytes.byteLength);

  return bytes;
}

function decode<T extends { cluster: string }>(
  bytes: Uint8Array,
  cluster: string,
  schema: z.ZodType<T>,
): Decoded<T> {
  if (bytes.byteLength > MAX_MESSAGE_BYTES) return { ok: false, reason: 'oversized' };

  let json: unknown;
  try {
    json = JSON.parse(decoder.decode(bytes));
  } catch {
    return { ok: false, reason: 'malformed' };
  }

  if (typeof json !== 'object' || json === null || Array.isArray(json)) {
    return { ok: false, reason: 'malformed' };
  }
  const version = (json as { v?: unknown }).v;
  if (typeof version === 'number' && version !== MESSAGE_VERSION) {
    return { ok: false, reason: 'version' };
  }

  const parsed = schema.safeParse(json);
  if (!parsed.success) return { ok: false, reason: 'invalid' };
  if (parsed.data.cluster !== cluster) return { ok: false, reason: 'wrong-cluster' };

  return { ok: true, value: parsed.data };
}
