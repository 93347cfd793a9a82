//! StoreCollections end to end, what is particular to QueryCollections and ConsumeProduct
//! (the generic suites cover both through their rows in `common::operations`): the exact
//! upstream requests, paging and page tokens, local validation of the user's key and fields
//! before any upstream request, `all_pages` (duplicates by the documented priority, within the
//! caller's deadline), typed items, throttling, and exactly-once consumes.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::*;
use msstore_facade::proto::msstore::v1 as pb;
use pb::store_collections_client::StoreCollectionsClient;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tonic::transport::Channel;
use tonic::{Code, Status};
use wiremock::matchers::{body_partial_json, method, path};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

const QUERY_PATH: &str = "/v9.0/collections/publisherQuery";
const CONSUME_PATH: &str = "/v8.0/collections/consume";
const TRACKING_ID: &str = "0d3f7d9c-2a3b-4c5d-8e9f-0123456789ab";

// ---------------------------------------------------------------------------------------------
// Helpers.

fn client(channel: &Channel) -> StoreCollectionsClient<Channel> {
    StoreCollectionsClient::new(channel.clone())
}

fn user_key() -> String {
    store_key(COLLECTIONS_AUD, now() - 3600, now() + 29 * 24 * 3600)
}

fn product(product_id: &str, sku_id: &str) -> pb::ProductSku {
    pb::ProductSku {
        product_id: product_id.into(),
        sku_id: sku_id.into(),
    }
}

fn query(key: &str) -> pb::QueryCollectionsRequest {
    pb::QueryCollectionsRequest {
        user_key: key.to_owned(),
        products: vec![product("9NBLGGH4R2R6", "")],
        ..Default::default()
    }
}

fn consume(key: &str) -> pb::ConsumeProductRequest {
    pb::ConsumeProductRequest {
        user_key: key.to_owned(),
        product_id: "9NCONSUMABLE".into(),
        tracking_id: TRACKING_ID.into(),
        remove_quantity: 3,
        include_order_ids: true,
        ..Default::default()
    }
}

fn consume_ok() -> Value {
    json!({
        "itemId": "item-7",
        "newQuantity": 7,
        "trackingId": TRACKING_ID,
        "productId": "9NCONSUMABLE",
        "orderTransactions": [{
            "$type": "consumeOrderTransactionV9",
            "orderId": "1d5e3f0a-0000-4000-8000-000000000001",
            "orderLineItemId": "1d5e3f0a-0000-4000-8000-000000000002",
            "quantityConsumed": 3
        }]
    })
}

async fn mount_post(server: &MockServer, at: &str, template: ResponseTemplate) {
    Mock::given(method("POST"))
        .and(path(at))
        .respond_with(template)
        .mount(server)
        .await;
}

fn body_json(request: &Request) -> Value {
    serde_json::from_slice(&request.body).expect("a JSON body")
}

fn header(request: &Request, name: &str) -> Option<String> {
    request
        .headers
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
}

/// Requests `server` received at `at`.
async fn requests_to(server: &MockServer, at: &str) -> Vec<Request> {
    Harness::requests(server)
        .await
        .into_iter()
        .filter(|r| r.url.path() == at)
        .collect()
}

/// `status` is INVALID_ARGUMENT with ErrorInfo `reason` and a BadRequest naming `fields`.
#[track_caller]
fn assert_invalid(what: &str, status: &Status, reason: &str, fields: &[&str]) {
    assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
    assert_eq!(error_info(status).reason, reason, "{what}: {status:?}");
    assert_eq!(bad_fields(status), fields, "{what}: {status:?}");
}

