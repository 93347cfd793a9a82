#!/usr/bin/env node
// Calls every RPC of msstore-facade from Node.js and shows its rich error details.
//
// Start the facade against its built-in emulator, then run this script with a user's two Store
// ID keys (the sandbox mints them):
//
//     cargo run --release -- --sandbox                              # terminal 1
//     cd examples/node && npm ci                                    # terminal 2
//     node store_caller.js \
//         --collections-key "$(cargo run -q --release -- sandbox-key --user alice)" \
//         --purchase-key "$(cargo run -q --release -- sandbox-key --type purchase --user alice)"
//
// What it shows:
// - The API loaded from the repository's proto/ at start-up with @grpc/proto-loader: nothing
//   generated, so the script always matches the protos.
// - One call of every RPC of the five services with valid sandbox data, and what came back.
// - Failures provoked on purpose (invalid input, and the sandbox's magic ids MAGIC-429 and
//   MAGIC-503), with the grpc-status-details-bin trailer decoded into google.rpc.Status
//   (protobufjs, proto/third_party/google/rpc) and its ErrorInfo (reason, domain, metadata),
//   RetryInfo (retry_delay) and BadRequest (field violations).
// - The retry rule callers of the facade should follow: retry only when the status carries
//   RetryInfo, after the delay it names, a bounded number of times. The facade has already
//   retried what it could; a status without RetryInfo will not get better by asking again.
//
// Each call has an expected outcome. The script exits 1 if any call ends otherwise, so it
// doubles as a smoke test (tests/polyglot_examples.rs runs it against --sandbox in CI).
'use strict';

const crypto = require('node:crypto');
const fs = require('node:fs');
const path = require('node:path');
const { parseArgs } = require('node:util');

const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const protobuf = require('protobufjs');

const REPO_PROTO_DIR = path.resolve(__dirname, '..', '..', 'proto');

// The retry rule: at most this many attempts per call, and never a wait longer than this. A
// RetryInfo delay above it (a throttled Store asks for 30 s) is reported to the user instead.
const MAX_ATTEMPTS = 3;
const MAX_RETRY_WAIT_SECONDS = 5;
// Every call's deadline; the facade gives up upstream when it passes.
const CALL_TIMEOUT_SECONDS = 15;

// Sandbox data (README, "The sandbox catalog" and "Magic ids").
const LICENSE = { product_id: '9NBLGGH4R2R6', sku_id: '0016', content_id: 'c-1' };
const CONSUMABLE = '9NSANDBOXCNS';
const DEVELOPER_MANAGED_CONSUMABLE = '9NSANDBOXUCN';
const TRIAL_APP = '9NSANDBOXAPP';
const PASS = '9NSANDBOXPAS';
const REVOKED_ON_GRANT = '9NSANDBOXRVK'; // a free product the sandbox refunds at once

/** Every .proto file under proto/msstore, relative to proto/ (as the loader resolves them). */
function apiProtoFiles(protoDir) {
  const files = fs
    .readdirSync(path.join(protoDir, 'msstore'), { recursive: true })
    .filter((f) => f.endsWith('.proto'))
    .map((f) => path.posix.join('msstore', f.split(path.sep).join('/')))
    .sort();
  if (files.length === 0) throw new Error(`no .proto files under ${protoDir}/msstore`);
  return files;
}

/** The five services' client constructors, loaded from proto/. Field names stay snake_case as
 * in the protos; enums are their names; 64-bit integers are strings; an empty repeated field is
 * an empty array. */
function loadServices(protoDir) {
  const definition = protoLoader.loadSync(apiProtoFiles(protoDir), {
    includeDirs: [protoDir, path.join(protoDir, 'third_party')],
    keepCase: true,
    enums: String,
    longs: String,
    arrays: true,
  });
  return grpc.loadPackageDefinition(definition).msstore.v1;
}

/** The google.rpc types for the grpc-status-details-bin trailer. google/protobuf/any.proto and
 * duration.proto are bundled with protobufjs; google/rpc is vendored in proto/third_party. */
function loadRichErrorTypes(protoDir) {
  const thirdParty = path.join(protoDir, 'third_party');
  const root = new protobuf.Root();
  root.resolvePath = (origin, target) => {
    const vendored = path.join(thirdParty, target);
    return fs.existsSync(vendored) ? vendored : protobuf.util.path.resolve(origin, target);
  };
  root.loadSync(['google/rpc/status.proto', 'google/rpc/error_details.proto'], { keepCase: true });
  return root;
}

