//! The StoreRefunds RPCs against wiremock: the SAS fetched with the facade's token and kept
//! until 5 minutes before it expires, a SAS the queue refuses replaced at once, the queue URL
//! rule, Azure's XML and base64 event text, per-event acknowledgement, and the SAS kept out
//! of every error.

mod common;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD as STANDARD_NO_PAD_URL};
use base64::Engine;
use common::*;
use msstore_facade::proto::msstore::v1 as pb;
use pb::store_refunds_client::StoreRefundsClient;
use serde_json::json;
use tonic::transport::Channel;
use tonic::Code;
use wiremock::matchers::{method, path, path_regex, query_param};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

const SAS_PATH: &str = "/v8.0/b2b/clawback/sastoken";
const SIG: &str = "c2VjcmV0LXNpZ25hdHVyZS0xMjM0NTY3ODkw+/=";

fn client(channel: &Channel) -> StoreRefundsClient<Channel> {
    StoreRefundsClient::new(channel.clone())
}

async fn requests(server: &MockServer) -> Vec<Request> {
    server.received_requests().await.unwrap_or_default()
}

/// A SAS answer naming the harness's queue `refunds`, signed `sig`, expiring `expires_on`.
fn sas_answer(h: &Harness, sig: &str, expires_on: &str) -> serde_json::Value {
    let sig: String = url_encode(sig);
    json!({
        "expiresOn": expires_on,
        "uri": format!("{}/refunds?sv=2021-08-06&se=2099-01-01T00%3A00%3A00Z&sp=rp&sig={sig}", h.refund_queue.uri()),
    })
}

fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            b => format!("%{b:02X}"),
        })
        .collect()
}

/// `expiresOn` `minutes` from now, with minutes precision as the documented example
/// (`2022-12-09T02:13Z`).
fn expires_in_minutes(minutes: u64) -> String {
    let at = std::time::SystemTime::now() + std::time::Duration::from_secs(minutes * 60);
    let iso = prost_types::Timestamp::from(at).to_string();
    format!("{}Z", &iso[..16])
}

async fn mount_sas(h: &Harness, sig: &str, minutes: u64) {
    Mock::given(method("GET"))
        .and(path(SAS_PATH))
        .respond_with(ResponseTemplate::new(200).set_body_json(sas_answer(
            h,
            sig,
            &expires_in_minutes(minutes),
        )))
        .mount(&h.purchase)
        .await;
}

/// The SAS endpoint answers a SAS signed `old-signature-value` once, then one signed [`SIG`].
async fn mount_old_then_new_sas(h: &Harness) {
    Mock::given(method("GET"))
        .and(path(SAS_PATH))
        .respond_with(ResponseTemplate::new(200).set_body_json(sas_answer(
            h,
            "old-signature-value",
            &expires_in_minutes(360),
        )))
        .up_to_n_times(1)
        .mount(&h.purchase)
        .await;
    mount_sas(h, SIG, 360).await;
}

/// `verb` requests to paths matching `at` are refused (403, as Azure does) with the SAS
/// signed `old-signature-value` and answered `accepted` with the one signed [`SIG`].
async fn queue_refuses_the_old_sas(h: &Harness, verb: &str, at: &str, accepted: ResponseTemplate) {
    Mock::given(method(verb))
        .and(path_regex(at))
        .and(query_param("sig", "old-signature-value"))
        .respond_with(azure_error(
            403,
            "AuthenticationFailed",
            "Server failed to authenticate the request. sig=old-signature-value",
        ))
        .mount(&h.refund_queue)
        .await;
    Mock::given(method(verb))
        .and(path_regex(at))
        .and(query_param("sig", SIG))
        .respond_with(accepted)
        .mount(&h.refund_queue)
        .await;
}