/// Neither the message, the details nor the metadata of `status` holds `key` (or its payload).
#[track_caller]
fn assert_key_not_in(status: &Status, key: &str) {
    let payload = key.split('.').nth(1).unwrap_or(key);
    let details = String::from_utf8_lossy(status.details()).into_owned();
    let metadata = format!("{:?}", status.metadata());
    for (what, text) in [
        ("message", status.message()),
        ("details", &details),
        ("metadata", &metadata),
    ] {
        assert!(!text.contains(key), "the key is in the {what}: {text}");
        assert!(
            !text.contains(payload),
            "the key's payload is in the {what}: {text}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// QueryCollections: the upstream request.

#[tokio::test]
async fn query_sends_the_documented_request() {
    let h = Harness::start().await;
    mount_post(
        &h.collections,
        QUERY_PATH,
        ResponseTemplate::new(200).set_body_json(collections_page()),
    )
    .await;
    let key = user_key();
    let first = pb::QueryCollectionsRequest {
        products: vec![product("9NBLGGH4R2R6", ""), product("9NCONSUMABLE", "0010")],
        ..query(&key)
    };
    let cases: Vec<(pb::QueryCollectionsRequest, Value)> = vec![
        (
            first,
            json!({
                "beneficiaries": [{
                    "identityType": "b2b",
                    "identityValue": key,
                    "localTicketReference": ""
                }],
                "productSkuIds": [
                    {"productId": "9NBLGGH4R2R6"},
                    {"productId": "9NCONSUMABLE", "skuId": "0010"}
                ],
                "maxPageSize": 100,
                "excludeDuplicates": true
            }),
        ),
        (
            pb::QueryCollectionsRequest {
                validity: pb::Validity::All as i32,
                page_size: 37,
                ..query(&key)
            },
            // ALL is sent explicitly; only UNSPECIFIED leaves the Store's default.
            json!({"validityType": "All", "maxPageSize": 37}),
        ),
        (
            pb::QueryCollectionsRequest {
                validity: pb::Validity::Valid as i32,
                sandbox_id: "XDKS.1".into(),
                ..query(&key)
            },
            json!({"validityType": "Valid", "sbx": "XDKS.1"}),
        ),
        (
            pb::QueryCollectionsRequest {
                validity: pb::Validity::Invalid as i32,
                page_size: 200,
                ..query(&key)
            },
            json!({"validityType": "Invalid", "maxPageSize": 200}),
        ),
    ];
    let base = cases[0].1.clone();
    for (request, _) in &cases {
        client(&h.facade.channel)
            .query_collections(request.clone())
            .await
            .unwrap();
    }
    let sent = requests_to(&h.collections, QUERY_PATH).await;
    assert_eq!(sent.len(), cases.len());
    for (index, ((_, expected), request)) in cases.iter().zip(&sent).enumerate() {
        assert_eq!(request.method.as_str(), "POST");
        assert_eq!(request.url.query(), None);
        assert_eq!(
            header(request, "authorization"),
            Some(format!("Bearer {TOKEN_PREFIX}-1")),
            "case {index}"
        );
        assert!(header(request, "content-type")
            .unwrap()
            .starts_with("application/json"));
        // Every case is the first one with `expected`'s fields changed (or added).
        let mut want = base.clone();
        if index > 0 {
            want["productSkuIds"] = json!([{"productId": "9NBLGGH4R2R6"}]);
            for (name, value) in expected.as_object().unwrap() {
                want[name] = value.clone();
            }
        }
        assert_eq!(body_json(request), want, "case {index}");
        // The key goes verbatim, and nothing else of the optional fields is sent.
        let body = body_json(request);
        assert_eq!(body["beneficiaries"][0]["identityValue"], key.as_str());
        assert!(body.get("continuationToken").is_none(), "case {index}");
    }
}

// ---------------------------------------------------------------------------------------------
// QueryCollections: paging with page tokens.

#[tokio::test]
async fn next_page_token_is_opaque_and_sends_the_stores_token_back() {
    let h = Harness::start().await;
    let store_token = r#"{"checkSatisfactionIndex":2}"#;
    let mut page = collections_page();
    page["continuationToken"] = json!(store_token);
    Harness::answer_next_once(
        &h.collections,
        ResponseTemplate::new(200).set_body_json(page),
    )
    .await;
    mount_post(
        &h.collections,
        QUERY_PATH,
        ResponseTemplate::new(200).set_body_json(collections_page()),
    )
    .await;
    let key = user_key();
    let first = client(&h.facade.channel)
        .query_collections(query(&key))
        .await
        .unwrap()
        .into_inner();
    assert!(!first.next_page_token.is_empty());
    assert_ne!(first.next_page_token, store_token);
    assert!(!first.next_page_token.contains("checkSatisfactionIndex"));
    // One page with a next one is not the whole collection.
    assert!(!first.complete);
    assert_eq!(first.pages, 1);
    assert_eq!(first.items.len(), 1);

    let second = client(&h.facade.channel)
        .query_collections(pb::QueryCollectionsRequest {
            page_token: first.next_page_token.clone(),
            ..query(&key)
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.next_page_token, "");
    assert!(second.complete);

    let sent = requests_to(&h.collections, QUERY_PATH).await;
    assert_eq!(sent.len(), 2);
    assert!(body_json(&sent[0]).get("continuationToken").is_none());
    let mut want = body_json(&sent[0]);
    want["continuationToken"] = json!(store_token);
    assert_eq!(body_json(&sent[1]), want);
}

#[tokio::test]
async fn a_page_token_the_facade_never_gave_is_refused_before_any_call() {
    let h = Harness::start().await;
    let key = user_key();
    for token in [
        "not a token!",
        "%%%",
        // base64url of bytes that are not UTF-8.
        &URL_SAFE_NO_PAD.encode([0xff, 0xfe, 0xfd]),
        // base64url of a control character.
        &URL_SAFE_NO_PAD.encode("\u{1}"),
        // Padded base64 of a Store-looking token: not what the facade hands out.
        "eyJjaGVja1NhdGlzZmFjdGlvbkluZGV4IjoyfQ==",
    ] {
        let status = client(&h.facade.channel)
            .query_collections(pb::QueryCollectionsRequest {
                page_token: token.to_owned(),
                ..query(&key)
            })
            .await
            .unwrap_err();
        assert_invalid(token, &status, "INVALID_REQUEST", &["page_token"]);
    }
    assert!(Harness::requests(&h.collections).await.is_empty());
}

#[tokio::test]
async fn a_forged_page_token_is_refused_before_any_call() {
    let h = Harness::start().await;
    mount_post(
        &h.collections,
        QUERY_PATH,
        ResponseTemplate::new(200).set_body_json(collections_page()),
    )
    .await;
    let key = user_key();
    let forged = URL_SAFE_NO_PAD.encode(r#"{"checkSatisfactionIndex":9}"#);
    let status = client(&h.facade.channel)
        .query_collections(pb::QueryCollectionsRequest {
            page_token: forged,
            ..query(&key)
        })
        .await
        .unwrap_err();
    assert_invalid("forged", &status, "INVALID_REQUEST", &["page_token"]);
    assert!(Harness::requests(&h.collections).await.is_empty());
}

// ---------------------------------------------------------------------------------------------
// QueryCollections: local validation.

#[tokio::test]
async fn query_fields_are_checked_before_any_call() {
    let h = Harness::start().await;
    let key = user_key();
    let many = |n: usize| {
        (0..n)
            .map(|i| product(&format!("9NPRODUCT{i:03}"), ""))
            .collect::<Vec<_>>()
    };
    let cases: Vec<(&str, pb::QueryCollectionsRequest, &str)> = vec![
        (
            "no products",
            pb::QueryCollectionsRequest {
                products: vec![],
                ..query(&key)
            },
            "products",
        ),
        (
            "101 products",
            pb::QueryCollectionsRequest {
                products: many(101),
                ..query(&key)
            },
            "products",
        ),
        (
            "page_size 201",
            pb::QueryCollectionsRequest {
                page_size: 201,
                ..query(&key)
            },
            "page_size",
        ),
        (
            "page_size -1",
            pb::QueryCollectionsRequest {
                page_size: -1,
                ..query(&key)
            },
            "page_size",
        ),
        (
            "sandbox x y",
            pb::QueryCollectionsRequest {
                sandbox_id: "x y".into(),
                ..query(&key)
            },
            "sandbox_id",
        ),
        (
            "not a JWT",
            pb::QueryCollectionsRequest {
                user_key: "not-a-jwt".into(),
                ..query(&key)
            },
            "user_key",
        ),
    ];
    for (what, request, field) in cases {
        let status = client(&h.facade.channel)
            .query_collections(request)
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
        assert_eq!(bad_fields(&status), [field], "{what}");
        assert_key_not_in(&status, &key);
    }
    assert!(Harness::requests(&h.collections).await.is_empty());
    assert!(h.token_requests().await.is_empty());

    // The limits themselves are accepted.
    mount_post(
        &h.collections,
        QUERY_PATH,
        ResponseTemplate::new(200).set_body_json(collections_page()),
    )
    .await;
    for request in [
        pb::QueryCollectionsRequest {
            products: many(100),
            ..query(&key)
        },
        pb::QueryCollectionsRequest {
            page_size: 200,
            ..query(&key)
        },
    ] {
        client(&h.facade.channel)
            .query_collections(request)
            .await
            .unwrap();
    }
    let sent = requests_to(&h.collections, QUERY_PATH).await;
    assert_eq!(sent.len(), 2);
    assert_eq!(
        body_json(&sent[0])["productSkuIds"]
            .as_array()
            .unwrap()
            .len(),
        100
    );
    assert_eq!(body_json(&sent[1])["maxPageSize"], 200);
}

#[tokio::test]
async fn the_users_key_kind_and_expiry_are_checked_before_any_call() {
    let h = Harness::start().await;
    // A purchase key.
    let purchase = store_key(PURCHASE_AUD, now() - 3600, now() + 3600);
    let status = client(&h.facade.channel)
        .query_collections(query(&purchase))
        .await
        .unwrap_err();
    assert_invalid("purchase key", &status, "KEY_TYPE_MISMATCH", &["user_key"]);
    assert_key_not_in(&status, &purchase);

    // An expired collections key: 2026-01-02T03:04:05Z.
    let exp = 1_767_323_045;
    let expired = store_key(COLLECTIONS_AUD, exp - 30 * 24 * 3600, exp);
    let status = client(&h.facade.channel)
        .query_collections(query(&expired))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    let info = error_info(&status);
    assert_eq!(info.reason, "STORE_KEY_EXPIRED");
    assert_eq!(info.domain, "msstore-facade");
    assert_eq!(
        info.metadata.get("expires_at").map(String::as_str),
        Some("2026-01-02T03:04:05Z")
    );
    assert_eq!(
        info.metadata.get("field").map(String::as_str),
        Some("user_key")
    );
    assert_key_not_in(&status, &expired);

    // Not a JWT at all.
    let garbage = "definitely-not-a-store-key-3f9a";
    let status = client(&h.facade.channel)
        .query_collections(query(garbage))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(bad_fields(&status), ["user_key"]);
    assert_key_not_in(&status, garbage);

    assert!(Harness::requests(&h.collections).await.is_empty());
    assert!(Harness::requests(&h.purchase).await.is_empty());
    assert!(h.token_requests().await.is_empty());
}

// ---------------------------------------------------------------------------------------------
// QueryCollections: all_pages.

fn item(id: &str, product_id: &str, sku_id: &str, acquisition: &str, status: &str) -> Value {
    json!({
        "id": id,
        "productId": product_id,
        "skuId": sku_id,
        "productKind": "Durable",
        "acquisitionType": acquisition,
        "status": status,
        "satisfiedByProductIds": [],
        "quantity": 1
    })
}

fn bundled(mut item: Value) -> Value {
    item["satisfiedByProductIds"] = json!(["9NBUNDLE0001"]);
    item
}

const TOKEN_2: &str = r#"{"checkSatisfactionIndex":2}"#;
const TOKEN_3: &str = "page-3 token/with+odd=chars";

/// Three pages, chosen by the request's `continuationToken`; page 2 is answered after 5 s
/// while `slow` is set.
struct ThreePages {
    slow: Arc<AtomicBool>,
}

impl Respond for ThreePages {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let body: Value = serde_json::from_slice(&request.body).unwrap_or_default();
        let (items, next, delay) = match body.get("continuationToken").and_then(Value::as_str) {
            None => (
                vec![
                    item("a-sub", "A", "0010", "Recurring", "Active"),
                    item("b-revoked", "B", "0010", "Single", "Revoked"),
                    item("c-promo", "C", "0010", "Conditional", "Active"),
                    item("d-only", "D", "0010", "Single", "Active"),
                ],
                Some(TOKEN_2),
                false,
            ),
            Some(TOKEN_2) => (
                vec![
                    bundled(item("a-bundle", "A", "0010", "Single", "Active")),
                    item("b-expired", "B", "0010", "Single", "Expired"),
                    item("c-sub-revoked", "C", "0010", "Recurring", "Revoked"),
                    item("e-direct", "E", "0020", "Single", "Active"),
                ],
                Some(TOKEN_3),
                self.slow.load(Ordering::SeqCst),
            ),
            Some(TOKEN_3) => (
                vec![
                    item("a-direct-revoked", "A", "0010", "Single", "Revoked"),
                    item("b-active", "B", "0010", "Single", "Active"),
                    item("c-promo-2", "C", "0010", "Conditional", "Active"),
                    item("d-sku2", "D", "0020", "Single", "Active"),
                    item("e-sub", "E", "0020", "Recurring", "Active"),
                ],
                None,
                false,
            ),
            Some(other) => panic!("unexpected continuationToken {other}"),
        };
        let mut page = json!({ "items": items });
        if let Some(next) = next {
            page["continuationToken"] = json!(next);
        }
        let template = ResponseTemplate::new(200).set_body_json(page);
        if delay {
            template.set_delay(Duration::from_secs(5))
        } else {
            template
        }
    }
}

async fn mount_three_pages(h: &Harness) -> Arc<AtomicBool> {
    let slow = Arc::new(AtomicBool::new(false));
    Mock::given(method("POST"))
        .and(path(QUERY_PATH))
        .respond_with(ThreePages { slow: slow.clone() })
        .mount(&h.collections)
        .await;
    slow
}

fn ids(items: &[pb::CollectionItem]) -> Vec<&str> {
    items.iter().map(|i| i.id.as_str()).collect()
}

#[tokio::test]
async fn all_pages_follows_every_page_and_keeps_the_documented_duplicate() {
    let h = Harness::start().await;
    mount_three_pages(&h).await;
    let key = user_key();
    let answer = client(&h.facade.channel)
        .query_collections(pb::QueryCollectionsRequest {
            all_pages: true,
            ..query(&key)
        })
        .await
        .unwrap()
        .into_inner();
    // A: recurring < bundle < direct (even revoked); B: revoked < expired < active, same
    // source; C: a promotion < a subscription (even revoked), and a later promotion is
    // dropped; E: a subscription after a direct purchase is dropped; D/0020 is no duplicate
    // of D/0010. Each kept item sits where its product and SKU first appeared.
    assert_eq!(
        ids(&answer.items),
        [
            "a-direct-revoked",
            "b-active",
            "c-sub-revoked",
            "d-only",
            "e-direct",
            "d-sku2"
        ]
    );
    assert_eq!(answer.pages, 3);
    assert!(answer.complete);
    assert_eq!(answer.next_page_token, "");
    assert_eq!(answer.duplicates_dropped, 7);

    let sent = requests_to(&h.collections, QUERY_PATH).await;
    assert_eq!(sent.len(), 3);
    let tokens: Vec<Option<String>> = sent
        .iter()
        .map(|r| {
            body_json(r)["continuationToken"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(
        tokens,
        [None, Some(TOKEN_2.to_owned()), Some(TOKEN_3.to_owned())]
    );
    // Apart from the continuation token, each page asks the very same query.
    let mut first = body_json(&sent[0]);
    for request in &sent[1..] {
        let mut body = body_json(request);
        body.as_object_mut().unwrap().remove("continuationToken");
        first.as_object_mut().unwrap().remove("continuationToken");
        assert_eq!(body, first);
    }
}

#[tokio::test]
async fn all_pages_answers_within_the_deadline_with_a_token_to_continue() {
    let h = Harness::start().await;
    let slow = mount_three_pages(&h).await;
    slow.store(true, Ordering::SeqCst);
    let key = user_key();
    let deadline = Duration::from_millis(1500);
    let mut request = tonic::Request::new(pb::QueryCollectionsRequest {
        all_pages: true,
        ..query(&key)
    });
    request.set_timeout(deadline);
    let started = Instant::now();
    let answer = client(&h.facade.channel)
        .query_collections(request)
        .await
        .expect("the call succeeds with what it had by the deadline")
        .into_inner();
    assert!(started.elapsed() < deadline, "{:?}", started.elapsed());
    assert_eq!(
        ids(&answer.items),
        ["a-sub", "b-revoked", "c-promo", "d-only"]
    );
    assert_eq!(answer.pages, 1);
    assert!(!answer.complete);
    assert_eq!(answer.duplicates_dropped, 0);
    assert!(!answer.next_page_token.is_empty());
    assert_ne!(answer.next_page_token, TOKEN_2);

    // Passed back, with the slow page now fast, the token continues from page 2.
    slow.store(false, Ordering::SeqCst);
    let rest = client(&h.facade.channel)
        .query_collections(pb::QueryCollectionsRequest {
            all_pages: true,
            page_token: answer.next_page_token.clone(),
            ..query(&key)
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        ids(&rest.items),
        [
            "a-direct-revoked",
            "b-active",
            "c-sub-revoked",
            "e-direct",
            "d-sku2"
        ]
    );
    assert_eq!(rest.pages, 2);
    assert!(rest.complete);
    assert_eq!(rest.next_page_token, "");
    assert_eq!(rest.duplicates_dropped, 4);

    let tokens: Vec<Option<String>> = requests_to(&h.collections, QUERY_PATH)
        .await
        .iter()
        .map(|r| {
            body_json(r)["continuationToken"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    // Page 1, page 2 (cut off by the deadline), then page 2 again and page 3.
    assert_eq!(
        tokens,
        [
            None,
            Some(TOKEN_2.to_owned()),
            Some(TOKEN_2.to_owned()),
            Some(TOKEN_3.to_owned())
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// QueryCollections: typed items.

fn ts(seconds: i64, nanos: i32) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp { seconds, nanos })
}

#[tokio::test]
async fn items_are_typed_and_unknown_values_kept_as_text() {
    let h = Harness::start().await;
    let page = json!({
        "items": [
            {
                "id": "item-1",
                "productId": "9NGAME000001",
                "skuId": "0010",
                "productKind": "Game",
                "status": "Active",
                "acquisitionType": "Single",
                "acquiredDate": "2026-01-02T04:04:05+01:00",
                "startDate": "2026-01-02T03:04:05.1234567+00:00",
                "endDate": "9999-12-31T23:59:59.9999999+00:00",
                "modifiedDate": "2026-01-02T03:04:05Z",
                "quantity": 1,
                "satisfiedByProductIds": ["9NBUNDLE0001"],
                "tags": ["tag-a", "tag-b"],
                "transactionId": "0f8fad5b-d9cb-469f-a165-70867728950e",
                "trialData": {
                    "isInTrialPeriod": true,
                    "isTrial": true,
                    "trialTimeRemaining": "09:43:52.8580690"
                },
                "recurrenceData": "mdr:0:abc123",
                "futureField": {"ignored": true}
            },
            {
                "id": "item-2",
                "productId": "9NHOLO000002",
                "skuId": "0020",
                "productKind": "Hologram",
                "status": "Frozen",
                "acquisitionType": "Gifted",
                "quantity": 5,
                "recurrenceId": "rec-2"
            },
            {"id": "pass", "productKind": "Pass", "status": "Expired", "acquisitionType": "Recurring"},
            {"id": "app", "productKind": "Application", "status": "Revoked", "acquisitionType": "Conditional"},
            {"id": "durable", "productKind": "Durable", "status": "Banned"},
            {"id": "consumable", "productKind": "Consumable", "status": "Suspended"},
            {"id": "unmanaged", "productKind": "UnmanagedConsumable"},
            {"id": "bare"}
        ]
    });
    mount_post(
        &h.collections,
        QUERY_PATH,
        ResponseTemplate::new(200).set_body_json(page),
    )
    .await;
    let key = user_key();
    let items = client(&h.facade.channel)
        .query_collections(query(&key))
        .await
        .unwrap()
        .into_inner()
        .items;
    assert_eq!(items.len(), 8);

    assert_eq!(
        items[0],
        pb::CollectionItem {
            id: "item-1".into(),
            product_id: "9NGAME000001".into(),
            sku_id: "0010".into(),
            product_kind: pb::ProductKind::Game as i32,
            product_kind_text: "Game".into(),
            status: pb::ItemStatus::Active as i32,
            status_text: "Active".into(),
            acquisition_type: pb::AcquisitionType::Single as i32,
            acquisition_type_text: "Single".into(),
            acquired_date: ts(1_767_323_045, 0),
            start_date: ts(1_767_323_045, 123_456_700),
            end_date: ts(253_402_300_799, 999_999_900),
            modified_date: ts(1_767_323_045, 0),
            quantity: 1,
            satisfied_by_product_ids: vec!["9NBUNDLE0001".into()],
            tags: vec!["tag-a".into(), "tag-b".into()],
            transaction_id: "0f8fad5b-d9cb-469f-a165-70867728950e".into(),
            trial_data: Some(pb::TrialData {
                is_trial: true,
                is_in_trial_period: true,
                trial_time_remaining: Some(prost_types::Duration {
                    seconds: 9 * 3600 + 43 * 60 + 52,
                    nanos: 858_069_000,
                }),
            }),
            subscription_id: "mdr:0:abc123".into(),
        }
    );

    let other = &items[1];
    assert_eq!(other.product_kind(), pb::ProductKind::Other);
    assert_eq!(other.product_kind_text, "Hologram");
    assert_eq!(other.status(), pb::ItemStatus::Other);
    assert_eq!(other.status_text, "Frozen");
    assert_eq!(other.acquisition_type(), pb::AcquisitionType::Other);
    assert_eq!(other.acquisition_type_text, "Gifted");
    assert_eq!(other.quantity, 5);
    assert_eq!(other.subscription_id, "rec-2");
    assert_eq!(other.trial_data, None);
    assert_eq!(other.acquired_date, None);

    let kinds: Vec<pb::ProductKind> = items[2..].iter().map(|i| i.product_kind()).collect();
    assert_eq!(
        kinds,
        [
            pb::ProductKind::Pass,
            pb::ProductKind::Application,
            pb::ProductKind::Durable,
            pb::ProductKind::Consumable,
            pb::ProductKind::UnmanagedConsumable,
            pb::ProductKind::Unspecified
        ]
    );
    let statuses: Vec<pb::ItemStatus> = items[2..].iter().map(|i| i.status()).collect();
    assert_eq!(
        statuses,
        [
            pb::ItemStatus::Expired,
            pb::ItemStatus::Revoked,
            pb::ItemStatus::Banned,
            pb::ItemStatus::Suspended,
            pb::ItemStatus::Unspecified,
            pb::ItemStatus::Unspecified
        ]
    );
    assert_eq!(items[2].acquisition_type(), pb::AcquisitionType::Recurring);
    assert_eq!(
        items[3].acquisition_type(),
        pb::AcquisitionType::Conditional
    );
    let bare = &items[7];
    assert_eq!(bare.product_kind_text, "");
    assert_eq!(bare.status_text, "");
    assert_eq!(bare.acquisition_type(), pb::AcquisitionType::Unspecified);
    assert_eq!(bare.subscription_id, "");
}

// ---------------------------------------------------------------------------------------------
// QueryCollections: throttling (FGRL, store-services-apis 1.4).

#[tokio::test]
async fn throttling_is_resource_exhausted_with_retry_info_and_the_stores_message() {
    let h = Harness::start().await;
    let text = "The rate limit of 200 operations in 300 seconds has been exceeded for aspect \
                {userId; publisherId}.";
    mount_post(
        &h.collections,
        QUERY_PATH,
        ResponseTemplate::new(429)
            .insert_header("Retry-After", "120")
            .set_body_json(json!({"code": "Throttled", "message": text})),
    )
    .await;
    let key = user_key();
    let started = Instant::now();
    let status = client(&h.facade.channel)
        .query_collections(query(&key))
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5), "not waited");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(retry_delay(&status), Some(Duration::from_secs(120)));
    assert!(
        status.message().contains(text),
        "the Store's text is not in the message: {:?}",
        status.message()
    );
    let info = error_info(&status);
    assert_eq!(
        info.metadata.get("http_status").map(String::as_str),
        Some("429")
    );
    assert_key_not_in(&status, &key);
    // A Retry-After far beyond the longest wait is not retried.
    assert_eq!(requests_to(&h.collections, QUERY_PATH).await.len(), 1);
}

// ---------------------------------------------------------------------------------------------
// ConsumeProduct: the upstream request and the answer.

#[tokio::test]
async fn consume_sends_the_documented_request() {
    let h = Harness::start().await;
    mount_post(
        &h.collections,
        CONSUME_PATH,
        ResponseTemplate::new(200).set_body_json(consume_ok()),
    )
    .await;
    let key = user_key();
    client(&h.facade.channel)
        .consume_product(consume(&key))
        .await
        .unwrap();
    client(&h.facade.channel)
        .consume_product(pb::ConsumeProductRequest {
            remove_quantity: 0,
            include_order_ids: false,
            sandbox_id: "XDKS.1".into(),
            ..consume(&key)
        })
        .await
        .unwrap();
    let sent = requests_to(&h.collections, CONSUME_PATH).await;
    assert_eq!(sent.len(), 2);
    for request in &sent {
        assert_eq!(request.method.as_str(), "POST");
        assert_eq!(
            header(request, "authorization"),
            Some(format!("Bearer {TOKEN_PREFIX}-1"))
        );
    }
    let beneficiary = json!({
        "identityType": "b2b",
        "identityValue": key,
        "localTicketReference": ""
    });
    assert_eq!(
        body_json(&sent[0]),
        json!({
            "beneficiary": beneficiary,
            "productId": "9NCONSUMABLE",
            "trackingId": TRACKING_ID,
            "removeQuantity": 3,
            "includeOrderIds": true
        })
    );
    // remove_quantity 0: `removeQuantity` absent (not null, not 0).
    assert_eq!(
        body_json(&sent[1]),
        json!({
            "beneficiary": beneficiary,
            "productId": "9NCONSUMABLE",
            "trackingId": TRACKING_ID,
            "includeOrderIds": false,
            "sbx": "XDKS.1"
        })
    );
    assert!(!String::from_utf8_lossy(&sent[1].body).contains("removeQuantity"));
}

#[tokio::test]
async fn consume_answer_is_mapped_field_by_field() {
    let h = Harness::start().await;
    Harness::answer_next_once(
        &h.collections,
        ResponseTemplate::new(200).set_body_json(consume_ok()),
    )
    .await;
    mount_post(
        &h.collections,
        CONSUME_PATH,
        ResponseTemplate::new(200).set_body_json(json!({
            "itemId": "item-8",
            "newQuantity": 0,
            "trackingId": TRACKING_ID,
            "productId": "9NUNMANAGED"
        })),
    )
    .await;
    let key = user_key();
    let managed = client(&h.facade.channel)
        .consume_product(consume(&key))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        managed,
        pb::ConsumeProductResponse {
            item_id: "item-7".into(),
            new_quantity: 7,
            tracking_id: TRACKING_ID.into(),
            product_id: "9NCONSUMABLE".into(),
            order_transactions: vec![pb::OrderTransaction {
                order_id: "1d5e3f0a-0000-4000-8000-000000000001".into(),
                order_line_item_id: "1d5e3f0a-0000-4000-8000-000000000002".into(),
                quantity_consumed: 3,
            }],
        }
    );
    let unmanaged = client(&h.facade.channel)
        .consume_product(pb::ConsumeProductRequest {
            product_id: "9NUNMANAGED".into(),
            remove_quantity: 0,
            ..consume(&key)
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        unmanaged,
        pb::ConsumeProductResponse {
            item_id: "item-8".into(),
            new_quantity: 0,
            tracking_id: TRACKING_ID.into(),
            product_id: "9NUNMANAGED".into(),
            order_transactions: vec![],
        }
    );
}

// ---------------------------------------------------------------------------------------------
// ConsumeProduct: local validation.

#[tokio::test]
async fn consume_fields_are_checked_before_any_call() {
    let h = Harness::start().await;
    let key = user_key();
    let cases: Vec<(&str, pb::ConsumeProductRequest, &str)> = vec![
        (
            "empty tracking id",
            pb::ConsumeProductRequest {
                tracking_id: String::new(),
                ..consume(&key)
            },
            "tracking_id",
        ),
        (
            "abc",
            pb::ConsumeProductRequest {
                tracking_id: "abc".into(),
                ..consume(&key)
            },
            "tracking_id",
        ),
        (
            "GUID without dashes",
            pb::ConsumeProductRequest {
                tracking_id: TRACKING_ID.replace('-', ""),
                ..consume(&key)
            },
            "tracking_id",
        ),
        (
            "GUID in braces",
            pb::ConsumeProductRequest {
                tracking_id: format!("{{{TRACKING_ID}}}"),
                ..consume(&key)
            },
            "tracking_id",
        ),
        (
            "negative quantity",
            pb::ConsumeProductRequest {
                remove_quantity: -1,
                ..consume(&key)
            },
            "remove_quantity",
        ),
    ];
    for (what, request, field) in cases {
        let status = client(&h.facade.channel)
            .consume_product(request)
            .await
            .unwrap_err();
        assert_invalid(what, &status, "INVALID_REQUEST", &[field]);
        assert_key_not_in(&status, &key);
    }
    let purchase = store_key(PURCHASE_AUD, now() - 3600, now() + 3600);
    let status = client(&h.facade.channel)
        .consume_product(consume(&purchase))
        .await
        .unwrap_err();
    assert_invalid("purchase key", &status, "KEY_TYPE_MISMATCH", &["user_key"]);
    assert_key_not_in(&status, &purchase);

    assert!(Harness::requests(&h.collections).await.is_empty());
    assert!(Harness::requests(&h.purchase).await.is_empty());
    assert!(h.token_requests().await.is_empty());
}

// ---------------------------------------------------------------------------------------------
// ConsumeProduct: exactly once.

#[tokio::test]
async fn consume_is_retried_after_503_with_the_identical_body() {
    let h = Harness::start().await;
    Harness::answer_next_once(&h.collections, ResponseTemplate::new(503)).await;
    mount_post(
        &h.collections,
        CONSUME_PATH,
        ResponseTemplate::new(200).set_body_json(consume_ok()),
    )
    .await;
    let key = user_key();
    let answer = client(&h.facade.channel)
        .consume_product(consume(&key))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.tracking_id, TRACKING_ID);
    let sent = requests_to(&h.collections, CONSUME_PATH).await;
    assert_eq!(sent.len(), 2);
    assert_eq!(sent[0].body, sent[1].body);
    assert_eq!(body_json(&sent[1])["trackingId"], TRACKING_ID);
}

#[tokio::test]
async fn a_consume_the_store_refused_is_not_retried() {
    let h = Harness::start().await;
    mount_post(
        &h.collections,
        CONSUME_PATH,
        ResponseTemplate::new(400).set_body_json(service_error("BadRequest", "InvalidParameter")),
    )
    .await;
    let key = user_key();
    let status = client(&h.facade.channel)
        .consume_product(consume(&key))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(requests_to(&h.collections, CONSUME_PATH).await.len(), 1);
}

/// A raw HTTP/1.1 upstream: it reads the first request in full and drops the connection
/// without answering; every later request is answered 200 with `answer`.
struct LosesFirstAnswer {
    addr: SocketAddr,
    bodies: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl LosesFirstAnswer {
    async fn start(answer: Value) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::new(AtomicUsize::new(0));
        let answer: Arc<str> = answer.to_string().into();
        let recorded = bodies.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(
                    stream,
                    seen.clone(),
                    recorded.clone(),
                    answer.clone(),
                ));
            }
        });
        Self { addr, bodies }
    }

    fn bodies(&self) -> Vec<Vec<u8>> {
        self.bodies.lock().unwrap().clone()
    }
}

async fn serve(
    mut stream: TcpStream,
    seen: Arc<AtomicUsize>,
    bodies: Arc<Mutex<Vec<Vec<u8>>>>,
    answer: Arc<str>,
) {
    let mut buf = Vec::new();
    while let Some(request) = read_request(&mut stream, &mut buf).await {
        bodies.lock().unwrap().push(request.body);
        if seen.fetch_add(1, Ordering::SeqCst) == 0 {
            // The request went out in full; its answer is lost.
            return;
        }
        let reply = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{answer}",
            answer.len()
        );
        if stream.write_all(reply.as_bytes()).await.is_err() {
            return;
        }
    }
}

#[tokio::test]
async fn a_consume_whose_answer_was_lost_is_retried_with_the_identical_body() {
    let upstream = LosesFirstAnswer::start(consume_ok()).await;
    let (_token, facade) = facade_at(&format!("http://{}", upstream.addr), |_| {}).await;
    let key = user_key();
    let mut request = tonic::Request::new(consume(&key));
    request.set_timeout(Duration::from_secs(10));
    let answer = client(&facade.channel)
        .consume_product(request)
        .await
        .expect("the lost answer is retried")
        .into_inner();
    assert_eq!(answer.tracking_id, TRACKING_ID);
    assert_eq!(answer.new_quantity, 7);
    let bodies = upstream.bodies();
    assert_eq!(bodies.len(), 2, "one lost attempt, one answered");
    assert_eq!(bodies[0], bodies[1]);
    let body: Value = serde_json::from_slice(&bodies[0]).unwrap();
    assert_eq!(body["trackingId"], TRACKING_ID);
}

#[tokio::test]
async fn all_pages_keeps_the_pages_gathered_when_a_later_page_is_throttled() {
    let h = Harness::start().await;
    // Page 2 is throttled for longer than any retry may wait: the facade does not retry it.
    Mock::given(method("POST"))
        .and(path(QUERY_PATH))
        .and(body_partial_json(json!({ "continuationToken": TOKEN_2 })))
        .respond_with(
            ResponseTemplate::new(429)
                .insert_header("Retry-After", "120")
                .set_body_string("The rate limit of 200 operations in 300 seconds has been exceeded for aspect {userId; publisherId}."),
        )
        .with_priority(1)
        .mount(&h.collections)
        .await;
    mount_three_pages(&h).await;
    let key = user_key();
    let all = pb::QueryCollectionsRequest {
        all_pages: true,
        ..query(&key)
    };
    let answer = client(&h.facade.channel)
        .query_collections(all.clone())
        .await
        .expect("the pages gathered come back")
        .into_inner();
    assert_eq!(
        ids(&answer.items),
        ["a-sub", "b-revoked", "c-promo", "d-only"]
    );
    assert_eq!(answer.pages, 1);
    assert!(!answer.complete);
    assert!(!answer.next_page_token.is_empty());

    // Once the Store has room again, the token goes on from the page that was not had.
    h.collections.reset().await;
    mount_three_pages(&h).await;
    let rest = client(&h.facade.channel)
        .query_collections(pb::QueryCollectionsRequest {
            page_token: answer.next_page_token,
            ..all
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rest.pages, 2);
    assert!(rest.complete);
    let sent = requests_to(&h.collections, QUERY_PATH).await;
    assert_eq!(body_json(&sent[0])["continuationToken"], TOKEN_2);
}

#[tokio::test]
async fn all_pages_fails_when_a_later_page_is_refused_for_another_reason() {
    let h = Harness::start().await;
    Mock::given(method("POST"))
        .and(path(QUERY_PATH))
        .and(body_partial_json(json!({ "continuationToken": TOKEN_2 })))
        .respond_with(ResponseTemplate::new(400).set_body_json(json!({
            "code": "BadRequest",
            "message": "continuationToken is not valid",
            "innererror": {"code": "InvalidParameter", "data": ["continuationToken"]}
        })))
        .with_priority(1)
        .mount(&h.collections)
        .await;
    mount_three_pages(&h).await;
    let status = client(&h.facade.channel)
        .query_collections(pb::QueryCollectionsRequest {
            all_pages: true,
            ..query(&user_key())
        })
        .await
        .expect_err("a refusal that retrying cannot fix");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
}

/// Answers pages whose continuation tokens lead in a circle: none -> A -> B -> A.
struct Circle;

impl Respond for Circle {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let body: Value = serde_json::from_slice(&request.body).unwrap_or_default();
        let next = match body.get("continuationToken").and_then(Value::as_str) {
            None | Some("B") => "A",
            Some(_) => "B",
        };
        ResponseTemplate::new(200).set_body_json(json!({
            "items": [item(&format!("after-{next}"), "A", "0010", "Single", "Active")],
            "continuationToken": next,
        }))
    }
}

#[tokio::test]
async fn continuation_tokens_that_lead_back_are_a_malformed_answer_not_an_endless_walk() {
    let h = Harness::start().await;
    Mock::given(method("POST"))
        .and(path(QUERY_PATH))
        .respond_with(Circle)
        .mount(&h.collections)
        .await;
    let key = user_key();
    let status = client(&h.facade.channel)
        .query_collections(pb::QueryCollectionsRequest {
            all_pages: true,
            ..query(&key)
        })
        .await
        .expect_err("a circle of pages");
    assert_eq!(status.code(), Code::Internal, "{status:?}");
    assert_eq!(error_info(&status).reason, "UPSTREAM_MALFORMED_RESPONSE");
    // none, A, B, then A again is refused: three requests.
    assert_eq!(requests_to(&h.collections, QUERY_PATH).await.len(), 3);

    // One page at a time: a page answering the very token it was asked with is refused too.
    h.collections.reset().await;
    Mock::given(method("POST"))
        .and(path(QUERY_PATH))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "items": [], "continuationToken": "same"
        })))
        .mount(&h.collections)
        .await;
    let first = client(&h.facade.channel)
        .query_collections(query(&key))
        .await
        .unwrap()
        .into_inner();
    let status = client(&h.facade.channel)
        .query_collections(pb::QueryCollectionsRequest {
            page_token: first.next_page_token,
            ..query(&key)
        })
        .await
        .expect_err("the same token again");
    assert_eq!(error_info(&status).reason, "UPSTREAM_MALFORMED_RESPONSE");
}

