#!/usr/bin/env node
// Example client of pagedserve.v1.TextGeneration: loads the proto at run time,
// calls every RPC once, and checks what comes back.
//
// Each check prints one line "CHECK <name> ok key=value ..." (values of strings
// are JSON-quoted), or "CHECK <name> FAIL <reason>" followed by an exit code of 1.
// Checks run in order and stop at the first failure, since the stream check
// compares against the unary result.
"use strict";

const path = require("node:path");
const { parseArgs } = require("node:util");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const PROTO_PATH = path.join(__dirname, "..", "..", "proto", "pagedserve", "v1", "generation.proto");
const DEFAULT_ADDRESS = "127.0.0.1:50051";
const DEFAULT_PROMPT = "The capital of France is";
// A 16-token greedy completion takes well under a second on a GPU and a few
// seconds on a laptop CPU; a generous deadline keeps a busy CI machine green
// while still ending a hung call.
const CALL_DEADLINE_MS = 120_000;
const SHORT_MAX_TOKENS = 16;
// Long enough that the request is still running when the Abort arrives.
const LONG_MAX_TOKENS = 400;

// keepCase: field names as written in the proto (max_tokens, not maxTokens).
// enums: String, so finish reasons read as "FINISH_REASON_STOP".
// longs: String, so uint64 fields (seed) never lose precision.
// defaults: true, so unset scalars read as their zero value instead of undefined.
const LOADER_OPTIONS = { keepCase: true, enums: String, longs: String, defaults: true, oneofs: true };

/** A wrong answer from the server. */
class CheckFailed extends Error {}

/** Any error raised while a named check ran: a wrong answer or a gRPC error. */
class FailureInCheck extends Error {
  constructor(checkName, cause) {
    super(`${checkName}: ${cause.message}`, { cause });
    this.checkName = checkName;
  }
}

function requireThat(condition, reason) {
  if (!condition) throw new CheckFailed(reason);
}

/** Prints the machine-readable line of a passed check. */
function reportOk(name, fields) {
  const parts = Object.entries(fields).map(
    ([key, value]) => `${key}=${typeof value === "string" ? JSON.stringify(value) : value}`
  );
  console.log(["CHECK", name, "ok", ...parts].join(" "));
}

function loadTextGenerationClient(address) {
  const definition = protoLoader.loadSync(PROTO_PATH, LOADER_OPTIONS);
  const { TextGeneration } = grpc.loadPackageDefinition(definition).pagedserve.v1;
  return new TextGeneration(address, grpc.credentials.createInsecure());
}

/** Calls a unary RPC; resolves with the response, rejects with the gRPC error. */
function callUnary(client, method, request) {
  const options = { deadline: Date.now() + CALL_DEADLINE_MS };
  return new Promise((resolve, reject) => {
    client[method](request, options, (error, response) => (error ? reject(error) : resolve(response)));
  });
}

function openStream(client, request) {
  return client.GenerateStream(request, { deadline: Date.now() + CALL_DEADLINE_MS });
}

function greedyRequest(model, prompt) {
  // temperature 0 must reach the server: it is a proto3 optional field, so it
  // is sent because it is set here, and unset would mean 1.0 (sampling).
  return { model, prompt, sampling: { max_tokens: SHORT_MAX_TOKENS, temperature: 0 } };
}

async function checkListModels(client) {
  const response = await callUnary(client, "ListModels", {});
  requireThat(response.models.length > 0, "ListModels returned no models");
  const model = response.models[0];
  requireThat(model.name !== "", "the default model has an empty name");
  console.log(`model: ${model.name}`);
  reportOk("list_models", { model: model.name, max_context_tokens: model.max_context_tokens });
  return model.name;
}

async function checkUnary(client, model, prompt) {
  const response = await callUnary(client, "Generate", greedyRequest(model, prompt));
  requireThat(response.completions.length === 1, `expected 1 completion, got ${response.completions.length}`);
  const [completion] = response.completions;
  const numTokens = completion.token_ids.length;
  console.log(`text: ${JSON.stringify(completion.text)}`);
  console.log(`tokens: ${numTokens}  finish_reason: ${completion.finish_reason}`);
  requireThat(
    numTokens >= 1 && numTokens <= SHORT_MAX_TOKENS,
    `${numTokens} tokens for max_tokens ${SHORT_MAX_TOKENS}`
  );
  requireThat(
    ["FINISH_REASON_STOP", "FINISH_REASON_LENGTH"].includes(completion.finish_reason),
    `unexpected finish_reason ${completion.finish_reason}`
  );
  requireThat(
    response.usage.completion_tokens === numTokens,
    `usage.completion_tokens ${response.usage.completion_tokens} != ${numTokens} token ids`
  );
  reportOk("unary", { tokens: numTokens, finish_reason: completion.finish_reason, text: completion.text });
  return completion;
}

