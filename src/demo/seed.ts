import type pg from 'pg';

/** (Re)creates the demo table `numbers` with the integers 1..n, reservation columns included. */
export async function seedNumbers(db: pg.Pool, n: number): Promise<void> {
  await db.query('DROP TABLE IF EXISTS numbers');
  await db.query(`CREATE TABLE numbers (value bigint PRIMARY KEY, odd boolean)`);
  await db.query('INSERT INTO numbers (value) SELECT generate_series(1, $1::bigint)', [n]);
}

/** Rows found odd, rows not checked, and the count a correct run must find. */
export async function checkNumbers(
  db: pg.Pool,
  n: number,
): Promise<{ odd: number; unchecked: number; expected: number; ok: boolean }> {
  const r = await db.query<{ odd: string; unchecked: string; wrong: string }>(
    `SELECT count(*) FILTER (WHERE odd)::text AS odd,
            count(*) FILTER (WHERE odd IS NULL)::text AS unchecked,
            count(*) FILTER (WHERE odd IS DISTINCT FROM (value % 2 = 1))::text AS wrong
       FROM numbers`,
  );
  const odd = Number(r.rows[0].odd);
  const unchecked = Number(r.rows[0].unchecked);
  const expected = Math.ceil(n / 2);

  return { odd, unchecked, expected, ok: odd === expected && Number(r.rows[0].wrong) === 0 };
}
