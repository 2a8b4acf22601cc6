#!/usr/bin/env node
// Submit `classify` jobs to imgqueue from Node.js and print one JSON line per result.
//
//   npm ci
//   node classify.js [--redis-url redis://localhost:6379/0] [--top-k 5] [--timeout 60] SOURCE...
//
// Submitting uses celery-node (a Celery-protocol client; none of imgqueue's code). Results are
// read the way any language can: GET celery-task-meta-<id> from Redis and parse the JSON.
// Exit status: 0 all succeeded, 1 some job failed, 2 usage, 3 timeout.
"use strict";

const celery = require("celery-node");
const Redis = require("ioredis");

function parseArgs(argv) {
  const opts = { redisUrl: process.env.REDIS_URL || "redis://localhost:6379/0", topK: 5, timeout: 60, sources: [] };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === "--redis-url") opts.redisUrl = argv[++i];
    else if (arg === "--top-k") opts.topK = Number.parseInt(argv[++i], 10);
    else if (arg === "--timeout") opts.timeout = Number.parseFloat(argv[++i]);
    else opts.sources.push(arg);
  }
  return opts;
}

// The same shape as `imgqueue result`: {id, state, result} or {id, state, error: {type, message}}.
function outcome(id, meta) {
  if (meta.status === "SUCCESS") return { id, state: meta.status, result: meta.result };
  const exc = meta.result || {};
  const message = Array.isArray(exc.exc_message) ? exc.exc_message.join(" ") : String(exc.exc_message || "");
  return { id, state: meta.status, error: { type: exc.exc_type || meta.status, message } };
}

async function waitAll(redis, ids, timeoutS) {
  const pending = new Set(ids);
  const deadline = Date.now() + timeoutS * 1000;
  let failed = false;
  while (pending.size > 0) {
    const keys = [...pending];
    const raws = await redis.mget(keys.map((id) => `celery-task-meta-${id}`));
    raws.forEach((raw, i) => {
      if (raw === null) return; // PENDING: not started, or unknown id
      const meta = JSON.parse(raw);
      if (!["SUCCESS", "FAILURE", "REVOKED"].includes(meta.status)) return; // STARTED, RETRY
      const line = outcome(keys[i], meta);
      failed = failed || line.state !== "SUCCESS";
      console.log(JSON.stringify(line));
      pending.delete(keys[i]);
    });
    if (pending.size === 0) break;
    if (Date.now() > deadline) {
      console.error(`timed out: ${pending.size} job(s) unfinished after ${timeoutS}s`);
      return 3;
    }
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  return failed ? 1 : 0;
}

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  if (opts.sources.length === 0 || !(opts.topK >= 1)) {
    console.error("usage: node classify.js [--redis-url URL] [--top-k N] [--timeout S] SOURCE...");
    return 2;
  }
  const client = celery.createClient(opts.redisUrl, opts.redisUrl, "celery");
  const task = client.createTask("classify");
  // args: [source]; kwargs: {top_k}. Sources are URLs or paths under the workers' IMAGE_ROOT.
  const ids = opts.sources.map((source) => task.applyAsync([source], { top_k: opts.topK }).taskId);
  const redis = new Redis(opts.redisUrl);
  try {
    return await waitAll(redis, ids, opts.timeout);
  } finally {
    redis.disconnect();
    await client.disconnect();
  }
}

main().then(
  (code) => process.exit(code),
  (err) => {
    console.error(`error: ${err.message}`);
    process.exit(3);
  },
);