fn event_json(id: &str, state: &str) -> serde_json::Value {
    json!({
        "id": id,
        "source": "/Purchase/Refund",
        "type": "ClawbackEventContractV2",
        "subject": "order",
        "time": "2026-11-20T10:00:00Z",
        "specversion": "1.0",
        "datacontenttype": "application/json",
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "data": {
            "lineItemId": "li-1",
            "orderId": "o-1",
            "productId": "9NCONSUMABLE",
            "productType": "UnmanagedConsumable",
            "purchasedDate": "2026-11-01T00:00:00Z",
            "eventDate": "2026-11-20T09:59:00Z",
            "sandboxId": "RETAIL",
            "eventState": state,
            "skuId": "0010"
        }
    })
}

fn queue_message(id: &str, receipt: &str, text: &str) -> String {
    format!(
        "<QueueMessage><MessageId>{id}</MessageId>\
         <InsertionTime>Fri, 20 Nov 2026 10:00:00 GMT</InsertionTime>\
         <ExpirationTime>Fri, 27 Nov 2026 10:00:00 GMT</ExpirationTime>\
         <PopReceipt>{receipt}</PopReceipt>\
         <TimeNextVisible>Fri, 20 Nov 2026 10:00:30 GMT</TimeNextVisible>\
         <DequeueCount>1</DequeueCount><MessageText>{text}</MessageText></QueueMessage>"
    )
}

fn messages_list(messages: &[String]) -> ResponseTemplate {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?><QueueMessagesList>{}</QueueMessagesList>",
        messages.concat()
    );
    ResponseTemplate::new(200)
        .insert_header("content-type", "application/xml")
        .set_body_string(body)
}

fn azure_error(status: u16, code: &str, message: &str) -> ResponseTemplate {
    ResponseTemplate::new(status)
        .insert_header("content-type", "application/xml")
        .insert_header("x-ms-error-code", code)
        .set_body_string(format!(
            "<?xml version=\"1.0\" encoding=\"utf-8\"?><Error><Code>{code}</Code>\
             <Message>{message}\nRequestId:5974b586-0df3-4e2d-ad0c-18e3892bfca2\nTime:2026-11-20T10:00:00.0000000Z</Message></Error>"
        ))
}

async fn mount_messages(h: &Harness, template: ResponseTemplate) {
    Mock::given(method("GET"))
        .and(path("/refunds/messages"))
        .respond_with(template)
        .mount(&h.refund_queue)
        .await;
}

fn pull(max_events: i32) -> pb::PullRefundEventsRequest {
    pb::PullRefundEventsRequest {
        max_events,
        ..Default::default()
    }
}

#[tokio::test]
async fn a_pull_fetches_the_sas_with_the_facade_token_then_reads_typed_events() {
    let h = Harness::start().await;
    mount_sas(&h, SIG, 360).await;
    let text = STANDARD.encode(event_json("e-1", "Revoked").to_string());
    mount_messages(
        &h,
        messages_list(&[
            queue_message(
                "0b7c1e2a-0000-4000-8000-000000000001",
                "AgAAAAMA+/x=",
                &text,
            ),
            queue_message(
                "0b7c1e2a-0000-4000-8000-000000000002",
                "r2",
                "not base64 at all%",
            ),
        ]),
    )
    .await;
    let events = client(&h.facade.channel)
        .pull_refund_events(pull(5))
        .await
        .unwrap()
        .into_inner()
        .events;
    assert_eq!(events.len(), 2);
    let first = &events[0];
    assert_eq!(first.id, "e-1");
    assert_eq!(first.state(), pb::RefundEventState::Revoked);
    assert_eq!(first.order_id, "o-1");
    assert_eq!(first.line_item_id, "li-1");
    assert_eq!(first.product_type, "UnmanagedConsumable");
    assert_eq!(first.dequeue_count, 1);
    assert!(first.time_next_visible.is_some());
    assert_eq!(first.decode_error, "");
    assert!(!first.ack_id.is_empty());
    let second = &events[1];
    assert!(second.decode_error.contains("base64"), "{second:?}");
    assert_eq!(second.message_text, "not base64 at all%");
    assert_ne!(second.ack_id, first.ack_id);

    let sas = requests(&h.purchase).await;
    assert_eq!(sas.len(), 1);
    assert_eq!(sas[0].method.as_str(), "GET");
    assert_eq!(
        sas[0].headers["authorization"].to_str().unwrap(),
        format!("Bearer {TOKEN_PREFIX}-1")
    );
    let got = requests(&h.refund_queue).await;
    assert_eq!(got.len(), 1);
    let query: Vec<(String, String)> = got[0].url.query_pairs().into_owned().collect();
    assert!(query.contains(&("sig".into(), SIG.into())), "{query:?}");
    assert!(
        query.contains(&("numofmessages".into(), "5".into())),
        "{query:?}"
    );
    assert!(
        query.contains(&("visibilitytimeout".into(), "30".into())),
        "{query:?}"
    );
    assert!(got[0].headers.get("authorization").is_none());

    // The SAS is kept: a second pull asks the Store for nothing. It asks the queue for one
    // message (0 means 1), and two are more than it asked for.
    let status = client(&h.facade.channel)
        .pull_refund_events(pull(0))
        .await
        .unwrap_err();
    assert_eq!(
        error_info(&status).reason,
        "UPSTREAM_MALFORMED_RESPONSE",
        "{status:?}"
    );
    assert_eq!(requests(&h.purchase).await.len(), 1);
    let got = requests(&h.refund_queue).await;
    assert_eq!(got.len(), 2);
    assert!(
        got[1].url.query().unwrap().contains("numofmessages=1&"),
        "0 means 1"
    );
}

