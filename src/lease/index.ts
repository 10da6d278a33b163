export { Lease } from './lease.js';
export { monoMs } from './clock.js';
export type { LeaseEvents, LeaseOptions, LeaseStatus, StepDownReason } from './lease.js';
export { fenceParams, fenceSql } from './fence.js';
export type { LeaseToken } from './fence.js';
export { acquire, leasesTable, readLease, renew, resign } from './statements.js';
export type {
  AcquireOptions,
  AcquireResult,
  LeaseRow,
  RenewOptions,
  ResignOptions,
  TermOptions,
} from './statements.js';
export { LeaseThread } from './lease-thread.js';
export type { LeaseThreadOptions } from './lease-thread.js';
export { SharedTerm } from './shared-term.js';