/** What grpc-status-details-bin says about a failed call, decoded. */
class RichError {
  constructor(types, error) {
    this.errorInfo = null;
    this.retryDelay = null; // seconds, from RetryInfo
    this.badRequest = null;
    const [bytes] = error.metadata ? error.metadata.get('grpc-status-details-bin') : [];
    if (!bytes) return;
    const Status = types.lookupType('google.rpc.Status');
    for (const any of Status.decode(bytes).details) {
      // type_url is "type.googleapis.com/google.rpc.ErrorInfo": the message name follows "/".
      const type = types.lookupType(any.type_url.slice(any.type_url.lastIndexOf('/') + 1));
      const detail = type.toObject(type.decode(any.value), { longs: Number, defaults: true });
      if (type.fullName === '.google.rpc.ErrorInfo') this.errorInfo = detail;
      if (type.fullName === '.google.rpc.RetryInfo') {
        const delay = detail.retry_delay || { seconds: 0, nanos: 0 };
        this.retryDelay = delay.seconds + delay.nanos / 1e9;
      }
      if (type.fullName === '.google.rpc.BadRequest') this.badRequest = detail;
    }
  }

  /** The detail kinds present: ErrorInfo, RetryInfo, BadRequest or fewer. */
  kinds() {
    const present = {
      ErrorInfo: this.errorInfo !== null,
      RetryInfo: this.retryDelay !== null,
      BadRequest: this.badRequest !== null,
    };
    return new Set(Object.keys(present).filter((kind) => present[kind]));
  }

  /** One line per detail, as the script prints them. */
  describe() {
    const lines = [];
    if (this.errorInfo) {
      const { reason, domain, metadata } = this.errorInfo;
      const pairs = Object.keys(metadata).sort().map((k) => `${k}=${metadata[k]}`).join(' ');
      lines.push(`ErrorInfo: reason=${reason} domain=${domain}${pairs ? ` metadata: ${pairs}` : ''}`);
    }
    if (this.retryDelay !== null) lines.push(`RetryInfo: retry_delay=${this.retryDelay}s`);
    for (const violation of this.badRequest ? this.badRequest.field_violations : []) {
      lines.push(`BadRequest: ${violation.field}: ${violation.description}`);
    }
    return lines;
  }
}

const codeName = (code) => Object.keys(grpc.status).find((name) => grpc.status[name] === code);
const sleep = (seconds) => new Promise((resolve) => setTimeout(resolve, seconds * 1000));

/** Makes calls with the retry rule, prints each outcome and counts the unexpected ones. */
class Caller {
  constructor(services, types, address) {
    // Only the facade is contacted: no HTTP proxy from the environment.
    const options = { 'grpc.enable_http_proxy': 0 };
    const credentials = grpc.credentials.createInsecure();
    this.clients = {};
    for (const name of Object.keys(services)) {
      if (services[name].service) this.clients[name] = new services[name](address, credentials, options);
    }
    this.types = types;
    this.calls = 0;
    this.unexpected = [];
  }

  /** Calls service/method; prints the `show` fields of the response and resolves to it, or to
   * null when the call failed. `expect`: the code name, the detail kinds the status must carry,
   * and the attempts the retry rule should make. */
  async call(service, method, request, why, { expect = {}, show = [] } = {}) {
    const { code: wantCode = 'OK', details: wantDetails = [], attempts: wantAttempts = 1 } = expect;
    const fullName = `msstore.v1.${service}/${method}`;
    console.log(`\n${fullName}  (${why})`);
    const { response, error, attempts } = await this.withRetries(this.clients[service], method, request);
    this.calls += 1;
    const code = error ? codeName(error.code) : 'OK';
    const plural = attempts > 1 ? 's' : '';
    let details = new Set();
    if (error) {
      console.log(`  -> ${code} (${attempts} attempt${plural}): ${error.details}`);
      const rich = new RichError(this.types, error);
      for (const line of rich.describe()) console.log(`  ${line}`);
      details = rich.kinds();
    } else {
      console.log(`  -> OK (${attempts} attempt${plural})`);
      printFields(response, show);
    }
    const missing = wantDetails.filter((kind) => !details.has(kind));
    if (code !== wantCode || missing.length > 0 || attempts !== wantAttempts) {
      const wanted = `${wantCode} with [${wantDetails.join(', ')}] in ${wantAttempts} attempt(s)`;
      console.log(`  UNEXPECTED: wanted ${wanted}`);
      this.unexpected.push(fullName);
    }
    return response;
  }