async function checkStreamMatchesUnary(client, model, prompt, unaryCompletion) {
  let text = "";
  const tokenIds = [];
  let last = null;
  process.stdout.write("stream: ");
  for await (const message of openStream(client, greedyRequest(model, prompt))) {
    requireThat(message.index === 0, `delta for completion ${message.index} of a single-completion request`);
    process.stdout.write(message.text);
    text += message.text;
    tokenIds.push(...message.token_ids);
    last = message;
  }
  process.stdout.write("\n");
  requireThat(last !== null, "the stream ended without a message");
  requireThat(
    text === unaryCompletion.text,
    `streamed text ${JSON.stringify(text)} != unary text ${JSON.stringify(unaryCompletion.text)}`
  );
  requireThat(
    tokenIds.join(",") === unaryCompletion.token_ids.join(","),
    `streamed token ids [${tokenIds}] != unary token ids [${unaryCompletion.token_ids}]`
  );
  requireThat(
    last.finish_reason === unaryCompletion.finish_reason,
    `stream finished with ${last.finish_reason}, unary with ${unaryCompletion.finish_reason}`
  );
  reportOk("stream", { tokens: tokenIds.length, finish_reason: last.finish_reason, matches_unary: true });
}

async function checkAbort(client, model, prompt) {
  // Unique per run, so that reruns against the same gateway never collide.
  const requestId = `node-client-abort-${process.pid}-${Date.now()}`;
  const request = {
    request_id: requestId,
    model,
    prompt,
    sampling: { max_tokens: LONG_MAX_TOKENS, temperature: 0, ignore_eos: true },
  };
  let numTokens = 0;
  let aborted = null;
  let last = null;
  for await (const message of openStream(client, request)) {
    requireThat(message.request_id === requestId, `delta for request ${JSON.stringify(message.request_id)}`);
    numTokens += message.token_ids.length;
    last = message;
    if (aborted === null) {
      // The stream keeps buffering while we wait for Abort's answer.
      aborted = (await callUnary(client, "Abort", { request_id: requestId })).aborted;
    }
  }
  requireThat(last !== null, "the stream ended without a message");
  requireThat(aborted === true, "Abort answered aborted=false for a running request");
  requireThat(
    last.finish_reason === "FINISH_REASON_ABORTED",
    `the aborted stream ended with ${last.finish_reason} after ${numTokens} tokens`
  );
  requireThat(numTokens < LONG_MAX_TOKENS, `all ${numTokens} tokens were generated despite the abort`);
  reportOk("abort", { request_id: requestId, tokens: numTokens, finish_reason: last.finish_reason });
}

async function checkInvalidArgument(client, model, prompt) {
  const request = { model, prompt, sampling: { max_tokens: 4, temperature: 0, top_p: 1.5 } };
  let error = null;
  try {
    await callUnary(client, "Generate", request);
  } catch (caught) {
    error = caught;
  }
  requireThat(error !== null, "top_p 1.5 was accepted");
  const codeName = grpc.status[error.code];
  requireThat(
    error.code === grpc.status.INVALID_ARGUMENT,
    `expected INVALID_ARGUMENT, got ${codeName}: ${error.details}`
  );
  requireThat(
    error.details.includes("sampling.top_p"),
    `the message does not name sampling.top_p: ${error.details}`
  );
  reportOk("invalid_argument", { code: codeName, message: error.details });
}

const CHECKS = ["list_models", "unary", "stream", "abort", "invalid_argument"];

async function runCheck(checkName, body) {
  try {
    return await body();
  } catch (error) {
    throw new FailureInCheck(checkName, error);
  }
}

async function runChecks(client, prompt) {
  const model = await runCheck("list_models", () => checkListModels(client));
  const unaryCompletion = await runCheck("unary", () => checkUnary(client, model, prompt));
  await runCheck("stream", () => checkStreamMatchesUnary(client, model, prompt, unaryCompletion));
  await runCheck("abort", () => checkAbort(client, model, prompt));
  await runCheck("invalid_argument", () => checkInvalidArgument(client, model, prompt));
}

function parseCommandLine() {
  const { values } = parseArgs({
    options: {
      address: { type: "string", default: DEFAULT_ADDRESS },
      prompt: { type: "string", default: DEFAULT_PROMPT },
      help: { type: "boolean", short: "h", default: false },
    },
  });
  return values;
}

async function main() {
  let options;
  try {
    options = parseCommandLine();
  } catch (error) {
    console.error(`${error.message}\nusage: node client.js [--address HOST:PORT] [--prompt TEXT]`);
    return 2;
  }
  if (options.help) {
    console.log(`usage: node client.js [--address HOST:PORT] [--prompt TEXT]\nchecks, in order: ${CHECKS.join(", ")}`);
    return 0;
  }
  const client = loadTextGenerationClient(options.address);
  try {
    await runChecks(client, options.prompt);
    console.log(`all ${CHECKS.length} checks passed against ${options.address}`);
    return 0;
  } catch (error) {
    return reportFailure(error, options.address);
  } finally {
    client.close();
  }
}

/** Prints why a check failed; a gRPC error is shown with its status code name. */
function reportFailure(failure, address) {
  if (!(failure instanceof FailureInCheck)) throw failure; // a bug in this client
  const error = failure.cause;
  let reason;
  if (error instanceof CheckFailed) reason = error.message;
  else if (error.code !== undefined) reason = `gRPC ${grpc.status[error.code]} from ${address}: ${error.details}`;
  else reason = error.stack;
  console.log(`\nCHECK ${failure.checkName} FAIL ${reason}`);
  console.error(`FAILED: check ${failure.checkName}: ${reason}`);
  return 1;
}

main().then(
  (code) => {
    process.exitCode = code;
  },
  (error) => {
    console.error(`FAILED: ${error.stack}`);
    process.exitCode = 1;
  }
);
