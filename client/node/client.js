'use strict';
// A small promise-based cachegate client for Node.js.
//
// The stubs are built at run time by @grpc/proto-loader straight from the
// contract in ../../protos, so there is no generated JavaScript to commit or to
// keep in step with the .proto: change the contract, rerun, done.

const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

// The contract, as the Python server and every other language see it.
const CONTRACT_ROOT = path.resolve(__dirname, '..', '..', 'protos');
// The standard health protocol (a Check-only subset kept beside this file,
// because protos/ holds cachegate's own module only).
const HEALTH_ROOT = path.resolve(__dirname, 'proto');

// One set of loader options for both files, so values look alike everywhere:
// - keepCase: fields keep their .proto names (ttl_seconds, not ttlSeconds),
//   the same names grpcurl, the README and the Python client use;
// - longs: String, because int64/uint64 counters can exceed 2^53 and a
//   JavaScript number would silently round them;
// - enums: String, so outcomes read as 'OUTCOME_VALUE' rather than 1;
// - bytes: Buffer, because values are opaque bytes, not text;
// - defaults/arrays: proto3 leaves zero values off the wire; with these a miss
//   still reads as found === false and an empty batch as [] instead of undefined;
// - oneofs: a received Operation also says which of get/set_ex/delete it holds.
const LOADER_OPTIONS = {
  keepCase: true,
  longs: String,
  enums: String,
  bytes: Buffer,
  defaults: true,
  arrays: true,
  oneofs: true,
};

// How long one unary call may take unless the caller says otherwise. The
// server honours gRPC deadlines, so a stuck call fails with DEADLINE_EXCEEDED
// instead of hanging forever.
const DEFAULT_DEADLINE_MS = 5000;

function loadPackage(root, file) {
  const definition = protoLoader.loadSync(file, { ...LOADER_OPTIONS, includeDirs: [root] });
  return grpc.loadPackageDefinition(definition);
}

const cachegateV1 = loadPackage(CONTRACT_ROOT, 'cachegate/v1/cache.proto').cachegate.v1;
const healthV1 = loadPackage(HEALTH_ROOT, 'grpc/health/v1/health.proto').grpc.health.v1;

function deadlineIn(ms) {
  return new Date(Date.now() + ms);
}

class CacheGateClient {
  // target is "host:port". Plaintext by default, like the server's own
  // default listener on 127.0.0.1; pass grpc.credentials.createSsl(...) for TLS.
  constructor(target, { credentials = grpc.credentials.createInsecure(), deadlineMs } = {}) {
    this.deadlineMs = deadlineMs ?? DEFAULT_DEADLINE_MS;
    this.cache = new cachegateV1.CacheService(target, credentials);
    // Both stubs share one channel (one TCP connection) to the server.
    this.health = new healthV1.Health(target, credentials, {
      channelOverride: this.cache.getChannel(),
    });
  }

  // Calls a unary method and resolves with its response; rejects with grpc-js's
  // error, whose .code is the gRPC status number (grpc.status.*).
  #unary(stub, method, request) {
    return new Promise((resolve, reject) => {
      stub[method](request, { deadline: deadlineIn(this.deadlineMs) }, (err, reply) =>
        err ? reject(err) : resolve(reply),
      );
    });
  }

  // Resolves with 'SERVING', 'NOT_SERVING', ...; "" asks about the whole server.
  async healthStatus(service = '') {
    const reply = await this.#unary(this.health, 'Check', { service });
    return reply.status;
  }

  // Resolves with { found, value }: a miss is found === false, not an error.
  get(key) {
    return this.#unary(this.cache, 'Get', { key });
  }

  // value is a Buffer (strings are accepted and sent as UTF-8 by protobufjs).
  setEx(key, value, ttlSeconds) {
    return this.#unary(this.cache, 'SetEx', { key, value, ttl_seconds: ttlSeconds });
  }

  // Resolves with { deleted }.
  delete(key) {
    return this.#unary(this.cache, 'Delete', { key });
  }

  stats() {
    return this.#unary(this.cache, 'Stats', {});
  }

  // Opens a Pipeline stream. send(operations) writes one batch and resolves
  // with its PipelineResponse; the server answers batches one by one, in
  // order, so responses are matched to batches by position. Call end() when
  // done so the server can close the stream.
  pipeline({ deadlineMs = this.deadlineMs } = {}) {
    const call = this.cache.Pipeline({ deadline: deadlineIn(deadlineMs) });
    const waiting = []; // { resolve, reject } per batch sent and not yet answered
    let failure = null;
    const failAll = (err) => {
      failure = failure ?? err;
      while (waiting.length) waiting.shift().reject(failure);
    };
    call.on('data', (response) => {
      const next = waiting.shift();
      if (next) next.resolve(response);
      else failAll(new Error('Pipeline: the server answered a batch that was never sent'));
    });
    call.on('error', failAll);
    call.on('end', () => failAll(new Error('Pipeline: stream ended before every batch was answered')));
    return {
      send(operations) {
        if (failure) return Promise.reject(failure);
        return new Promise((resolve, reject) => {
          waiting.push({ resolve, reject });
          call.write({ operations });
        });
      },
      end() {
        call.end();
      },
    };
  }

  // Closes the one channel both stubs share.
  close() {
    this.cache.close();
  }
}

module.exports = { CacheGateClient, grpc, cachegateV1, healthV1, LOADER_OPTIONS };
