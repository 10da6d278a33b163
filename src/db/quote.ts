/**
 * The one place identifiers from configuration become SQL. Every table, column and schema name
 * goes through here; values never do (they are always bound parameters).
 */
export function quoteIdent(name: string): string {
  if (name.length === 0) throw new Error('empty SQL identifier');
  if (name.includes('\u0000')) throw new Error(`SQL identifier contains a NUL byte: ${name}`);

  return `"${name.replace(/"/g, '""')}"`;
}

/** `table` or `schema.table` → `"table"` / `"schema"."table"`. */
export function quoteTable(name: string): string {
  return splitTable(name)
    .map((p) => quoteIdent(p))
    .join('.');
}

/** `schema.table` → ['schema', 'table']; `table` → ['table']. */
export function splitTable(name: string): string[] {
  return name.split('.');
}

/** A quoted identifier safe to embed in a derived name such as an index name (max 63). */
export function derivedName(...parts: string[]): string {
  const raw = parts.join('_').replace(/[^A-Za-z0-9_]/g, '_');

  return raw.length <= 63 ? raw : raw.slice(0, 54) + '_' + hash(raw);
}

function hash(s: string): string {
  let h = 2166136261;
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 16777619);

  return (h >>> 0).toString(16).padStart(8, '0');
}