#[tokio::test]
async fn a_sas_within_five_minutes_of_its_expiry_is_not_kept() {
    let h = Harness::start().await;
    mount_sas(&h, SIG, 4).await;
    mount_messages(&h, messages_list(&[])).await;
    for _ in 0..2 {
        let events = client(&h.facade.channel)
            .pull_refund_events(pull(1))
            .await
            .unwrap()
            .into_inner()
            .events;
        assert!(events.is_empty());
    }
    assert_eq!(
        requests(&h.purchase).await.len(),
        2,
        "fetched for each call"
    );
}

#[tokio::test]
async fn a_sas_the_queue_refuses_is_replaced_at_once() {
    let h = Harness::start().await;
    mount_old_then_new_sas(&h).await;
    queue_refuses_the_old_sas(&h, "GET", "^/refunds/messages$", messages_list(&[])).await;
    client(&h.facade.channel)
        .pull_refund_events(pull(1))
        .await
        .expect("answered with the fresh SAS");
    assert_eq!(requests(&h.purchase).await.len(), 2);
    assert_eq!(requests(&h.refund_queue).await.len(), 2);

    // A queue that refuses every SAS is PERMISSION_DENIED after one fresh SAS, and the
    // signature is in no part of the error.
    let h = Harness::start().await;
    mount_sas(&h, SIG, 360).await;
    mount_messages(
        &h,
        azure_error(
            403,
            "AuthenticationFailed",
            &format!("Signature {SIG} did not match"),
        ),
    )
    .await;
    let status = client(&h.facade.channel)
        .pull_refund_events(pull(1))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert_eq!(requests(&h.purchase).await.len(), 2);
    assert_eq!(requests(&h.refund_queue).await.len(), 2);
    let everything = format!("{status:?} {:?}", error_info(&status));
    assert!(!everything.contains(SIG), "{everything}");
    assert!(
        !everything.contains("c2VjcmV0LXNpZ25hdHVyZS0xMjM0NTY3ODkw"),
        "{everything}"
    );
    assert!(
        !everything.contains("RequestId"),
        "only Azure's first line: {everything}"
    );
    assert_eq!(error_info(&status).reason, "AUTHENTICATION_FAILED");
    // A refusal a new SAS did not cure forces no other SAS within the minute.
    let status = client(&h.facade.channel)
        .pull_refund_events(pull(1))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert_eq!(requests(&h.purchase).await.len(), 2, "no new SAS");
    assert_eq!(requests(&h.refund_queue).await.len(), 3);
}

