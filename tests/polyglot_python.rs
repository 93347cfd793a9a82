//! The polyglot callers' view: a Python gRPC client (`tests/python/client.py`), with stubs it
//! generates from `proto/` at run time, calls the real facade and decodes its rich error details
//! the way Python callers do (`grpc_status.rpc_status.from_call`, `google.rpc.error_details_pb2`).
//!
//! The client runs in a virtualenv at `<target dir>/python-venv`, built on first use from the
//! pinned `examples/python/requirements.txt` (the example callers' pins, see
//! `tests/polyglot_examples.rs`) and reused after that. It needs `python3` (3.10 or newer, with
//! the `venv` module) on `PATH` and PyPI to build the venv once; without them the test fails, it
//! never skips. Only loopback addresses are called.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use common::tools::{python_client_venv, python_env};
use common::*;
use serde_json::{json, Value};
use wiremock::matchers::{method, path, path_regex};
use wiremock::{Mock, ResponseTemplate};

/// A caller-supplied correlation vector (a v1 base of 16 characters).
const CALLER_MS_CV: &str = "PythonCaller0001.3";
/// A caller's own service ticket: must never come back in a message.
const CALLER_TICKET: &str = "caller-ticket-py-never-echo-me";

/// Runs the Python client against `addr` with `scenarios`; returns its results by name.
fn run_client(
    python: &Path,
    addr: std::net::SocketAddr,
    scenarios: &Value,
) -> HashMap<String, Value> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/client.py");
    let mut child = python_env(&mut Command::new(python))
        .arg(&script)
        .arg(addr.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the Python client");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(scenarios.to_string().as_bytes())
        .expect("send the scenarios");
    let output = child
        .wait_with_output()
        .expect("wait for the Python client");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the Python client failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        output.status
    );
    // Shown only when the test fails (the harness captures it otherwise).
    eprintln!("--- Python client results\n{stdout}--- stderr\n{stderr}");
    let results: HashMap<String, Value> = stdout
        .lines()
        .map(|line| {
            let value: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not JSON ({e}): {line}\n--- stderr\n{stderr}"));
            (value["name"].as_str().unwrap().to_owned(), value)
        })
        .collect();
    let expected = scenarios.as_array().unwrap().len();
    assert_eq!(
        results.len(),
        expected,
        "one result per scenario:\n{stdout}"
    );
    results
}

/// An upstream answer carrying the Store's id headers, with `correlation` as MS-CorrelationId.
fn with_ids(template: ResponseTemplate, correlation: &str) -> ResponseTemplate {
    template
        .insert_header("MS-CorrelationId", correlation)
        .insert_header("MS-RequestId", "req-py")
        .insert_header("MS-CV", "xu2HW6SrSkyfHyFh.0.1.0")
        .insert_header("MS-ServerId", "server-py")
}

fn text<'a>(value: &'a Value, pointer: &str) -> &'a str {
    value
        .pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no text at {pointer} in {value:#}"))
}

