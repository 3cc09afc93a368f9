// Parses docs/asyncapi.yaml with the official AsyncAPI parser (@asyncapi/parser).
// Prints every error and warning diagnostic, with its rule and path. Exits 1 if the document
// does not parse or if any diagnostic has error severity.
//
//   cd docs/asyncapi-check && npm ci && npm run check
//
// Pass --all to print info and hint diagnostics too.

import { readFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import { Parser, DiagnosticSeverity } from '@asyncapi/parser';

const here = path.dirname(fileURLToPath(import.meta.url));
const file = path.resolve(here, '..', 'asyncapi.yaml');
const showAll = process.argv.includes('--all');

const NAMES = {
  [DiagnosticSeverity.Error]: 'error',
  [DiagnosticSeverity.Warning]: 'warning',
  [DiagnosticSeverity.Information]: 'info',
  [DiagnosticSeverity.Hint]: 'hint',
};

function where(d) {
  const line = d.range?.start ? `${d.range.start.line + 1}:${d.range.start.character + 1}` : '?';
  const at = Array.isArray(d.path) && d.path.length ? ` at ${d.path.join('.')}` : '';
  return `${path.relative(process.cwd(), file)}:${line}${at}`;
}

async function main() {
  const text = await readFile(file, 'utf8');
  const { document, diagnostics } = await new Parser().parse(text, { source: file });

  const counts = { error: 0, warning: 0, info: 0, hint: 0 };
  for (const d of diagnostics) {
    const sev = NAMES[d.severity] ?? `severity ${d.severity}`;
    counts[sev] = (counts[sev] ?? 0) + 1;
    const shown = d.severity <= DiagnosticSeverity.Warning || showAll;
    if (shown) {
      console.log(`${sev.padEnd(7)} ${d.code}: ${d.message}\n        ${where(d)}`);
    }
  }

  const summary = `${counts.error} errors, ${counts.warning} warnings, ${counts.info} infos, ${counts.hint} hints`;
  if (!document || counts.error > 0) {
    console.error(`FAIL ${path.relative(process.cwd(), file)}: ${document ? 'invalid' : 'did not parse'} (${summary})`);
    process.exit(1);
  }
  const n = (c) => c.length;
  console.log(
    `OK ${path.relative(process.cwd(), file)}: AsyncAPI ${document.version()}, ` +
      `${n(document.servers())} servers, ${n(document.channels())} channels, ` +
      `${n(document.operations())} operations, ${n(document.messages())} messages (${summary})`,
  );
}

main().catch((e) => {
  console.error(`FAIL: ${e?.stack ?? e}`);
  process.exit(1);
});
