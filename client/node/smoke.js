#!/usr/bin/env node
'use strict';
// Smoke test of a running cachegate server from Node.js: proof that a client in
// another language, built only from protos/cachegate/v1/cache.proto, can use
// every RPC, including the bidirectional Pipeline stream.
//
//   node smoke.js HOST:PORT [KEY_PREFIX]
//
// It prints ONE JSON line summarizing every check and exits 0 only if all of
// them passed (1 if any failed, 2 on bad usage). Keys are KEY_PREFIX:<name>;
// the prefix defaults to a random one, so runs never see each other's keys.
// Every key it writes is temporary except KEY_PREFIX:kept (TTL 10 minutes),
// which it leaves in place so that a caller (tests/integration/
// test_node_client.py) can read it back from another language and make sure
// this script really wrote something.

const crypto = require('node:crypto');
const { CacheGateClient, grpc } = require('./client');

// The whole run is a handful of RPCs on one machine; if it takes longer than
// this, something hangs, and a clear failure beats a test runner's kill.
const OVERALL_TIMEOUT_MS = 60_000;
const KEPT_TTL_SECONDS = 600;

const target = process.argv[2];
if (!target || !/:\d+$/.test(target)) {
  console.error('usage: node smoke.js HOST:PORT [KEY_PREFIX]   (e.g. node smoke.js 127.0.0.1:50051)');
  process.exit(2);
}
const prefix = process.argv[3] || `node-smoke:${crypto.randomUUID()}`;
const key = (name) => `${prefix}:${name}`;

// Values deliberately hold bytes that are not valid UTF-8 (0x00, 0xff, 0x80):
// a client or server that treated values as text would mangle them, and the
// byte-for-byte comparisons below would catch it.
function valueFor(k) {
  return Buffer.concat([Buffer.from(`from node: ${k} `, 'utf8'), Buffer.from([0x00, 0xff, 0x80, 0x0a])]);
}

const checks = []; // { name, ok, detail? } in the order they ran
const summary = { ok: false, target, prefix, backend: null, breaker_state: null, kept: null };

class CheckFailed extends Error {}

function expect(condition, message) {
  if (!condition) throw new CheckFailed(message);
}

function expectBytes(actual, expected, what) {
  expect(
    Buffer.isBuffer(actual) && actual.equals(expected),
    `${what}: expected bytes ${expected.toString('hex')}, got ${Buffer.isBuffer(actual) ? actual.toString('hex') : typeof actual}`,
  );
}

// An RPC error reads as "INVALID_ARGUMENT (3): message"; anything else as its message.
function describe(err) {
  if (err instanceof CheckFailed) return err.message;
  if (err && typeof err.code === 'number') {
    return `${grpc.status[err.code] ?? 'code'} (${err.code}): ${err.details || err.message}`;
  }
  return String((err && err.stack) || err);
}

// Runs one named check. A failure is recorded and the run goes on, so a
// single broken RPC still shows how all the others fared.
async function check(name, body) {
  try {
    await body();
    checks.push({ name, ok: true });
  } catch (err) {
    checks.push({ name, ok: false, detail: describe(err) });
  }
}

// Expects the promise to be rejected with this gRPC status; returns the error.
async function expectStatus(promise, code, what) {
  let reply;
  try {
    reply = await promise;
  } catch (err) {
    expect(
      err.code === code,
      `${what}: expected ${grpc.status[code]} (${code}), got ${describe(err)}`,
    );
    return err;
  }
  throw new CheckFailed(`${what}: expected ${grpc.status[code]} (${code}), got success ${JSON.stringify(reply)}`);
}

// Compares one columnar PipelineResponse with what each operation should give:
// expected[i] is [outcome name, value Buffer or null]; errors lists the
// { index, code } of each OUTCOME_ERROR, in order.
function expectBatch(response, expected, errors, what) {
  const { outcomes, values } = response;
  expect(
    outcomes.length === expected.length && values.length === expected.length,
    `${what}: ${expected.length} operations but ${outcomes.length} outcomes and ${values.length} values`,
  );
  expected.forEach(([outcome, value], i) => {
    expect(outcomes[i] === outcome, `${what}: operation ${i}: expected ${outcome}, got ${outcomes[i]}`);
    // values[i] is only meaningful for OUTCOME_VALUE and empty otherwise.
    expectBytes(values[i], value ?? Buffer.alloc(0), `${what}: values[${i}]`);
  });
  const got = response.errors.map((e) => ({ index: e.index, code: e.code }));
  expect(
    JSON.stringify(got) === JSON.stringify(errors),
    `${what}: expected errors ${JSON.stringify(errors)}, got ${JSON.stringify(response.errors)}`,
  );
  // An error must say what was wrong, not just carry a code.
  response.errors.forEach((e) => expect(e.message, `${what}: error at index ${e.index} has no message`));
}

