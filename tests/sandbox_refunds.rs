//! The refund RPCs end to end against the sandbox emulator, as a backend developer would run a
//! reconciliation loop: refunds made through the magic product, the emulator's admin call and
//! a subscription refund arrive as typed events, hidden for 30 seconds once pulled, removed
//! once acknowledged; a lapsed delivery's ack id is reported expired; a rotated SAS is
//! replaced without the caller noticing; the emulator's faults reach every error class.

mod common;

use std::time::Duration;

use common::*;
use msstore_facade::emulator::catalog::{SANDBOX_PASS, SANDBOX_REVOKED_ON_GRANT};
use msstore_facade::emulator::{RunningEmulator, StoreKeySpec, SANDBOX_USER_ID};
use msstore_facade::proto::msstore::v1 as pb;
use msstore_facade::upstream::Host;
use pb::store_purchases_client::StorePurchasesClient;
use pb::store_refunds_client::StoreRefundsClient;
use serde_json::{json, Value};
use tonic::transport::Channel;
use tonic::Code;

fn refunds(channel: &Channel) -> StoreRefundsClient<Channel> {
    StoreRefundsClient::new(channel.clone())
}

fn purchases(channel: &Channel) -> StorePurchasesClient<Channel> {
    StorePurchasesClient::new(channel.clone())
}

