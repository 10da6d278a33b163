import { writeSync } from 'node:fs';
import type { Readable } from 'node:stream';

/**
 * Which task of its batch a worker process is about to run, told to its agent through a pipe
 * of its own (file descriptor PROGRESS_FD) rather than the IPC channel: one 8-byte write per
 * task (batch number, task index), with no serialisation, no callback and nothing for the agent
 * to parse but the last record. Once `report` returns, the bytes are in the kernel, so the agent
 * reads them even if the process is killed during the task: a task that crashes its worker is
 * charged its try, and only the tasks after it count as never run.
 */
export const PROGRESS_FD = 4;

const RECORD = 8;

export class ProgressWriter {
  private readonly buf = Buffer.alloc(RECORD);
  private broken = false;

  constructor(private readonly fd = PROGRESS_FD) {}

  report(batch: number, index: number): void {
    if (this.broken) return;
    this.buf.writeUInt32LE(batch >>> 0, 0);
    this.buf.writeUInt32LE(index >>> 0, 4);
    for (let written = 0; written < RECORD;) {
      try {
        written += writeSync(this.fd, this.buf, written, RECORD - written);
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        // The agent reads continuously; a full pipe only means it is busy for a moment.
        if (code === 'EAGAIN') Atomics.wait(pause, 0, 0, 1);
        else {
          // No agent reading (run by hand, or the agent is gone): nobody to tell.
          this.broken = true;
          return;
        }
      }
    }
  }
}

const pause = new Int32Array(new SharedArrayBuffer(4));

/** The agent's side: the last record received, and when the pipe has been read to its end. */
export class ProgressReader {
  private pending = Buffer.alloc(0);
  batch = -1;
  index = -1;
  readonly ended: Promise<void>;

  constructor(stream: Readable) {
    this.ended = new Promise((resolve) => {
      stream.once('end', resolve);
      stream.once('close', resolve);
      stream.once('error', () => resolve());
    });
    stream.on('data', (chunk: Buffer) => this.take(chunk));
  }

  private take(chunk: Buffer): void {
    const data = this.pending.length ? Buffer.concat([this.pending, chunk]) : chunk;
    const whole = data.length - (data.length % RECORD);
    if (whole >= RECORD) {
      this.batch = data.readUInt32LE(whole - RECORD);
      this.index = data.readUInt32LE(whole - RECORD + 4);
    }
    this.pending = Buffer.from(data.subarray(whole));
  }

  /** Index of the task of `batch` last reported running; −1 when none of it was. */
  runningIndex(batch: number): number {
    return this.batch === batch ? this.index : -1;
  }
}
