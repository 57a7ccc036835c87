#!/usr/bin/env node
// embedstream's HTTP API from Node.js with the official `openai` package: the same client that
// calls OpenAI, pointed at the gateway with baseURL. Embeds every line of a file three ways and
// writes {"float": [...], "base64": [...], "dimensions": [...]} (one vector per line each).
//
//   npm install
//   EMBEDSTREAM_API_KEY=es_... node openai.js --base-url http://localhost:8080/v1 --texts corpus.txt \
//     --out vectors.json [--model NAME] [--dimensions N]
"use strict";

const fs = require("fs");
const OpenAI = require("openai");

function args() {
  const out = { "base-url": "http://localhost:8080/v1", model: "all-MiniLM-L6-v2", dimensions: null, texts: null };
  const argv = process.argv.slice(2);
  for (let i = 0; i < argv.length; i += 2) out[argv[i].replace(/^--/, "")] = argv[i + 1];
  if (!out.texts || !out.out) throw new Error("usage: openai.js --texts FILE --out FILE [--base-url URL] [--model M]");
  return out;
}

async function main() {
  const opts = args();
  // A gateway without API keys ignores the key; the SDK insists on one, so send a placeholder.
  const client = new OpenAI({ baseURL: opts["base-url"], apiKey: process.env.EMBEDSTREAM_API_KEY || "none" });
  const texts = fs.readFileSync(opts.texts, "utf8").split("\n").filter((line) => line.length > 0);
  const vectors = (response) => response.data.map((item) => item.embedding);
  const out = {};
  out.float = vectors(await client.embeddings.create({ model: opts.model, input: texts, encoding_format: "float" }));
  // Without encoding_format the SDK asks for base64 and decodes it to numbers itself.
  out.base64 = vectors(await client.embeddings.create({ model: opts.model, input: texts }));
  if (opts.dimensions) {
    const dimensions = Number(opts.dimensions);
    out.dimensions = vectors(await client.embeddings.create({ model: opts.model, input: texts, dimensions }));
  }
  fs.writeFileSync(opts.out, JSON.stringify(out));
}

main().catch((err) => {
  console.error(err.message || err);
  process.exit(1);
});