#[tokio::test]
async fn a_page_token_only_continues_the_query_that_gave_it() {
    let h = Harness::start().await;
    mount_three_pages(&h).await;
    let key = user_key();
    let first = client(&h.facade.channel)
        .query_collections(query(&key))
        .await
        .unwrap()
        .into_inner();
    assert!(!first.next_page_token.is_empty());
    let others = [
        pb::QueryCollectionsRequest {
            products: vec![product("9NOTHER00000", "")],
            ..query(&key)
        },
        pb::QueryCollectionsRequest {
            validity: pb::Validity::Valid as i32,
            ..query(&key)
        },
        pb::QueryCollectionsRequest {
            sandbox_id: "XDKS.1".into(),
            ..query(&key)
        },
    ];
    for other in others {
        let status = client(&h.facade.channel)
            .query_collections(pb::QueryCollectionsRequest {
                page_token: first.next_page_token.clone(),
                ..other
            })
            .await
            .expect_err("another query");
        assert_invalid("other query", &status, "INVALID_REQUEST", &["page_token"]);
    }
    // The page size may change between pages.
    client(&h.facade.channel)
        .query_collections(pb::QueryCollectionsRequest {
            page_token: first.next_page_token,
            page_size: 7,
            ..query(&key)
        })
        .await
        .expect("the same query with another page size");
    assert_eq!(requests_to(&h.collections, QUERY_PATH).await.len(), 2);
}

