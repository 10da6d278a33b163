/**
 * The fence every dispatcher write carries: a sub-select that yields one row only while the
 * lease row still names this holder and epoch and has not expired by the database clock.
 * FOR SHARE makes a concurrent take-over (an UPDATE of that row) wait for the fenced write to
 * commit, and makes the fenced write re-check the newest row version if the take-over
 * committed first, so a write and a change of holder never interleave.
 */
export interface LeaseToken {
  cluster: string;
  holder: string;
  epoch: number;
}

/** `$n` placeholders for cluster, holder and epoch; the caller binds them in that order. */
export function fenceSql(leasesTable: string, first: number): string {
  return `SELECT 1 FROM ${leasesTable} WHERE cluster = $${first} AND holder = $${first + 1}
      AND epoch = $${first + 2} AND expires_at > now() FOR SHARE`;
}

export function fenceParams(token: LeaseToken): [string, string, number] {
  return [token.cluster, token.holder, token.epoch];
}