fn strings(value: &Value, pointer: &str) -> Vec<String> {
    value
        .pointer(pointer)
        .and_then(Value::as_array)
        .unwrap_or_else(|| panic!("no list at {pointer} in {value:#}"))
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

/// Asserts the common shape of a failed call as Python sees it: the code, an ErrorInfo with
/// an UPPER_SNAKE reason and the given domain, and decodable details.
fn assert_error(result: &Value, code: &str, domain: &str) {
    assert_eq!(text(result, "/code"), code, "{result:#}");
    assert_eq!(
        result["status_details"], true,
        "no rich details: {result:#}"
    );
    assert_eq!(text(result, "/error_info/domain"), domain, "{result:#}");
    let reason = text(result, "/error_info/reason");
    assert!(
        !reason.is_empty()
            && reason
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_'),
        "reason {reason:?} is not UPPER_SNAKE"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_callers_see_answers_codes_and_rich_details() {
    let python = tokio::task::spawn_blocking(python_client_venv)
        .await
        .unwrap();

    let h = Harness::start().await;
    let store_host = url::Url::parse(&h.business.uri())
        .unwrap()
        .host_str()
        .unwrap()
        .to_owned();
    let issued = now();
    let old_key = store_key(COLLECTIONS_AUD, issued - 86_400, issued + 89 * 86_400);
    let new_exp = issued + 90 * 86_400;
    let new_key = store_key(COLLECTIONS_AUD, issued, new_exp);
    let purchase_key = store_key(PURCHASE_AUD, issued - 86_400, issued + 89 * 86_400);

    Mock::given(method("POST"))
        .and(path("/V1/Products/9NBLGGH4R2R6/0016/OfflineLicense/c-1"))
        .respond_with(with_ids(
            ResponseTemplate::new(200).set_body_json(license_body()),
            "corr-license",
        ))
        .mount(&h.business)
        .await;
    Mock::given(method("POST"))
        .and(path_regex(r"^/V1/Products/9THROTTLED/"))
        .respond_with(with_ids(
            ResponseTemplate::new(429).insert_header("Retry-After", "7"),
            "corr-throttled",
        ))
        .mount(&h.business)
        .await;
    Mock::given(method("POST"))
        .and(path("/v6.0/b2b/keys/renew"))
        .respond_with(with_ids(
            ResponseTemplate::new(200).set_body_json(json!({ "key": new_key })),
            "corr-renew",
        ))
        .mount(&h.collections)
        .await;
    Mock::given(method("POST"))
        .and(path("/v6.0/b2b/keys/renew"))
        .respond_with(with_ids(
            ResponseTemplate::new(401)
                .set_body_json(service_error("Unauthorized", "InconsistentClientId")),
            "corr-denied",
        ))
        .mount(&h.purchase)
        .await;

    const LICENSE: &str = "msstore.v1.StoreEntitlements/GetOfflineLicense";
    const RENEW: &str = "msstore.v1.StoreKeys/RenewKey";
    let scenarios = json!([
        {
            "name": "license_ok", "method": LICENSE,
            "request": {"product_id": "9NBLGGH4R2R6", "sku_id": "0016", "content_id": "c-1"},
            "metadata": {"ms-cv": CALLER_MS_CV},
        },
        {
            "name": "renew_ok", "method": RENEW,
            "request": {"key": old_key},
        },
        {
            // A deadline shorter than Retry-After: the facade cannot retry within it and must
            // hand the 429 on at once, with the Store's delay.
            "name": "license_throttled", "method": LICENSE,
            "request": {"product_id": "9THROTTLED", "sku_id": "0016", "content_id": "c-1"},
            "timeout": 3,
        },
        {
            "name": "license_invalid", "method": LICENSE,
            "request": {"product_id": "9NBLGGH4R2R6", "sku_id": "", "content_id": ".."},
        },
        {
            "name": "renew_type_conflict", "method": RENEW,
            "request": {"key": old_key, "key_type": "KEY_TYPE_PURCHASE"},
        },
        {
            "name": "renew_denied", "method": RENEW,
            "request": {"key": purchase_key, "service_ticket": CALLER_TICKET},
        },
    ]);
    let addr = h.facade.addr;
    let results = tokio::task::spawn_blocking(move || run_client(&python, addr, &scenarios))
        .await
        .unwrap();
    let result = |name: &str| &results[name];

    // GetOfflineLicense: the decoded license and the upstream ids as initial metadata.
    let ok = result("license_ok");
    assert_eq!(text(ok, "/code"), "OK", "{ok:#}");
    let license = &ok["response"];
    assert_eq!(
        text(license, "/license_blob"),
        "PExpY2Vuc2U+c2lnbmVkPC9MaWNlbnNlPg=="
    );
    assert_eq!(text(license, "/product_key/product_id"), "9NBLGGH4R2R6");
    assert_eq!(text(license, "/product_key/sku_id"), "0016");
    assert_eq!(text(license, "/license_instance_id"), "3");
    assert_eq!(text(license, "/requestor_id"), "contoso");
    assert_eq!(text(license, "/content_id"), "c-1");
    assert_eq!(
        text(ok, "/initial_metadata/ms-correlationid"),
        "corr-license"
    );
    assert_eq!(text(ok, "/initial_metadata/ms-requestid"), "req-py");
    assert_eq!(text(ok, "/initial_metadata/ms-serverid"), "server-py");
    assert_eq!(
        text(ok, "/initial_metadata/ms-cv"),
        "xu2HW6SrSkyfHyFh.0.1.0"
    );
    // The Python caller's ms-cv was extended into the upstream MS-CV.
    let sent = Harness::requests(&h.business).await;
    let license_request = sent
        .iter()
        .find(|r| r.url.path().starts_with("/V1/Products/9NBLGGH4R2R6/"))
        .expect("the license request reached the Store");
    let upstream_cv = license_request.headers["ms-cv"].to_str().unwrap();
    assert!(
        upstream_cv.starts_with(&format!("{CALLER_MS_CV}.")),
        "{upstream_cv}"
    );

    // RenewKey: the new key, the inferred type and the decoded timestamps.
    let renewed = result("renew_ok");
    assert_eq!(text(renewed, "/code"), "OK", "{renewed:#}");
    assert_eq!(text(renewed, "/response/key"), new_key);
    assert_eq!(text(renewed, "/response/key_type"), "KEY_TYPE_COLLECTIONS");
    assert_eq!(renewed["timestamps"]["expires_at"], json!(new_exp));
    assert_eq!(
        renewed["timestamps"]["refresh_after"],
        json!(issued + 14 * 86_400)
    );
    assert_eq!(
        text(renewed, "/initial_metadata/ms-correlationid"),
        "corr-renew"
    );

    // 429: RESOURCE_EXHAUSTED from the Store's domain, RetryInfo = Retry-After, ids trailing.
    let throttled = result("license_throttled");
    assert_error(throttled, "RESOURCE_EXHAUSTED", &store_host);
    assert_eq!(
        throttled["retry_delay_seconds"],
        json!(7.0),
        "{throttled:#}"
    );
    assert_eq!(text(throttled, "/error_info/metadata/http_status"), "429");
    assert_eq!(
        text(throttled, "/error_info/metadata/ms_correlationid"),
        "corr-throttled"
    );
    assert_eq!(
        text(throttled, "/trailing_metadata/ms-correlationid"),
        "corr-throttled"
    );
    assert_eq!(
        text(throttled, "/trailing_metadata/ms-serverid"),
        "server-py"
    );

    // Local validation: one BadRequest violation per bad field, proto field names.
    let invalid = result("license_invalid");
    assert_error(invalid, "INVALID_ARGUMENT", "msstore-facade");
    assert_eq!(text(invalid, "/error_info/reason"), "INVALID_REQUEST");
    assert_eq!(
        strings(invalid, "/bad_request_fields"),
        ["sku_id", "content_id"]
    );
    assert!(invalid.get("retry_delay_seconds").is_none(), "{invalid:#}");

    let conflict = result("renew_type_conflict");
    assert_error(conflict, "INVALID_ARGUMENT", "msstore-facade");
    assert_eq!(strings(conflict, "/bad_request_fields"), ["key_type"]);
    assert!(!text(conflict, "/message").contains(&old_key));

    // The Store's 401 with its inner code, through the caller's own ticket.
    let denied = result("renew_denied");
    assert_error(denied, "UNAUTHENTICATED", &store_host);
    assert_eq!(text(denied, "/error_info/reason"), "INCONSISTENT_CLIENT_ID");
    assert_eq!(text(denied, "/error_info/metadata/http_status"), "401");
    assert_eq!(
        text(denied, "/trailing_metadata/ms-correlationid"),
        "corr-denied"
    );
    for secret in [CALLER_TICKET, purchase_key.as_str()] {
        assert!(
            !denied.to_string().contains(secret),
            "a secret came back: {denied:#}"
        );
    }

    // Validation failures never reached a Store; the good calls reached the right hosts.
    let license_paths: Vec<String> = Harness::requests(&h.business)
        .await
        .iter()
        .map(|r| r.url.path().to_owned())
        .collect();
    assert!(
        license_paths
            .iter()
            .all(|p| p == "/V1/Products/9NBLGGH4R2R6/0016/OfflineLicense/c-1"
                || p.starts_with("/V1/Products/9THROTTLED/")),
        "{license_paths:?}"
    );
    assert_eq!(Harness::requests(&h.collections).await.len(), 1);
    assert_eq!(Harness::requests(&h.purchase).await.len(), 1);
}

/// The collections RPCs and GetKeyCreationTokens from Python, against the sandbox emulator:
/// typed answers (enums by name, Timestamps, Durations), and each error class's details.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_callers_use_the_collections_rpcs_against_the_sandbox() {
    use msstore_facade::emulator::catalog::{
        PRODUCTS, SANDBOX_APP_TRIAL, SANDBOX_CONSUMABLE, SANDBOX_UNMANAGED_CONSUMABLE,
    };
    use msstore_facade::emulator::StoreKeySpec;
    use msstore_facade::upstream::Host;

    let python = tokio::task::spawn_blocking(python_client_venv)
        .await
        .unwrap();
    let emulator = start_emulator().await;
    let facade = Facade::start(sandbox_settings(&emulator)).await;
    let key = StoreKeySpec::new(Host::Collections)
        .user_id("py-user")
        .mint();
    let purchase_key = StoreKeySpec::new(Host::Purchase).user_id("py-user").mint();
    let expired = StoreKeySpec::new(Host::Collections)
        .issued_at(now() - 40 * 86_400)
        .mint();
    let products: Vec<Value> = PRODUCTS
        .iter()
        .map(|p| json!({ "product_id": p }))
        .collect();

    const TOKENS: &str = "msstore.v1.StoreKeys/GetKeyCreationTokens";
    const QUERY: &str = "msstore.v1.StoreCollections/QueryCollections";
    const CONSUME: &str = "msstore.v1.StoreCollections/ConsumeProduct";
    let scenarios = json!([
        {"name": "tokens", "method": TOKENS, "request": {}},
        {
            "name": "query_all", "method": QUERY,
            "request": {"user_key": key, "products": products, "page_size": 3, "all_pages": true},
        },
        {
            "name": "query_page", "method": QUERY,
            "request": {"user_key": key, "products": products, "page_size": 3},
        },
        {
            "name": "consume_managed", "method": CONSUME,
            "request": {"user_key": key, "product_id": SANDBOX_CONSUMABLE,
                        "tracking_id": "3c9e2f7a-1b4d-4e8f-a6c2-5d7e9f0a1b2c",
                        "remove_quantity": 2, "include_order_ids": true},
        },
        {
            "name": "consume_unmanaged", "method": CONSUME,
            "request": {"user_key": key, "product_id": SANDBOX_UNMANAGED_CONSUMABLE,
                        "tracking_id": "3c9e2f7a-1b4d-4e8f-a6c2-5d7e9f0a1b2d"},
        },
        {
            "name": "consume_bad_tracking_id", "method": CONSUME,
            "request": {"user_key": key, "product_id": SANDBOX_CONSUMABLE,
                        "tracking_id": "order-42", "remove_quantity": 1},
        },
        {
            "name": "query_purchase_key", "method": QUERY,
            "request": {"user_key": purchase_key, "products": [{"product_id": SANDBOX_CONSUMABLE}]},
        },
        {
            "name": "consume_expired_key", "method": CONSUME,
            "request": {"user_key": expired, "product_id": SANDBOX_CONSUMABLE,
                        "tracking_id": "3c9e2f7a-1b4d-4e8f-a6c2-5d7e9f0a1b2e", "remove_quantity": 1},
        },
        {
            // Shorter than the emulator's 30 s Retry-After: handed on at once.
            "name": "query_throttled", "method": QUERY,
            "request": {"user_key": key, "products": [{"product_id": "MAGIC-429"}]},
            "timeout": 3,
        },
    ]);
    let addr = facade.addr;
    let results = tokio::task::spawn_blocking(move || run_client(&python, addr, &scenarios))
        .await
        .unwrap();
    let result = |name: &str| &results[name];

    let tokens = result("tokens");
    assert_eq!(text(tokens, "/code"), "OK", "{tokens:#}");
    assert_eq!(
        claims(text(tokens, "/response/collections_token"))["aud"],
        "https://onestore.microsoft.com/b2b/keys/create/collections"
    );
    assert_eq!(
        claims(text(tokens, "/response/purchase_token"))["aud"],
        "https://onestore.microsoft.com/b2b/keys/create/purchase"
    );
    assert!(tokens["timestamps"]["expires_at"].as_i64().unwrap() > now());

    let all = result("query_all");
    assert_eq!(text(all, "/code"), "OK", "{all:#}");
    assert_eq!(all["response"]["complete"], json!(true));
    assert!(
        all["response"]["duplicates_dropped"].as_i64().unwrap() > 0,
        "{all:#}"
    );
    let items = all["response"]["items"].as_array().unwrap();
    let trial = items
        .iter()
        .find(|i| i["product_id"] == SANDBOX_APP_TRIAL)
        .expect("the trial app");
    assert_eq!(trial["product_kind"], "PRODUCT_KIND_APPLICATION");
    assert_eq!(trial["status"], "ITEM_STATUS_ACTIVE");
    // Duration and Timestamp in proto JSON.
    assert_eq!(
        trial["trial_data"]["trial_time_remaining"],
        "604799.123456700s"
    );
    assert!(text(trial, "/acquired_date").ends_with('Z'), "{trial:#}");
    let page = result("query_page");
    assert_eq!(page["response"]["items"].as_array().unwrap().len(), 3);
    assert!(!text(page, "/response/next_page_token").is_empty());

    let managed = result("consume_managed");
    assert_eq!(text(managed, "/code"), "OK", "{managed:#}");
    assert_eq!(
        text(managed, "/response/tracking_id"),
        "3c9e2f7a-1b4d-4e8f-a6c2-5d7e9f0a1b2c"
    );
    assert!(!managed["response"]["order_transactions"]
        .as_array()
        .unwrap()
        .is_empty());
    let unmanaged = result("consume_unmanaged");
    assert_eq!(text(unmanaged, "/code"), "OK", "{unmanaged:#}");
    // proto3 JSON leaves a zero out.
    assert!(unmanaged["response"].get("new_quantity").is_none());

    let bad = result("consume_bad_tracking_id");
    assert_error(bad, "INVALID_ARGUMENT", "msstore-facade");
    assert_eq!(strings(bad, "/bad_request_fields"), ["tracking_id"]);

    let mismatch = result("query_purchase_key");
    assert_error(mismatch, "INVALID_ARGUMENT", "msstore-facade");
    assert_eq!(text(mismatch, "/error_info/reason"), "KEY_TYPE_MISMATCH");
    assert_eq!(strings(mismatch, "/bad_request_fields"), ["user_key"]);
    assert!(!mismatch.to_string().contains(&purchase_key));

    let expired = result("consume_expired_key");
    assert_error(expired, "FAILED_PRECONDITION", "msstore-facade");
    assert_eq!(text(expired, "/error_info/reason"), "STORE_KEY_EXPIRED");
    assert!(text(expired, "/error_info/metadata/expires_at").ends_with('Z'));

    let throttled = result("query_throttled");
    assert_error(throttled, "RESOURCE_EXHAUSTED", "127.0.0.1");
    assert_eq!(
        throttled["retry_delay_seconds"],
        json!(30.0),
        "{throttled:#}"
    );
    assert!(
        text(throttled, "/message").contains("The rate limit of 200 operations"),
        "{throttled:#}"
    );
}

/// The purchase RPCs from Python, against the sandbox emulator: a grant, subscriptions with
/// their states by name, a change, orders, and each error class's details.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_callers_use_the_purchase_rpcs_against_the_sandbox() {
    use msstore_facade::emulator::catalog::{SANDBOX_FREE_DURABLE, SANDBOX_SUB_CANCELED};
    use msstore_facade::emulator::StoreKeySpec;
    use msstore_facade::upstream::Host;

    let python = tokio::task::spawn_blocking(python_client_venv)
        .await
        .unwrap();
    let emulator = start_emulator().await;
    let facade = Facade::start(sandbox_settings(&emulator)).await;
    let key = StoreKeySpec::new(Host::Purchase).user_id("py-buyer").mint();
    let collections_key = StoreKeySpec::new(Host::Collections).mint();
    let throttled_key = StoreKeySpec::new(Host::Purchase)
        .payload("MAGIC-429")
        .mint();
    // The canceled subscription's id, as a caller would have it from a query.
    let canceled_id = {
        let page =
            msstore_facade::proto::msstore::v1::store_purchases_client::StorePurchasesClient::new(
                facade.channel.clone(),
            )
            .query_recurrences(
                msstore_facade::proto::msstore::v1::QueryRecurrencesRequest {
                    user_key: key.clone(),
                    all_pages: true,
                    ..Default::default()
                },
            )
            .await
            .unwrap()
            .into_inner();
        page.items
            .into_iter()
            .find(|r| r.product_id == SANDBOX_SUB_CANCELED)
            .expect("the canceled subscription")
            .id
    };

    const GRANT: &str = "msstore.v1.StorePurchases/GrantFreeProduct";
    const RECURRENCES: &str = "msstore.v1.StorePurchases/QueryRecurrences";
    const CHANGE: &str = "msstore.v1.StorePurchases/ChangeRecurrence";
    const ORDERS: &str = "msstore.v1.StorePurchases/QueryOrders";
    let scenarios = json!([
        {
            "name": "grant", "method": GRANT,
            "request": {"user_key": key, "product_id": SANDBOX_FREE_DURABLE, "sku_id": "0010",
                        "availability_id": "9PSANDBOXAVL", "language": "en-us", "market": "us",
                        "order_id": "8a7b6c5d-4e3f-4a1b-9c8d-7e6f5a4b3c2d"},
        },
        {"name": "recurrences", "method": RECURRENCES,
         "request": {"user_key": key, "all_pages": true}},
        {
            "name": "change_terminal", "method": CHANGE,
            "request": {"user_key": key, "recurrence_id": canceled_id,
                        "change_type": "CHANGE_TYPE_EXTEND", "extension_days": 3},
        },
        {
            "name": "change_without_days", "method": CHANGE,
            "request": {"user_key": key, "recurrence_id": canceled_id,
                        "change_type": "CHANGE_TYPE_EXTEND"},
        },
        {"name": "orders", "method": ORDERS,
         "request": {"user_key": key, "line_item_states": ["LINE_ITEM_STATE_REVOKED"]}},
        {"name": "orders_collections_key", "method": ORDERS,
         "request": {"user_key": collections_key}},
        {"name": "orders_throttled", "method": ORDERS,
         "request": {"user_key": throttled_key}, "timeout": 3},
    ]);
    let addr = facade.addr;
    let results = tokio::task::spawn_blocking(move || run_client(&python, addr, &scenarios))
        .await
        .unwrap();
    let result = |name: &str| &results[name];

    let grant = result("grant");
    assert_eq!(text(grant, "/code"), "OK", "{grant:#}");
    assert_eq!(
        text(grant, "/response/order_state"),
        "ORDER_STATE_PURCHASED"
    );
    assert_eq!(
        text(grant, "/response/order_line_items/0/product_id"),
        SANDBOX_FREE_DURABLE
    );

    let recurrences = result("recurrences");
    assert_eq!(text(recurrences, "/code"), "OK", "{recurrences:#}");
    let states: Vec<&str> = recurrences["response"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r["recurrence_state"]
                .as_str()
                .unwrap_or("RECURRENCE_STATE_UNSPECIFIED")
        })
        .collect();
    for state in [
        "RECURRENCE_STATE_ACTIVE",
        "RECURRENCE_STATE_IN_DUNNING",
        "RECURRENCE_STATE_CANCELED",
    ] {
        assert!(states.contains(&state), "{state}: {states:?}");
    }

    let terminal = result("change_terminal");
    assert_error(terminal, "FAILED_PRECONDITION", "127.0.0.1");
    assert_eq!(text(terminal, "/error_info/metadata/http_status"), "409");
    let no_days = result("change_without_days");
    assert_error(no_days, "INVALID_ARGUMENT", "msstore-facade");
    assert_eq!(strings(no_days, "/bad_request_fields"), ["extension_days"]);

    let orders = result("orders");
    assert_eq!(text(orders, "/code"), "OK", "{orders:#}");
    for order in orders["response"]["items"].as_array().unwrap() {
        for line in order["order_line_items"].as_array().unwrap() {
            assert_eq!(line["line_item_state"], "LINE_ITEM_STATE_REVOKED", "{line}");
        }
    }
    let mismatch = result("orders_collections_key");
    assert_error(mismatch, "INVALID_ARGUMENT", "msstore-facade");
    assert_eq!(text(mismatch, "/error_info/reason"), "KEY_TYPE_MISMATCH");
    assert!(!mismatch.to_string().contains(&collections_key));
    let throttled = result("orders_throttled");
    assert_error(throttled, "RESOURCE_EXHAUSTED", "127.0.0.1");
    assert_eq!(
        throttled["retry_delay_seconds"],
        json!(30.0),
        "{throttled:#}"
    );
}