/// Answers every page with a token to a page never served before.
struct Endless(std::sync::atomic::AtomicUsize);

impl Respond for Endless {
    fn respond(&self, _: &Request) -> ResponseTemplate {
        let n = self.0.fetch_add(1, Ordering::SeqCst);
        ResponseTemplate::new(200).set_body_json(json!({
            "items": [item(&format!("item-{n}"), &format!("P{n}"), "0010", "Single", "Active")],
            "continuationToken": format!("page-{}", n + 1),
        }))
    }
}

#[tokio::test]
async fn all_pages_stops_at_a_hundred_pages_with_a_token_to_go_on_from() {
    let h = Harness::start().await;
    Mock::given(method("POST"))
        .and(path(QUERY_PATH))
        .respond_with(Endless(Default::default()))
        .mount(&h.collections)
        .await;
    let answer = client(&h.facade.channel)
        .query_collections(pb::QueryCollectionsRequest {
            all_pages: true,
            ..query(&user_key())
        })
        .await
        .expect("the pages gathered come back")
        .into_inner();
    assert_eq!(answer.pages, 100);
    assert_eq!(answer.items.len(), 100);
    assert!(!answer.complete);
    assert!(!answer.next_page_token.is_empty());
    assert_eq!(requests_to(&h.collections, QUERY_PATH).await.len(), 100);
}
