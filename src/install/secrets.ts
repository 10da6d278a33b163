import { readFile } from 'node:fs/promises';
import type { ClusterConfig } from '../config/schema.js';

/** The node fields that hold SSH credentials; the agent on a node never reads them. */
export const secretFields = ['password', 'passphrase', 'privateKey'] as const;

/** A credential written in a file that `pampa install` would ship to every node. */
export class InlineSecretError extends Error {
  override name = 'InlineSecretError';
}

/**
 * The config module is shipped to every node, so a credential written in its text would reach
 * every node (and every other node's credentials with it). Refuses, naming the node, the field
 * and the file, when the value of a node's password, passphrase or privateKey appears in the
 * text of a shipped file as a whole string literal (single, double or back quotes, as written
 * or escaped), or, for a key, one of its body lines. Values read at load time from the
 * environment or from a key file are not in the text, and pass; so does a value that only
 * occurs inside other text (a password "pampa" beside a cluster named "pampa-farm").
 */
export async function assertNoShippedSecrets(
  config: ClusterConfig,
  shippedFiles: string[],
): Promise<void> {
  const texts = await Promise.all(
    shippedFiles.map(async (file) => ({ file, text: await readFile(file, 'utf8') })),
  );
  for (const node of config.nodes) {
    for (const field of secretFields) {
      const value = node[field];
      if (!value) continue;
      const forms = new Set(literals(value));
      // A key pasted into a template literal or concatenated strings: look for its body lines.
      if (field === 'privateKey') {
        for (const line of value.split('\n').map((l) => l.trim())) {
          if (line.length >= 40 && !line.startsWith('-----')) forms.add(line);
        }
      }
      for (const { file, text } of texts) {
        if (![...forms].some((form) => text.includes(form))) continue;
        throw new InlineSecretError(
          `node "${node.name}": its ${field} is written in ${file}, which pampa install ships ` +
            `to every node; read it from an environment variable or a file instead, e.g. ` +
            `${example(node.name, field)}`,
        );
      }
    }
  }
}

/** The ways JavaScript source can spell `value` as one whole string literal. */
function literals(value: string): string[] {
  const escaped = (quote: string, newline: string): string =>
    quote +
    value.replaceAll('\\', '\\\\').replaceAll(quote, `\\${quote}`).replaceAll('\n', newline) +
    quote;

  return [
    JSON.stringify(value),
    escaped('"', '\\n'),
    escaped("'", '\\n'),
    escaped('`', '\\n'),
    escaped('`', '\n'),
    ...['"', "'", '`'].map((q) => q + value + q),
  ];
}

function example(node: string, field: (typeof secretFields)[number]): string {
  const env = `${node.toUpperCase().replace(/[^A-Z0-9]/g, '_')}_${field === 'privateKey' ? 'KEY' : field.toUpperCase()}`;
  if (field === 'privateKey') return `privateKeyFile: '~/.ssh/id_ed25519' (or process.env.${env})`;

  return `${field}: process.env.${env}`;
}
