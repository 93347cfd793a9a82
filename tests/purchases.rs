//! What is particular to the StorePurchases RPCs, against wiremock Stores: request shapes
//! (`b2bKey`, the grant's order, the change's path and days, the orders filter, the
//! recurrences page size), both answer shapes of a change, paging of recurrences and orders,
//! and the purchase-key checks. What every operation shares (error mapping, retries,
//! secrets, metrics, traces) is covered through the operation table.

mod common;

use common::*;
use msstore_facade::proto::msstore::v1 as pb;
use pb::store_purchases_client::StorePurchasesClient;
use serde_json::{json, Value};
use tonic::transport::Channel;
use tonic::Code;
use wiremock::matchers::{body_partial_json, method, path, path_regex};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

fn client(channel: &Channel) -> StorePurchasesClient<Channel> {
    StorePurchasesClient::new(channel.clone())
}

fn purchase_key() -> String {
    store_key(PURCHASE_AUD, now() - 3600, now() + 29 * 24 * 3600)
}

fn body_json(request: &Request) -> Value {
    serde_json::from_slice(&request.body).expect("a JSON body")
}

async fn requests(server: &MockServer) -> Vec<Request> {
    server.received_requests().await.unwrap_or_default()
}

async fn answer(server: &MockServer, at: &str, body: Value) {
    Mock::given(method("POST"))
        .and(path_regex(at))
        .respond_with(ResponseTemplate::new(200).set_body_json(body))
        .mount(server)
        .await;
}

const ORDER_ID: &str = "6b0a8f4e-3c2d-4b1a-9e8f-7a6b5c4d3e2f";

