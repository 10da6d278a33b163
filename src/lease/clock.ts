/**
 * The lease's clock: ms of process.hrtime, a monotonic clock shared by every thread of the
 * process (performance.now() has a time origin per thread), so a confirmation time written by
 * the lease thread can be judged by the main thread.
 */
export function monoMs(): number {
  return Number(process.hrtime.bigint()) / 1e6;
}

/** Resolves to the value, or to undefined once `ms` passed; never rejects on timeout. */
export async function withTimeout<T>(promise: Promise<T>, ms: number): Promise<T | undefined> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<undefined>((resolve) => {
    timer = setTimeout(() => resolve(undefined), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}