async fn pull(channel: &Channel) -> Vec<pb::RefundEvent> {
    refunds(channel)
        .pull_refund_events(pb::PullRefundEventsRequest {
            max_events: 32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .events
}

async fn acknowledge(channel: &Channel, ack_ids: &[&str]) -> pb::AcknowledgeRefundEventsResponse {
    refunds(channel)
        .acknowledge_refund_events(pb::AcknowledgeRefundEventsRequest {
            ack_ids: ack_ids.iter().map(|id| (*id).to_owned()).collect(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
}

/// `POST {emulator}/emulator/{path}` with `body`: the emulator's own control surface.
async fn admin(emulator: &RunningEmulator, path: &str, body: Value) -> (u16, Value) {
    let url = format!("{}emulator/{path}", emulator.endpoints().base_url());
    let response = reqwest::Client::new()
        .post(url)
        .json(&body)
        .send()
        .await
        .expect("the emulator answers");
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// The ids of `user`'s orders in the sandbox, every state.
async fn order_ids(channel: &Channel, user: &str) -> Vec<String> {
    purchases(channel)
        .query_orders(pb::QueryOrdersRequest {
            user_key: StoreKeySpec::new(Host::Purchase).user_id(user).mint(),
            line_item_states: vec![
                pb::LineItemState::Purchased as i32,
                pb::LineItemState::Revoked as i32,
                pb::LineItemState::Refunded as i32,
            ],
            all_pages: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .items
        .into_iter()
        .map(|order| order.order_id)
        .collect()
}

#[tokio::test]
async fn a_revoked_grant_is_pulled_hidden_acknowledged_and_gone() {
    let emulator = start_emulator().await;
    let facade = Facade::start(sandbox_settings(&emulator)).await;
    let channel = &facade.channel;
    let key = StoreKeySpec::new(Host::Purchase).user_id("rita").mint();
    let order_id = "3c9d2b1a-7e6f-4a5b-8c9d-0e1f2a3b4c5d";
    purchases(channel)
        .grant_free_product(pb::GrantFreeProductRequest {
            user_key: key.clone(),
            product_id: SANDBOX_REVOKED_ON_GRANT.into(),
            sku_id: "0010".into(),
            availability_id: "9PSANDBOXAVL".into(),
            language: "en-us".into(),
            market: "us".into(),
            order_id: order_id.into(),
            ..Default::default()
        })
        .await
        .expect("the magic product is granted");

    let events = pull(channel).await;
    assert_eq!(events.len(), 1, "{events:#?}");
    let event = &events[0];
    assert_eq!(event.state(), pb::RefundEventState::Revoked, "{event:#?}");
    assert_eq!(event.state_text, "Revoked");
    assert_eq!(event.order_id, order_id);
    assert_eq!(event.product_id, SANDBOX_REVOKED_ON_GRANT);
    assert_eq!(event.source, "/Purchase/Refund");
    assert_eq!(event.r#type, "ClawbackEventContractV2");
    assert_eq!(event.decode_error, "");
    assert!(!event.id.is_empty() && !event.line_item_id.is_empty());
    assert_eq!(event.dequeue_count, 1);
    assert!(event.time_next_visible.is_some() && event.event_date.is_some());

    // The order shows the revocation too.
    let revoked = purchases(channel)
        .query_orders(pb::QueryOrdersRequest {
            user_key: key,
            line_item_states: vec![pb::LineItemState::Revoked as i32],
            all_pages: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        revoked.items.iter().any(|o| o.order_id == order_id),
        "{revoked:#?}"
    );

    // Hidden from other pulls while being handled; removed once acknowledged.
    assert!(pull(channel).await.is_empty());
    let answer = acknowledge(channel, &[&event.ack_id]).await;
    assert_eq!(answer.acknowledged, std::slice::from_ref(&event.ack_id));
    assert!(answer.expired.is_empty());
    let again = acknowledge(channel, &[&event.ack_id]).await;
    assert_eq!(
        again.expired,
        std::slice::from_ref(&event.ack_id),
        "gone already"
    );
}

#[tokio::test]
async fn the_admin_call_makes_every_state_of_the_2026_docs() {
    let emulator = start_emulator().await;
    let facade = Facade::start(sandbox_settings(&emulator)).await;
    let channel = &facade.channel;
    let orders = order_ids(channel, SANDBOX_USER_ID).await;
    assert!(orders.len() >= 4, "{orders:?}");
    let states = ["Revoked", "Returned", "Refunded", "ChargebackReversal"];
    for (state, order) in states.iter().zip(&orders) {
        let (status, answer) = admin(
            &emulator,
            "refunds",
            json!({"orderId": order, "eventState": state}),
        )
        .await;
        assert_eq!(status, 200, "{state}: {answer}");
    }
    let (status, _) = admin(&emulator, "refunds", json!({"orderId": "no-such-order"})).await;
    assert_eq!(status, 404);

    let events = pull(channel).await;
    let mut seen: Vec<(pb::RefundEventState, &str, &str)> = events
        .iter()
        .map(|e| (e.state(), e.source.as_str(), e.order_id.as_str()))
        .collect();
    seen.sort_unstable();
    let mut expected = vec![
        (
            pb::RefundEventState::Revoked,
            "/Purchase/Refund",
            orders[0].as_str(),
        ),
        (
            pb::RefundEventState::Returned,
            "/Purchase/Refund",
            orders[1].as_str(),
        ),
        (
            pb::RefundEventState::Refunded,
            "/Purchase/Refund",
            orders[2].as_str(),
        ),
        (
            pb::RefundEventState::ChargebackReversal,
            "/Purchase/Chargeback",
            orders[3].as_str(),
        ),
    ];
    expected.sort_unstable();
    assert_eq!(seen, expected);
    let acks: Vec<&str> = events.iter().map(|e| e.ack_id.as_str()).collect();
    assert_eq!(acknowledge(channel, &acks).await.acknowledged.len(), 4);
}

#[tokio::test]
async fn a_subscription_refund_carries_its_recurrence() {
    let emulator = start_emulator().await;
    let facade = Facade::start(sandbox_settings(&emulator)).await;
    let channel = &facade.channel;
    let key = StoreKeySpec::new(Host::Purchase).user_id("sam").mint();
    let pass = purchases(channel)
        .query_recurrences(pb::QueryRecurrencesRequest {
            user_key: key.clone(),
            all_pages: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .items
        .into_iter()
        .find(|r| r.product_id == SANDBOX_PASS)
        .expect("the pass");
    purchases(channel)
        .change_recurrence(pb::ChangeRecurrenceRequest {
            user_key: key,
            recurrence_id: pass.id.clone(),
            change_type: pb::ChangeType::Refund as i32,
            ..Default::default()
        })
        .await
        .expect("refunded");
    let events = pull(channel).await;
    assert_eq!(events.len(), 1, "{events:#?}");
    let recurrence = events[0]
        .recurrence_data
        .as_ref()
        .expect("a subscription's event carries its recurrence");
    assert_eq!(recurrence.recurrence_id, pass.id);
    assert_eq!(recurrence.refund_type(), pb::RefundType::Full);
    assert!(recurrence.duration_in_days > 0);
    assert_eq!(events[0].state(), pb::RefundEventState::Returned);
}

#[tokio::test]
async fn a_rotated_sas_and_an_undecodable_message_do_not_stop_the_loop() {
    let emulator = start_emulator().await;
    let facade = Facade::start(sandbox_settings(&emulator)).await;
    let channel = &facade.channel;
    assert!(
        pull(channel).await.is_empty(),
        "the SAS is fetched and kept"
    );
    let (status, _) = admin(&emulator, "refund-queue/rotate-key", json!({})).await;
    assert_eq!(status, 204);
    let (status, _) = admin(
        &emulator,
        "refund-queue/messages",
        json!({"text": "this is not base64!"}),
    )
    .await;
    assert_eq!(status, 201);
    let events = pull(channel).await;
    assert_eq!(events.len(), 1, "the refused SAS was replaced: {events:#?}");
    assert!(events[0].decode_error.contains("base64"), "{:?}", events[0]);
    assert_eq!(events[0].message_text, "this is not base64!");
    let answer = acknowledge(channel, &[&events[0].ack_id]).await;
    assert_eq!(answer.acknowledged.len(), 1, "{answer:?}");
}

#[tokio::test]
async fn a_lapsed_delivery_comes_back_and_its_old_ack_id_expires() {
    let emulator = start_emulator().await;
    let facade = Facade::start(sandbox_settings(&emulator)).await;
    let channel = &facade.channel;
    let order = order_ids(channel, SANDBOX_USER_ID).await.remove(0);
    let (status, _) = admin(&emulator, "refunds", json!({"orderId": order})).await;
    assert_eq!(status, 200);
    let first = pull(channel).await.remove(0);
    // Not acknowledged within its 30 seconds: delivered again, with a new ack id.
    tokio::time::sleep(Duration::from_secs(31)).await;
    let second = pull(channel).await.remove(0);
    assert_eq!(second.id, first.id, "the same event");
    assert_eq!(second.dequeue_count, 2);
    assert_ne!(second.ack_id, first.ack_id);
    let answer = acknowledge(channel, &[&first.ack_id, &second.ack_id]).await;
    assert_eq!(answer.expired, std::slice::from_ref(&first.ack_id));
    assert_eq!(answer.acknowledged, std::slice::from_ref(&second.ack_id));
}

#[tokio::test]
async fn the_emulator_faults_reach_every_error_class() {
    // (operation, magic id, the code a caller sees, ErrorInfo reason when it is the facade's)
    let cases = [
        ("sastoken", "MAGIC-404", Code::NotFound, None),
        ("sastoken", "MAGIC-429", Code::ResourceExhausted, None),
        (
            "sastoken",
            "MAGIC-MALFORMED",
            Code::Internal,
            Some("UPSTREAM_MALFORMED_RESPONSE"),
        ),
        ("get", "MAGIC-500", Code::Internal, None),
        ("get", "MAGIC-429", Code::ResourceExhausted, None),
        (
            "get",
            "MAGIC-RESET",
            Code::Unavailable,
            Some("UPSTREAM_CONNECTION_LOST"),
        ),
        (
            "get",
            "MAGIC-MALFORMED",
            Code::Internal,
            Some("UPSTREAM_MALFORMED_RESPONSE"),
        ),
        ("delete", "MAGIC-429", Code::ResourceExhausted, None),
        ("delete", "MAGIC-503", Code::Unavailable, None),
        (
            "delete",
            "MAGIC-RESET",
            Code::Unavailable,
            Some("UPSTREAM_CONNECTION_LOST"),
        ),
    ];
    for (operation, magic, code, reason) in cases {
        let emulator = start_emulator().await;
        let facade = Facade::start(sandbox_settings(&emulator)).await;
        let channel = &facade.channel;
        let ack_id = if operation == "delete" {
            let (status, _) = admin(
                &emulator,
                "refund-queue/messages",
                json!({"text": "eyJpZCI6ImUifQ=="}),
            )
            .await;
            assert_eq!(status, 201);
            Some(pull(channel).await.remove(0).ack_id)
        } else {
            None
        };
        let (status, answer) = admin(
            &emulator,
            "refund-queue/faults",
            json!({"operation": operation, "magic": magic, "times": 5}),
        )
        .await;
        assert!(
            (200..300).contains(&status),
            "{operation} {magic}: {answer}"
        );
        let outcome = match &ack_id {
            Some(ack_id) => refunds(channel)
                .acknowledge_refund_events(pb::AcknowledgeRefundEventsRequest {
                    ack_ids: vec![ack_id.clone()],
                    ..Default::default()
                })
                .await
                .map(|_| ()),
            None => refunds(channel)
                .pull_refund_events(pb::PullRefundEventsRequest::default())
                .await
                .map(|_| ()),
        };
        let status = outcome.expect_err(&format!("{operation} {magic}"));
        assert_eq!(status.code(), code, "{operation} {magic}: {status:?}");
        if let Some(reason) = reason {
            assert_eq!(error_info(&status).reason, reason, "{operation} {magic}");
        }
        if code == Code::ResourceExhausted {
            assert!(retry_delay(&status).is_some(), "{operation} {magic}");
        }
    }
}

#[tokio::test]
async fn a_delete_the_queue_refuses_is_reported_for_its_event_alone() {
    let emulator = start_emulator().await;
    let facade = Facade::start(sandbox_settings(&emulator)).await;
    let channel = &facade.channel;
    for text in ["eyJpZCI6ImUxIn0=", "eyJpZCI6ImUyIn0="] {
        let (status, _) = admin(&emulator, "refund-queue/messages", json!({ "text": text })).await;
        assert_eq!(status, 201);
    }
    let events = pull(channel).await;
    assert_eq!(events.len(), 2);
    let (status, answer) = admin(
        &emulator,
        "refund-queue/faults",
        json!({"operation": "delete", "magic": "MAGIC-500"}),
    )
    .await;
    assert!((200..300).contains(&status), "{answer}");
    let acks: Vec<&str> = events.iter().map(|e| e.ack_id.as_str()).collect();
    let answer = acknowledge(channel, &acks).await;
    assert_eq!(answer.acknowledged.len(), 1, "{answer:?}");
    assert_eq!(answer.failed.len(), 1, "{answer:?}");
    assert_eq!(answer.failed[0].http_status, 500);
    // The failed one is still there: acknowledged on the next try.
    let again = acknowledge(channel, &[&answer.failed[0].ack_id]).await;
    assert_eq!(again.acknowledged, [answer.failed[0].ack_id.clone()]);
}