fn grant(key: &str) -> pb::GrantFreeProductRequest {
    pb::GrantFreeProductRequest {
        user_key: key.to_owned(),
        product_id: "9NFREEPRODUCT".into(),
        sku_id: "0010".into(),
        availability_id: "9PAVAILABLE0".into(),
        language: "en-us".into(),
        market: "us".into(),
        order_id: ORDER_ID.into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn grant_sends_the_documented_order_and_maps_the_answer() {
    let h = Harness::start().await;
    answer(&h.purchase, r"^/v7\.0/purchases/grant$", order_answer()).await;
    let key = purchase_key();
    let order = client(&h.facade.channel)
        .grant_free_product(pb::GrantFreeProductRequest {
            dev_offer_id: "offer-1".into(),
            sandbox_id: "XDKS.1".into(),
            ..grant(&key)
        })
        .await
        .unwrap()
        .into_inner();
    let sent = requests(&h.purchase).await;
    assert_eq!(sent.len(), 1);
    assert_eq!(
        sent[0].headers["authorization"].to_str().unwrap(),
        format!("Bearer {TOKEN_PREFIX}-1")
    );
    assert_eq!(
        body_json(&sent[0]),
        json!({
            "availabilityId": "9PAVAILABLE0",
            "b2bKey": key,
            "devOfferId": "offer-1",
            "language": "en-us",
            "market": "us",
            "orderId": ORDER_ID,
            "productId": "9NFREEPRODUCT",
            "skuId": "0010",
            "sbx": "XDKS.1"
        })
    );
    assert_eq!(order.order_state(), pb::OrderState::Purchased);
    assert_eq!(order.order_state_text, "Purchased");
    assert_eq!(order.currency_code, "USD");
    assert!(order.created_time.is_some());
    let line = &order.order_line_items[0];
    assert_eq!(line.product_id, "9NFREEPRODUCT");
    assert_eq!(line.fulfillment_state, "Fulfilled");
    assert_eq!(line.beneficiary_id, "user-1");
    assert_eq!(line.quantity, 1);
}

#[tokio::test]
async fn purchase_calls_are_checked_before_any_request() {
    let h = Harness::start().await;
    let key = purchase_key();
    let cases: Vec<(&str, pb::GrantFreeProductRequest, &[&str])> = vec![
        (
            "not a GUID",
            pb::GrantFreeProductRequest {
                order_id: "order-1".into(),
                ..grant(&key)
            },
            &["order_id"],
        ),
        (
            "no language or market",
            pb::GrantFreeProductRequest {
                language: String::new(),
                market: "usa".into(),
                ..grant(&key)
            },
            &["language", "market"],
        ),
        (
            "no availability",
            pb::GrantFreeProductRequest {
                availability_id: String::new(),
                ..grant(&key)
            },
            &["availability_id"],
        ),
    ];
    for (case, request, fields) in cases {
        let status = client(&h.facade.channel)
            .grant_free_product(request)
            .await
            .expect_err(case);
        assert_eq!(status.code(), Code::InvalidArgument, "{case}: {status:?}");
        assert_eq!(bad_fields(&status), fields, "{case}");
    }
    // A collections key for a purchase call.
    let collections = store_key(COLLECTIONS_AUD, now() - 3600, now() + 3600);
    let status = client(&h.facade.channel)
        .query_orders(pb::QueryOrdersRequest {
            user_key: collections.clone(),
            ..Default::default()
        })
        .await
        .expect_err("a collections key");
    assert_eq!(error_info(&status).reason, "KEY_TYPE_MISMATCH");
    assert_eq!(bad_fields(&status), ["user_key"]);
    assert!(!format!("{status:?}").contains(&collections));
    // Days only with EXTEND, and required there.
    for (change_type, days, field) in [
        (pb::ChangeType::Extend, 0, "extension_days"),
        (pb::ChangeType::Cancel, 3, "extension_days"),
        (pb::ChangeType::Unspecified, 0, "change_type"),
    ] {
        let status = client(&h.facade.channel)
            .change_recurrence(pb::ChangeRecurrenceRequest {
                user_key: key.clone(),
                recurrence_id: "mdr:0:abc".into(),
                change_type: change_type as i32,
                extension_days: days,
                ..Default::default()
            })
            .await
            .expect_err("refused locally");
        assert_eq!(bad_fields(&status), [field], "{change_type:?} {days}");
    }
    assert!(requests(&h.purchase).await.is_empty());
}

#[tokio::test]
async fn a_change_puts_the_recurrence_id_in_its_own_segment_and_reads_both_answer_shapes() {
    let h = Harness::start().await;
    // Microsoft's pages disagree: the recurrence itself, or {"items": [it]}.
    Mock::given(method("POST"))
        .and(path_regex(r"/change$"))
        .and(body_partial_json(json!({"changeType": "Extend"})))
        .respond_with(ResponseTemplate::new(200).set_body_json(recurrence()))
        .mount(&h.purchase)
        .await;
    Mock::given(method("POST"))
        .and(path_regex(r"/change$"))
        .and(body_partial_json(json!({"changeType": "Cancel"})))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({ "items": [recurrence()] })))
        .mount(&h.purchase)
        .await;
    let key = purchase_key();
    let id = "mdr:0:0123456789abcdef0123456789abcdef:9NSUBSCRIPTN";
    for (change_type, days) in [(pb::ChangeType::Extend, -3), (pb::ChangeType::Cancel, 0)] {
        let changed = client(&h.facade.channel)
            .change_recurrence(pb::ChangeRecurrenceRequest {
                user_key: key.clone(),
                recurrence_id: id.into(),
                change_type: change_type as i32,
                extension_days: days,
                ..Default::default()
            })
            .await
            .unwrap_or_else(|status| panic!("{change_type:?}: {status:?}"))
            .into_inner();
        assert_eq!(changed.id, id);
        assert_eq!(changed.recurrence_state(), pb::RecurrenceState::Active);
        assert!(changed.expiration_time_with_grace.is_some());
    }
    let sent = requests(&h.purchase).await;
    assert_eq!(sent.len(), 2);
    for request in &sent {
        // One segment: nothing in the id can add or climb a path segment.
        let segments: Vec<&str> = request.url.path().split('/').collect();
        assert_eq!(segments.len(), 6, "{}", request.url.path());
        assert_eq!(segments[5], "change");
        let decoded = percent_decode(segments[4]);
        assert_eq!(decoded, id);
        // Sent with its colons as they are, as Microsoft's library and examples send it.
        assert_eq!(segments[4], id);
    }
    assert_eq!(
        body_json(&sent[0]),
        json!({"b2bKey": key, "changeType": "Extend", "extensionTimeInDays": -3})
    );
    assert_eq!(
        body_json(&sent[1]),
        json!({"b2bKey": key, "changeType": "Cancel"})
    );

    // An id that would climb out of its segment stays inside it.
    h.purchase.reset().await;
    answer(&h.purchase, r"/change$", recurrence()).await;
    client(&h.facade.channel)
        .change_recurrence(pb::ChangeRecurrenceRequest {
            user_key: key.clone(),
            recurrence_id: "../../v7.0/purchases/grant?x=1#y".into(),
            change_type: pb::ChangeType::Refund as i32,
            ..Default::default()
        })
        .await
        .unwrap();
    let sent = requests(&h.purchase).await;
    assert!(
        sent[0].url.path().starts_with("/v8.0/b2b/recurrences/")
            && sent[0].url.path().ends_with("/change")
            && sent[0].url.query().is_none(),
        "{}",
        sent[0].url
    );
}