#[tokio::test]
async fn a_queue_url_the_facade_may_not_follow_is_never_called() {
    let h = Harness::start().await;
    let loopback_elsewhere = format!("{}/refunds?sig=abc", h.purchase.uri());
    for uri in [
        loopback_elsewhere.as_str(),
        "https://attacker.example/refunds?sig=abc",
        "http://acct.queue.core.windows.net/refunds?sig=abc",
        "https://acct.queue.core.windows.net.attacker.example/refunds?sig=abc",
        "not a url",
    ] {
        h.purchase.reset().await;
        Mock::given(method("GET"))
            .and(path(SAS_PATH))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                "expiresOn": expires_in_minutes(360),
                "uri": uri,
            })))
            .mount(&h.purchase)
            .await;
        let status = client(&h.facade.channel)
            .pull_refund_events(pull(1))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Internal, "{uri}: {status:?}");
        assert_eq!(
            error_info(&status).reason,
            "UPSTREAM_MALFORMED_RESPONSE",
            "{uri}"
        );
        assert!(!status.message().contains("attacker"), "{uri}: {status:?}");
        assert!(!status.message().contains("sig=abc"), "{uri}: {status:?}");
        assert!(requests(&h.refund_queue).await.is_empty());
        // The purchase host got the SAS request and nothing else.
        let to_purchase = requests(&h.purchase).await;
        assert!(
            to_purchase.iter().all(|r| r.url.path() == SAS_PATH),
            "{uri}: {to_purchase:?}"
        );
    }
}

#[tokio::test]
async fn sas_failures_map_like_every_store_failure() {
    let h = Harness::start().await;
    Mock::given(method("GET"))
        .and(path(SAS_PATH))
        .respond_with(ResponseTemplate::new(404).set_body_json(
            json!({"code": "NotFound", "message": "no clawback queue is set up for this client"}),
        ))
        .mount(&h.purchase)
        .await;
    let status = client(&h.facade.channel)
        .pull_refund_events(pull(1))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert_eq!(error_info(&status).metadata["http_status"], "404");

    // 503 is retried; a SAS answer without expiresOn is malformed.
    let h = Harness::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(503))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&h.purchase)
        .await;
    Mock::given(method("GET"))
        .and(path(SAS_PATH))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"uri": "https://a.queue.core.windows.net/q?sig=s"})),
        )
        .mount(&h.purchase)
        .await;
    let status = client(&h.facade.channel)
        .pull_refund_events(pull(1))
        .await
        .unwrap_err();
    assert_eq!(
        error_info(&status).reason,
        "UPSTREAM_MALFORMED_RESPONSE",
        "{status:?}"
    );
    assert_eq!(requests(&h.purchase).await.len(), 2, "the 503 was retried");
}

#[tokio::test]
async fn queue_failures_map_and_html_is_not_a_messages_list() {
    let h = Harness::start().await;
    mount_sas(&h, SIG, 360).await;
    mount_messages(
        &h,
        azure_error(404, "QueueNotFound", "The specified queue does not exist."),
    )
    .await;
    let status = client(&h.facade.channel)
        .pull_refund_events(pull(1))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");

    let h = Harness::start().await;
    mount_sas(&h, SIG, 360).await;
    mount_messages(
        &h,
        ResponseTemplate::new(200).set_body_string("<html><body>proxy</body></html>"),
    )
    .await;
    let status = client(&h.facade.channel)
        .pull_refund_events(pull(1))
        .await
        .unwrap_err();
    assert_eq!(
        error_info(&status).reason,
        "UPSTREAM_MALFORMED_RESPONSE",
        "{status:?}"
    );
    assert_eq!(error_info(&status).metadata["host"], "127.0.0.1");
}

