/**
 * The term the lease thread holds, shared with the main thread through a SharedArrayBuffer:
 * the epoch (0: none) and the monotonic time (process.hrtime, ns) of the last acquire or
 * renewal that succeeded. The lease thread writes it; the main thread reads it synchronously,
 * so a main thread that was blocked judges the renewal deadline by the clock the moment it
 * runs again, and never acts on a "holder" answer that is out of date.
 *
 * Writes go under a sequence lock (odd while a write is in progress), so a reader never mixes
 * the epoch of one write with the confirmation time of another.
 */
const SEQ = 0;
const EPOCH = 1;
const CONFIRMED_NS = 2;

export interface SharedTermValue {
  epoch: number;
  /** process.hrtime.bigint() of the confirmation. */
  confirmedNs: bigint;
}

export class SharedTerm {
  readonly buffer: SharedArrayBuffer;
  private readonly cells: BigInt64Array;

  constructor(buffer?: SharedArrayBuffer) {
    this.buffer = buffer ?? new SharedArrayBuffer(3 * BigInt64Array.BYTES_PER_ELEMENT);
    this.cells = new BigInt64Array(this.buffer);
  }

  /** Lease thread: the term held, confirmed at `confirmedAtMs` (monoMs()); null: none. */
  write(term: { epoch: number; confirmedAt: number } | null): void {
    Atomics.add(this.cells, SEQ, 1n);
    Atomics.store(this.cells, EPOCH, BigInt(term?.epoch ?? 0));
    Atomics.store(this.cells, CONFIRMED_NS, term ? BigInt(Math.floor(term.confirmedAt * 1e6)) : 0n);
    Atomics.add(this.cells, SEQ, 1n);
  }

  /**
   * A consistent snapshot, or null when no term is held. A writer stopped mid-write (its
   * thread terminated) would leave the sequence odd: after many tries the answer is null, the
   * safe side.
   */
  read(): SharedTermValue | null {
    for (let tries = 0; tries < 10_000; tries++) {
      const before = Atomics.load(this.cells, SEQ);
      if (before % 2n === 1n) continue;
      const epoch = Atomics.load(this.cells, EPOCH);
      const confirmedNs = Atomics.load(this.cells, CONFIRMED_NS);
      if (Atomics.load(this.cells, SEQ) !== before) continue;

      return epoch === 0n ? null : { epoch: Number(epoch), confirmedNs };
    }

    return null;
  }

  /** The epoch held, if its confirmation is younger than `deadlineMs` right now; else null. */
  heldEpoch(deadlineMs: number): number | null {
    const term = this.read();
    if (!term) return null;
    const ageNs = process.hrtime.bigint() - term.confirmedNs;

    return ageNs < BigInt(Math.floor(deadlineMs * 1e6)) ? term.epoch : null;
  }
}