fn percent_decode(text: &str) -> String {
    percent_encoding::percent_decode_str(text)
        .decode_utf8()
        .unwrap()
        .into_owned()
}

#[tokio::test]
async fn orders_default_to_revoked_and_refunded_and_page_like_every_listing() {
    let h = Harness::start().await;
    Mock::given(method("POST"))
        .and(path("/v8.0/b2b/orders/query"))
        .and(body_partial_json(json!({"continuationToken": "page-2"})))
        .respond_with(ResponseTemplate::new(200).set_body_json(orders_page()))
        .with_priority(1)
        .mount(&h.purchase)
        .await;
    let mut first = orders_page();
    first["continuationToken"] = json!("page-2");
    first["items"][0]["orderId"] = json!("first-order");
    answer(&h.purchase, r"^/v8\.0/b2b/orders/query$", first).await;
    let key = purchase_key();
    let all = client(&h.facade.channel)
        .query_orders(pb::QueryOrdersRequest {
            user_key: key.clone(),
            all_pages: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.pages, 2);
    assert!(all.complete);
    let ids: Vec<&str> = all.items.iter().map(|o| o.order_id.as_str()).collect();
    assert_eq!(ids, ["first-order", "2e5f3a0b-0000-4000-8000-000000000001"]);
    let line = &all.items[1].order_line_items[0];
    assert_eq!(line.line_item_state(), pb::LineItemState::Revoked);
    assert!(line.was_consumable_quantity_revoked);
    assert!(all.items[1].order_refunded_date.is_some());
    let sent = requests(&h.purchase).await;
    assert_eq!(
        body_json(&sent[0]),
        json!({"b2bKey": key, "lineItemStateFilter": ["Refunded", "Revoked"]})
    );
    assert_eq!(body_json(&sent[1])["continuationToken"], "page-2");

    // A filter of the caller's, one page: the token goes on with the same filter only.
    h.purchase.reset().await;
    let mut first = orders_page();
    first["continuationToken"] = json!("page-2");
    answer(&h.purchase, r"^/v8\.0/b2b/orders/query$", first).await;
    let page = client(&h.facade.channel)
        .query_orders(pb::QueryOrdersRequest {
            user_key: key.clone(),
            line_item_states: vec![pb::LineItemState::Purchased as i32],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!page.complete);
    assert_eq!(
        body_json(&requests(&h.purchase).await[0])["lineItemStateFilter"],
        json!(["Purchased"])
    );
    let status = client(&h.facade.channel)
        .query_orders(pb::QueryOrdersRequest {
            user_key: key.clone(),
            page_token: page.next_page_token,
            ..Default::default()
        })
        .await
        .expect_err("another filter");
    assert_eq!(bad_fields(&status), ["page_token"]);
}

#[tokio::test]
async fn recurrences_send_the_page_size_as_the_docs_type_it_and_are_typed() {
    let h = Harness::start().await;
    let mut page = json!({ "items": [recurrence()] });
    page["items"][0]["recurrenceState"] = json!("InDunning");
    page["items"][0]["cancellationDate"] = json!("2026-01-20T00:00:00Z");
    page["items"].as_array_mut().unwrap().push(json!({
        "id": "mdr:0:other", "recurrenceState": "Suspended", "autoRenew": "yes"
    }));
    answer(&h.purchase, r"^/v8\.0/b2b/recurrences/query$", page).await;
    let key = purchase_key();
    let answer = client(&h.facade.channel)
        .query_recurrences(pb::QueryRecurrencesRequest {
            user_key: key.clone(),
            page_size: 10,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(answer.complete);
    assert_eq!(
        answer.items[0].recurrence_state(),
        pb::RecurrenceState::InDunning
    );
    assert!(answer.items[0].cancellation_date.is_some());
    // A state this version does not know is kept as text; a field of the wrong type is dropped.
    assert_eq!(
        answer.items[1].recurrence_state(),
        pb::RecurrenceState::Other
    );
    assert_eq!(answer.items[1].recurrence_state_text, "Suspended");
    assert!(!answer.items[1].auto_renew);
    assert_eq!(
        body_json(&requests(&h.purchase).await[0]),
        json!({"b2bKey": key, "pageSize": "10"})
    );
    let status = client(&h.facade.channel)
        .query_recurrences(pb::QueryRecurrencesRequest {
            user_key: key,
            page_size: 101,
            ..Default::default()
        })
        .await
        .expect_err("too large a page");
    assert_eq!(bad_fields(&status), ["page_size"]);
}