  /** The retry rule. Resolves to { response, error, attempts }. */
  async withRetries(client, method, request) {
    for (let attempt = 1; ; attempt += 1) {
      try {
        const response = await unary(client, method, request);
        return { response, error: null, attempts: attempt };
      } catch (error) {
        const delay = new RichError(this.types, error).retryDelay;
        if (delay === null || attempt === MAX_ATTEMPTS) {
          return { response: null, error, attempts: attempt }; // no RetryInfo: asking again will not help
        }
        if (delay > MAX_RETRY_WAIT_SECONDS) {
          console.log(`  RetryInfo asks for ${delay}s, more than this caller waits: not retried`);
          return { response: null, error, attempts: attempt };
        }
        console.log(`  ${codeName(error.code)}, RetryInfo says retry in ${delay}s: waiting`);
        await sleep(delay);
      }
    }
  }

  close() {
    for (const client of Object.values(this.clients)) client.close();
  }
}

/** One unary call with the deadline, as a promise. */
function unary(client, method, request) {
  const deadline = new Date(Date.now() + CALL_TIMEOUT_SECONDS * 1000);
  return new Promise((resolve, reject) => {
    client[method](request, { deadline }, (error, response) => (error ? reject(error) : resolve(response)));
  });
}

/** Prints some fields of a response (snake_case names); a Timestamp as proto JSON shows it. */
function printFields(message, fields) {
  for (const field of fields) {
    let value = message[field];
    if (value === undefined || value === null) continue;
    if (typeof value === 'object' && value.seconds !== undefined) { // a google.protobuf.Timestamp
      value = new Date(Number(value.seconds) * 1000).toISOString().replace('.000Z', 'Z');
    }
    console.log(`  ${field}: ${JSON.stringify(value).slice(0, 120)}`);
  }
}

/** One successful call of every RPC, in the order a service would use them. */
async function callEveryRpc(caller, collectionsKey, purchaseKey) {
  await caller.call('StoreEntitlements', 'GetOfflineLicense', LICENSE, 'an offline license',
    { show: ['product_key', 'license_instance_id', 'requestor_id'] });

  await caller.call('StoreKeys', 'RenewKey', { key: collectionsKey },
    'renew the collections key; the type is read from the key',
    { show: ['key_type', 'expires_at', 'refresh_after'] });
  await caller.call('StoreKeys', 'GetKeyCreationTokens', {},
    'the tokens a client app needs to create user keys', { show: ['expires_at'] });

  const owned = await caller.call('StoreCollections', 'QueryCollections', {
    user_key: collectionsKey,
    products: [CONSUMABLE, TRIAL_APP, DEVELOPER_MANAGED_CONSUMABLE].map((product_id) => ({ product_id })),
    all_pages: true,
  }, 'what the user owns of three products, every page');
  for (const item of owned ? owned.items : []) {
    console.log(`  ${item.product_id}: ${item.product_kind} quantity=${item.quantity}`);
  }
  // A developer-managed consumable: the app keeps the balance, so no remove_quantity. The
  // tracking id makes the consume idempotent: after an unknown outcome, replay the same one.
  await caller.call('StoreCollections', 'ConsumeProduct', {
    user_key: collectionsKey,
    product_id: DEVELOPER_MANAGED_CONSUMABLE,
    tracking_id: crypto.randomUUID(),
  }, 'consume a developer-managed consumable', { show: ['product_id', 'tracking_id'] });

  await caller.call('StorePurchases', 'GrantFreeProduct', {
    user_key: purchaseKey,
    product_id: REVOKED_ON_GRANT,
    sku_id: '0010',
    availability_id: '9PSANDBOXAVL',
    language: 'en-us',
    market: 'us',
    order_id: crypto.randomUUID(), // the idempotency key of the grant
  }, 'grant a free product (the sandbox refunds this one at once)', { show: ['order_id', 'order_state'] });
  const recurrences = await caller.call('StorePurchases', 'QueryRecurrences',
    { user_key: purchaseKey, all_pages: true }, "the user's subscriptions, every page");
  const items = recurrences ? recurrences.items : [];
  for (const item of items) console.log(`  ${item.product_id}: ${item.recurrence_state}`);
  const active = items.find((item) => item.product_id === PASS);
  await caller.call('StorePurchases', 'ChangeRecurrence', {
    user_key: purchaseKey,
    recurrence_id: active ? active.id : '',
    change_type: 'CHANGE_TYPE_EXTEND',
    extension_days: 1,
  }, 'extend the pass subscription by a day', { show: ['id', 'expiration_time'] });
  const revoked = await caller.call('StorePurchases', 'QueryOrders', {
    user_key: purchaseKey,
    line_item_states: ['LINE_ITEM_STATE_REVOKED'],
    all_pages: true,
  }, 'orders whose value was taken back');
  if (revoked) console.log(`  ${revoked.items.length} order(s) with a revoked line item`);

  // The refund reconciliation loop: pull, handle, acknowledge what was handled.
  const pulled = await caller.call('StoreRefunds', 'PullRefundEvents', { max_events: 32 },
    'refund events waiting in the queue');
  const events = pulled ? pulled.events : [];
  for (const event of events) {
    console.log(`  ${event.state} order ${event.order_id} product ${event.product_id}`);
  }
  const acked = await caller.call('StoreRefunds', 'AcknowledgeRefundEvents',
    { ack_ids: events.map((event) => event.ack_id) }, 'acknowledge the handled events');
  if (acked) console.log(`  acknowledged ${acked.acknowledged.length}, expired ${acked.expired.length}`);
}