#[tokio::test]
async fn pull_and_acknowledge_requests_are_checked_before_any_call() {
    let h = Harness::start().await;
    for max_events in [-1, 33, 1000] {
        let status = client(&h.facade.channel)
            .pull_refund_events(pull(max_events))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{max_events}");
        assert_eq!(bad_fields(&status), ["max_events"], "{max_events}");
    }
    for ack_ids in [
        vec![],
        vec!["not-an-ack-id".to_owned()],
        vec![String::new()],
        vec!["x".to_owned(); 257],
        vec!["x".to_owned(); 50],
        // Made-up ack ids whose message id would make the DELETE name the queue itself.
        vec![STANDARD_NO_PAD_URL.encode("q1\n..\nr")],
        vec![STANDARD_NO_PAD_URL.encode("q1\n.\nr")],
    ] {
        let status = client(&h.facade.channel)
            .acknowledge_refund_events(pb::AcknowledgeRefundEventsRequest {
                ack_ids: ack_ids.clone(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{ack_ids:?}");
        let fields = bad_fields(&status);
        assert!(!fields.is_empty() && fields.len() <= 8, "{status:?}");
        assert!(fields.iter().all(|f| f == "ack_ids"), "{status:?}");
    }
    assert!(requests(&h.purchase).await.is_empty());
    assert!(requests(&h.refund_queue).await.is_empty());
}

/// Pulls `messages` (id, receipt) and returns their ack ids.
async fn pulled_ack_ids(h: &Harness, messages: &[(&str, &str)]) -> Vec<String> {
    let text = STANDARD.encode(event_json("e", "Refunded").to_string());
    let list: Vec<String> = messages
        .iter()
        .map(|(id, receipt)| queue_message(id, receipt, &text))
        .collect();
    Mock::given(method("GET"))
        .and(path("/refunds/messages"))
        .respond_with(messages_list(&list))
        .up_to_n_times(1)
        .mount(&h.refund_queue)
        .await;
    client(&h.facade.channel)
        .pull_refund_events(pull(32))
        .await
        .unwrap()
        .into_inner()
        .events
        .into_iter()
        .map(|e| e.ack_id)
        .collect()
}

async fn mount_delete(h: &Harness, message_id: &str, template: ResponseTemplate) {
    Mock::given(method("DELETE"))
        .and(path(format!("/refunds/messages/{message_id}")))
        .respond_with(template)
        .mount(&h.refund_queue)
        .await;
}

#[tokio::test]
async fn acknowledging_answers_per_event() {
    let h = Harness::start().await;
    mount_sas(&h, SIG, 360).await;
    let acks = pulled_ack_ids(
        &h,
        &[
            ("0b7c1e2a-0000-4000-8000-00000000000a", "AgAA+/x=="),
            ("0b7c1e2a-0000-4000-8000-00000000000b", "r2"),
            ("0b7c1e2a-0000-4000-8000-00000000000c", "r3"),
            ("0b7c1e2a-0000-4000-8000-000000000001", "r4"),
            ("0b7c1e2a-0000-4000-8000-000000000002", "r5"),
        ],
    )
    .await;
    // A 500 for one message, and a 404 that is not Azure's MessageNotFound (a proxy's):
    // failures of those deletes, not expiries and not the call's.
    mount_delete(
        &h,
        "0b7c1e2a-0000-4000-8000-000000000001",
        azure_error(
            500,
            "InternalError",
            "The server encountered an internal error.",
        ),
    )
    .await;
    mount_delete(
        &h,
        "0b7c1e2a-0000-4000-8000-000000000002",
        ResponseTemplate::new(404).set_body_string("<html>not here</html>"),
    )
    .await;
    mount_delete(
        &h,
        "0b7c1e2a-0000-4000-8000-00000000000a",
        ResponseTemplate::new(204),
    )
    .await;
    mount_delete(
        &h,
        "0b7c1e2a-0000-4000-8000-00000000000b",
        azure_error(
            404,
            "MessageNotFound",
            "The specified message does not exist.",
        ),
    )
    .await;
    mount_delete(
        &h,
        "0b7c1e2a-0000-4000-8000-00000000000c",
        azure_error(
            400,
            "PopReceiptMismatch",
            "The specified pop receipt did not match the pop receipt for a dequeued message.",
        ),
    )
    .await;
    let mut ack_ids = acks.clone();
    ack_ids.push(acks[0].clone());
    let answer = client(&h.facade.channel)
        .acknowledge_refund_events(pb::AcknowledgeRefundEventsRequest {
            ack_ids,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.acknowledged, [acks[0].clone()]);
    assert_eq!(answer.expired, [acks[1].clone(), acks[2].clone()]);
    let failed: Vec<(&str, i32, &str)> = answer
        .failed
        .iter()
        .map(|f| (f.ack_id.as_str(), f.http_status, f.code.as_str()))
        .collect();
    assert_eq!(
        failed,
        [
            (acks[3].as_str(), 500, "InternalError"),
            (acks[4].as_str(), 404, "")
        ]
    );

    let deletes: Vec<Request> = requests(&h.refund_queue)
        .await
        .into_iter()
        .filter(|r| r.method.as_str() == "DELETE")
        .collect();
    assert_eq!(deletes.len(), 5, "a repeated ack id is sent once");
    let ok = deletes
        .iter()
        .find(|r| r.url.path() == "/refunds/messages/0b7c1e2a-0000-4000-8000-00000000000a")
        .expect("the delete of 0b7c1e2a-0000-4000-8000-00000000000a");
    let query: Vec<(String, String)> = ok.url.query_pairs().into_owned().collect();
    assert!(
        query.contains(&("popreceipt".into(), "AgAA+/x==".into())),
        "{query:?}"
    );
    assert!(query.contains(&("sig".into(), SIG.into())), "{query:?}");
    assert_eq!(
        requests(&h.purchase).await.len(),
        1,
        "the pull's SAS is kept"
    );
}

#[tokio::test]
async fn acknowledging_fails_whole_only_when_the_queue_fails() {
    let h = Harness::start().await;
    mount_sas(&h, SIG, 360).await;
    let acks = pulled_ack_ids(
        &h,
        &[
            ("0b7c1e2a-0000-4000-8000-000000000001", "r1"),
            ("0b7c1e2a-0000-4000-8000-000000000002", "r2"),
        ],
    )
    .await;
    mount_delete(
        &h,
        "0b7c1e2a-0000-4000-8000-000000000001",
        ResponseTemplate::new(204),
    )
    .await;
    mount_delete(
        &h,
        "0b7c1e2a-0000-4000-8000-000000000002",
        ResponseTemplate::new(503),
    )
    .await;
    let status = client(&h.facade.channel)
        .acknowledge_refund_events(pb::AcknowledgeRefundEventsRequest {
            ack_ids: acks,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(retry_delay(&status).is_some());
    let to_m2 = requests(&h.refund_queue)
        .await
        .into_iter()
        .filter(|r| r.url.path() == "/refunds/messages/0b7c1e2a-0000-4000-8000-000000000002")
        .count();
    assert!(to_m2 > 1, "a 503 is retried");

    // The queue itself missing is not an expired event.
    let h = Harness::start().await;
    mount_sas(&h, SIG, 360).await;
    let acks = pulled_ack_ids(&h, &[("0b7c1e2a-0000-4000-8000-000000000001", "r1")]).await;
    mount_delete(
        &h,
        "0b7c1e2a-0000-4000-8000-000000000001",
        azure_error(404, "QueueNotFound", "The specified queue does not exist."),
    )
    .await;
    let status = client(&h.facade.channel)
        .acknowledge_refund_events(pb::AcknowledgeRefundEventsRequest {
            ack_ids: acks,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
}

#[tokio::test]
async fn acknowledging_with_a_refused_sas_fetches_a_fresh_one() {
    let h = Harness::start().await;
    mount_old_then_new_sas(&h).await;
    let acks = pulled_ack_ids(
        &h,
        &[
            ("0b7c1e2a-0000-4000-8000-000000000001", "r1"),
            ("0b7c1e2a-0000-4000-8000-000000000002", "r2"),
        ],
    )
    .await;
    queue_refuses_the_old_sas(
        &h,
        "DELETE",
        "^/refunds/messages/",
        ResponseTemplate::new(204),
    )
    .await;
    let answer = client(&h.facade.channel)
        .acknowledge_refund_events(pb::AcknowledgeRefundEventsRequest {
            ack_ids: acks.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.acknowledged, acks);
    assert_eq!(
        requests(&h.purchase).await.len(),
        2,
        "one fresh SAS for both deletes"
    );
}
