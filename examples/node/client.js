#!/usr/bin/env node
// embedstream from Node.js with @grpc/grpc-js: Embed, EmbedStream, and an async job
// (SubmitJob, WatchJob, GetJobResults). Embeds every line of a file three ways and
// writes {"embed": [...], "stream": [...], "job": [...]} (one vector per line each).
//
//   npm install
//   node client.js --target localhost:50051 --texts corpus.txt --out vectors.json [--model NAME]
"use strict";

const fs = require("fs");
const path = require("path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const PROTOS = path.resolve(__dirname, "..", "..", "protos");
const definition = protoLoader.loadSync(["embedstream/v1/embedder.proto", "embedstream/v1/jobs.proto"], {
  includeDirs: [PROTOS],
  keepCase: true,
  longs: Number,
  enums: String,
  defaults: true,
  oneofs: true,
});
const v1 = grpc.loadPackageDefinition(definition).embedstream.v1;

function args() {
  const out = { target: "localhost:50051", model: "", texts: null, out: null };
  const argv = process.argv.slice(2);
  for (let i = 0; i < argv.length; i += 2) out[argv[i].replace(/^--/, "")] = argv[i + 1];
  if (!out.texts || !out.out) throw new Error("usage: client.js --texts FILE --out FILE [--target H:P] [--model M]");
  return out;
}

// Packed vectors are little-endian float32: the cheapest form to decode.
function unpack(embedding) {
  const buf = embedding.packed;
  const vec = new Array(buf.length / 4);
  for (let i = 0; i < vec.length; i++) vec[i] = buf.readFloatLE(i * 4);
  return vec;
}

function request(model, texts, id) {
  return { model, request_id: id, inputs: texts.map((text) => ({ text })), encoding: "VECTOR_ENCODING_PACKED_F32LE" };
}

function embed(client, model, texts) {
  const chunks = [];
  for (let i = 0; i < texts.length; i += 64) chunks.push(texts.slice(i, i + 64));
  return Promise.all(
    chunks.map(
      (chunk, k) =>
        new Promise((resolve, reject) => {
          const deadline = new Date(Date.now() + 60000);
          client.Embed(request(model, chunk, `unary-${k}`), { deadline }, (err, resp) =>
            err ? reject(err) : resolve(resp.embeddings.map(unpack)),
          );
        }),
    ),
  ).then((parts) => parts.flat());
}

function embedStream(client, model, texts) {
  return new Promise((resolve, reject) => {
    const call = client.EmbedStream();
    const vectors = [];
    let expected = 0;
    call.on("data", (resp) => {
      if (resp.request_id !== String(expected)) reject(new Error(`out of order: ${resp.request_id}`));
      expected += 1;
      vectors.push(...resp.embeddings.map(unpack));
    });
    call.on("error", reject);
    call.on("end", () => resolve(vectors));
    let k = 0;
    for (let i = 0; i < texts.length; i += 16) call.write(request(model, texts.slice(i, i + 16), String(k++)));
    call.end();
  });
}

function unary(client, method, message) {
  return new Promise((resolve, reject) => client[method](message, (err, resp) => (err ? reject(err) : resolve(resp))));
}

function collect(call) {
  return new Promise((resolve, reject) => {
    const items = [];
    call.on("data", (item) => items.push(item));
    call.on("error", reject);
    call.on("end", () => resolve(items));
  });
}

async function job(jobs, model, texts) {
  const created = await unary(jobs, "SubmitJob", { spec: { model }, inputs: texts.map((text) => ({ text })) });
  const updates = await collect(jobs.WatchJob({ id: created.id }));
  const last = updates[updates.length - 1];
  if (last.state !== "JOB_STATE_SUCCEEDED") throw new Error(`job ended ${last.state}: ${last.errors}`);
  const results = await collect(
    jobs.GetJobResults({ id: created.id, offset: 0, encoding: "VECTOR_ENCODING_PACKED_F32LE" }),
  );
  results.forEach((r, i) => {
    if (Number(r.index) !== i) throw new Error(`result ${r.index} where ${i} was due`);
  });
  return results.map((r) => unpack(r.embedding));
}

async function main() {
  const opts = args();
  const texts = fs.readFileSync(opts.texts, "utf8").split("\n").filter((line) => line.length > 0);
  const credentials = grpc.credentials.createInsecure();
  const embedder = new v1.Embedder(opts.target, credentials);
  const jobs = new v1.Jobs(opts.target, credentials);
  const out = {
    embed: await embed(embedder, opts.model, texts),
    stream: await embedStream(embedder, opts.model, texts),
    job: await job(jobs, opts.model, texts),
  };
  fs.writeFileSync(opts.out, JSON.stringify(out));
  console.log(`embedded ${texts.length} texts three ways: Embed, EmbedStream, SubmitJob + GetJobResults`);
  embedder.close();
  jobs.close();
}

main().catch((err) => {
  console.error(`error: ${err.message}`);
  process.exit(1);
});