/** Failures on purpose: each shows a kind of rich detail and what the retry rule does. */
async function provokeFailures(caller, purchaseKey) {
  await caller.call('StoreEntitlements', 'GetOfflineLicense', { ...LICENSE, sku_id: '', content_id: '..' },
    'invalid ids: refused before any Store call, never retried',
    { expect: { code: 'INVALID_ARGUMENT', details: ['ErrorInfo', 'BadRequest'] } });
  await caller.call('StoreCollections', 'QueryCollections',
    { user_key: purchaseKey, products: [{ product_id: CONSUMABLE }] },
    'a purchase key where a collections key is needed',
    { expect: { code: 'INVALID_ARGUMENT', details: ['ErrorInfo', 'BadRequest'] } });
  await caller.call('StoreEntitlements', 'GetOfflineLicense', { ...LICENSE, product_id: 'MAGIC-429' },
    'the Store throttles for 30 s: longer than this caller waits',
    { expect: { code: 'RESOURCE_EXHAUSTED', details: ['ErrorInfo', 'RetryInfo'] } });
  await caller.call('StoreEntitlements', 'GetOfflineLicense', { ...LICENSE, product_id: 'MAGIC-503' },
    `the Store is unavailable every time: retried after RetryInfo's delay, ${MAX_ATTEMPTS} attempts`,
    { expect: { code: 'UNAVAILABLE', details: ['ErrorInfo', 'RetryInfo'], attempts: MAX_ATTEMPTS } });
}

async function main() {
  const { values } = parseArgs({
    options: {
      address: { type: 'string', default: process.env.MSSTORE_FACADE_ADDR || '127.0.0.1:50051' },
      'collections-key': { type: 'string', default: process.env.MSSTORE_COLLECTIONS_KEY || '' },
      'purchase-key': { type: 'string', default: process.env.MSSTORE_PURCHASE_KEY || '' },
      'proto-dir': { type: 'string', default: REPO_PROTO_DIR },
    },
  });
  if (!values['collections-key'] || !values['purchase-key']) {
    console.error('both keys are needed (--collections-key, --purchase-key or MSSTORE_COLLECTIONS_KEY, '
      + 'MSSTORE_PURCHASE_KEY): `msstore-facade sandbox-key [--type purchase]` mints them');
    return 2;
  }
  const protoDir = path.resolve(values['proto-dir']);
  const caller = new Caller(loadServices(protoDir), loadRichErrorTypes(protoDir), values.address);
  try {
    await callEveryRpc(caller, values['collections-key'], values['purchase-key']);
    await provokeFailures(caller, values['purchase-key']);
  } finally {
    caller.close();
  }
  console.log();
  if (caller.unexpected.length > 0) {
    console.log(`${caller.unexpected.length} of ${caller.calls} calls did not answer as expected:`);
    for (const name of caller.unexpected) console.log(`  ${name}`);
    return 1;
  }
  console.log(`all ${caller.calls} calls answered as expected`);
  return 0;
}

main().then(
  (code) => { process.exitCode = code; },
  (error) => { console.error(error); process.exitCode = 1; },
);