async function run(client) {
  // Health: "" is the process, cachegate.v1.CacheService follows the breaker.
  for (const service of ['', 'cachegate.v1.CacheService']) {
    await check(`health ${JSON.stringify(service)}`, async () => {
      const status = await client.healthStatus(service);
      expect(status === 'SERVING', `expected SERVING, got ${status}`);
    });
  }

  const kept = key('kept');
  const keptValue = valueFor(kept);
  await check('set_ex', async () => {
    await client.setEx(kept, keptValue, KEPT_TTL_SECONDS);
    summary.kept = { key: kept, value_base64: keptValue.toString('base64'), ttl_seconds: KEPT_TTL_SECONDS };
  });

  await check('get hit', async () => {
    const reply = await client.get(kept);
    expect(reply.found === true, `expected found true, got ${reply.found}`);
    expectBytes(reply.value, keptValue, 'value');
  });

  await check('get miss', async () => {
    const reply = await client.get(key('never-written'));
    expect(reply.found === false, `expected found false, got ${reply.found}`);
    expect(reply.value.length === 0, `a miss carries no value, got ${reply.value.length} bytes`);
  });

  await check('set_ex ttl 0 is INVALID_ARGUMENT', async () => {
    const err = await expectStatus(
      client.setEx(key('zero-ttl'), valueFor(key('zero-ttl')), 0),
      grpc.status.INVALID_ARGUMENT,
      'SetEx with ttl_seconds 0',
    );
    // The server attaches a google.rpc.BadRequest naming the field; it rides in
    // this trailer (decoding it would need google/rpc/*.proto, not worth it here).
    expect(err.metadata.get('grpc-status-details-bin').length > 0, 'no rich error details trailer');
    const after = await client.get(key('zero-ttl'));
    expect(after.found === false, 'the rejected write was stored anyway');
  });

  // Pipeline: two batches on one stream. The second is sent only after the
  // first is answered and reads what the first wrote, so it also proves the
  // batches ran in order.
  const [a, b, c, missing] = ['pipe-a', 'pipe-b', 'pipe-c', 'pipe-missing'].map(key);
  const stream = client.pipeline();
  await check('pipeline batch 1', async () => {
    const response = await stream.send([
      { set_ex: { key: a, value: valueFor(a), ttl_seconds: 60 } },
      { set_ex: { key: b, value: valueFor(b), ttl_seconds: 60 } },
      { get: { key: a } },
      { get: { key: missing } },
      { delete: { key: missing } },
    ]);
    expectBatch(
      response,
      [
        ['OUTCOME_OK', null],
        ['OUTCOME_OK', null],
        ['OUTCOME_VALUE', valueFor(a)],
        ['OUTCOME_NOT_FOUND', null],
        ['OUTCOME_NOT_FOUND', null],
      ],
      [],
      'batch 1',
    );
  });
  await check('pipeline batch 2', async () => {
    const response = await stream.send([
      { delete: { key: a } },
      { get: { key: a } },
      { get: { key: b } },
      // A bad operation fails only itself: INVALID_ARGUMENT (3) at index 3.
      { set_ex: { key: c, value: valueFor(c), ttl_seconds: 0 } },
      // Written by the unary SetEx above: both paths see the same store.
      { get: { key: kept } },
    ]);
    expectBatch(
      response,
      [
        ['OUTCOME_OK', null],
        ['OUTCOME_NOT_FOUND', null],
        ['OUTCOME_VALUE', valueFor(b)],
        ['OUTCOME_ERROR', null],
        ['OUTCOME_VALUE', keptValue],
      ],
      [{ index: 3, code: grpc.status.INVALID_ARGUMENT }],
      'batch 2',
    );
  });
  stream.end();

  await check('stats', async () => {
    const stats = await client.stats();
    summary.backend = stats.backend;
    summary.breaker_state = stats.breaker && stats.breaker.state;
    expect(
      ['memory', 'redis', 'sentinel', 'cluster'].includes(stats.backend),
      `unknown backend ${JSON.stringify(stats.backend)}`,
    );
    expect(summary.breaker_state === 'CIRCUIT_STATE_CLOSED', `breaker is ${summary.breaker_state}`);
    // uint64 counters arrive as decimal strings (longs: String in client.js).
    expect(BigInt(stats.calls.calls_total) > 0n, `calls_total is ${stats.calls.calls_total}`);
  });

  await check('delete', async () => {
    const first = await client.delete(b); // written by pipeline batch 1
    expect(first.deleted === true, `first delete: expected deleted true, got ${first.deleted}`);
    const again = await client.delete(b);
    expect(again.deleted === false, `second delete: expected deleted false, got ${again.deleted}`);
    const after = await client.get(b);
    expect(after.found === false, 'the key is still there after Delete');
  });
}

function finish(exitCode, problem) {
  const failed = checks.filter((c) => !c.ok);
  summary.ok = exitCode === 0;
  summary.passed = checks.length - failed.length;
  summary.failed = failed.length;
  summary.checks = checks;
  if (problem) summary.error = problem;
  console.log(JSON.stringify(summary));
  if (exitCode !== 0) {
    const reasons = failed.map((c) => `${c.name}: ${c.detail}`);
    if (problem) reasons.push(problem);
    console.error(`smoke: FAILED against ${target}: ${reasons.join('; ')}`);
  }
  process.exitCode = exitCode;
}

async function main() {
  const client = new CacheGateClient(target);
  const watchdog = setTimeout(() => {
    finish(1, `timed out after ${OVERALL_TIMEOUT_MS} ms`);
    process.exit(1);
  }, OVERALL_TIMEOUT_MS);
  watchdog.unref(); // never what keeps the process alive
  try {
    await run(client);
  } finally {
    clearTimeout(watchdog);
    client.close();
  }
  const allPassed = checks.length > 0 && checks.every((c) => c.ok);
  finish(allPassed ? 0 : 1);
}

main().catch((err) => finish(1, `unexpected error: ${describe(err)}`));