/// A refund reconciliation loop from Python, against the sandbox emulator: a grant of the
/// magic product that is revoked at once, the pull that brings its typed event, the
/// acknowledgement with the pulled ack ids, an empty pull after it, and each error class's
/// details (the emulator's fault on the SAS endpoint for RetryInfo).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_callers_run_a_refund_reconciliation_loop_against_the_sandbox() {
    use msstore_facade::emulator::catalog::SANDBOX_REVOKED_ON_GRANT;
    use msstore_facade::emulator::StoreKeySpec;
    use msstore_facade::upstream::Host;

    let python = tokio::task::spawn_blocking(python_client_venv)
        .await
        .unwrap();
    let emulator = start_emulator().await;
    let facade = Facade::start(sandbox_settings(&emulator)).await;
    // The Store throttles the first SAS request.
    let fault = reqwest::Client::new()
        .post(format!(
            "{}emulator/refund-queue/faults",
            emulator.endpoints().base_url()
        ))
        .json(&json!({"operation": "sastoken", "magic": "MAGIC-429", "times": 1}))
        .send()
        .await
        .unwrap();
    assert!(fault.status().is_success());
    let key = StoreKeySpec::new(Host::Purchase)
        .user_id("py-refunded")
        .mint();
    let order_id = "1d2c3b4a-5f6e-4d7c-8b9a-0f1e2d3c4b5a";

    const PULL: &str = "msstore.v1.StoreRefunds/PullRefundEvents";
    const ACK: &str = "msstore.v1.StoreRefunds/AcknowledgeRefundEvents";
    let scenarios = json!([
        {"name": "pull_throttled", "method": PULL, "request": {}, "timeout": 3},
        {
            "name": "grant", "method": "msstore.v1.StorePurchases/GrantFreeProduct",
            "request": {"user_key": key, "product_id": SANDBOX_REVOKED_ON_GRANT, "sku_id": "0010",
                        "availability_id": "9PSANDBOXAVL", "language": "en-us", "market": "us",
                        "order_id": order_id},
        },
        {"name": "pull", "method": PULL, "request": {"max_events": 32}},
        {"name": "ack", "method": ACK, "ack_ids_from": "pull"},
        {"name": "pull_after", "method": PULL, "request": {"max_events": 32}},
        {"name": "pull_invalid", "method": PULL, "request": {"max_events": 40}},
        {"name": "ack_invalid", "method": ACK, "request": {"ack_ids": ["not-an-ack-id"]}},
    ]);
    let addr = facade.addr;
    let results = tokio::task::spawn_blocking(move || run_client(&python, addr, &scenarios))
        .await
        .unwrap();
    let result = |name: &str| &results[name];

    let throttled = result("pull_throttled");
    assert_error(throttled, "RESOURCE_EXHAUSTED", "127.0.0.1");
    assert_eq!(
        throttled["retry_delay_seconds"],
        json!(30.0),
        "{throttled:#}"
    );
    assert_eq!(text(result("grant"), "/code"), "OK");

    let pull = result("pull");
    assert_eq!(text(pull, "/code"), "OK", "{pull:#}");
    let events = pull["response"]["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{pull:#}");
    assert_eq!(text(&events[0], "/state"), "REFUND_EVENT_STATE_REVOKED");
    assert_eq!(text(&events[0], "/order_id"), order_id);
    assert_eq!(text(&events[0], "/product_id"), SANDBOX_REVOKED_ON_GRANT);
    let ack = result("ack");
    assert_eq!(text(ack, "/code"), "OK", "{ack:#}");
    assert_eq!(
        strings(ack, "/response/acknowledged"),
        [text(&events[0], "/ack_id")]
    );
    let after = result("pull_after");
    assert_eq!(text(after, "/code"), "OK");
    assert!(after["response"]["events"].is_null(), "{after:#}");

    let invalid = result("pull_invalid");
    assert_error(invalid, "INVALID_ARGUMENT", "msstore-facade");
    assert_eq!(strings(invalid, "/bad_request_fields"), ["max_events"]);
    let ack_invalid = result("ack_invalid");
    assert_error(ack_invalid, "INVALID_ARGUMENT", "msstore-facade");
    assert_eq!(strings(ack_invalid, "/bad_request_fields"), ["ack_ids"]);
}
