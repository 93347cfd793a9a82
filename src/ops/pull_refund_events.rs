//! `StoreRefunds/PullRefundEvents` -> the refund queue's SAS (kept), then
//! `GET {queue}/messages?numofmessages=N&visibilitytimeout=30` (`store-services-apis.md` 2.11):
//! up to 32 refund events, each decoded from its base64 JSON text into a typed event.

use std::sync::Arc;

use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine;
use serde::Deserialize;
use serde_json::Value;

use super::refunds::{with_queue, AckId, QueueGet};
use super::store_json::{lenient, timestamp};
use crate::api::validation::{acting_tenant, Checks, Tenants};
use crate::api::{exchange, Attempts, Backends, Operation, Outcome, StoreOperation, Upstream};
use crate::auth::TenantId;
use crate::error::ApiError;
use crate::proto::msstore::v1 as pb;
use crate::upstream::queue::{QueueMessage, MAX_MESSAGES};
use crate::upstream::{Host, UpstreamError};

/// Takes refund events from the tenant's refund queue.
#[derive(Debug)]
pub struct PullRefundEvents;

/// A validated pull.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Pull {
    count: u8,
    tenant: TenantId,
}

impl Operation for PullRefundEvents {
    type Request = pb::PullRefundEventsRequest;
    type Response = pb::PullRefundEventsResponse;
    type Prepared = Pull;
    /// Two pulls take different messages: never shared.
    const COALESCE: bool = false;
    const UPSTREAM: Upstream = Upstream::RefundQueue;

    fn validate(request: Self::Request, tenants: &Tenants) -> Result<Pull, ApiError> {
        let mut checks = Checks::default();
        let tenant = checks.tenant("tenant_id", &request.tenant_id);
        let count = match u8::try_from(request.max_events) {
            Ok(0) => 1,
            Ok(count) if count <= MAX_MESSAGES => count,
            _ => {
                checks.violation(
                    "max_events",
                    format!("{} is not 1 to 32 (0 means 1)", request.max_events),
                );
                0
            }
        };
        checks.finish()?;
        Ok(Pull {
            count,
            tenant: acting_tenant(tenant, tenants)?,
        })
    }

    async fn fetch(backends: Backends, pull: Pull, attempts: Arc<Attempts>) -> Outcome<Self::Response> {
        let answer = with_queue(&backends, &pull.tenant, &attempts, |queue| {
            let get = QueueGet {
                queue,
                count: pull.count,
            };
            let (backends, attempts) = (&backends, &attempts);
            async move { exchange::<QueueGet>(backends, &get, attempts).await }
        })
        .await?;
        if answer.value.len() > usize::from(pull.count) {
            // More than asked for: not the queue's answer to this request.
            return Err(ApiError::upstream(
                QueueGet::ERRORS,
                UpstreamError::Malformed {
                    host: backends.store.host(Host::RefundQueue).name().clone(),
                    http_status: answer.http_status,
                    ids: Box::new(answer.ids),
                    expected: "at most the number of messages asked for",
                },
            ));
        }
        Ok(answer.map(|messages| pb::PullRefundEventsResponse {
            events: messages.iter().map(event).collect(),
        }))
    }
}

/// Base64 as the Store may write it: either alphabet, padded or not (Microsoft's library
/// decodes base64url, Azure's own clients write standard base64).
const LENIENT_BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The event of one message: decoded, or with `decode_error` saying why not.
pub fn event(message: &QueueMessage) -> pb::RefundEvent {
    let queued = pb::RefundEvent {
        ack_id: AckId::encode(message),
        dequeue_count: i32::try_from(message.dequeue_count).unwrap_or(i32::MAX),
        insertion_time: message.insertion_time.map(Into::into),
        expiration_time: message.expiration_time.map(Into::into),
        time_next_visible: message.time_next_visible.map(Into::into),
        ..Default::default()
    };
    match decode(&message.text) {
        Ok(raw) => raw.typed(queued),
        Err(why) => pb::RefundEvent {
            decode_error: why.to_owned(),
            message_text: message.text.clone(),
            ..queued
        },
    }
}

/// The event JSON in a message text.
fn decode(text: &str) -> Result<RawEvent, &'static str> {
    let text: String = text
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .map(|c| match c {
            '-' => '+',
            '_' => '/',
            c => c,
        })
        .collect();
    let bytes = LENIENT_BASE64
        .decode(text)
        .map_err(|_| "the message text is not base64")?;
    let json: Value =
        serde_json::from_slice(&bytes).map_err(|_| "the message text is not base64 of JSON")?;
    if !json.is_object() {
        return Err("the message's JSON is not an object");
    }
    let raw: RawEvent =
        serde_json::from_value(json).map_err(|_| "the message's JSON is not an event")?;
    if raw.id.as_deref().is_none_or(str::is_empty) {
        return Err("the event has no id");
    }
    Ok(raw)
}

/// The event JSON of GDK 2026 ("ClawbackEventContractV2"), every field lenient.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct RawEvent {
    #[serde(deserialize_with = "lenient")]
    id: Option<String>,
    #[serde(deserialize_with = "lenient")]
    source: Option<String>,
    #[serde(rename = "type", deserialize_with = "lenient")]
    kind: Option<String>,
    #[serde(deserialize_with = "lenient")]
    subject: Option<String>,
    #[serde(deserialize_with = "lenient")]
    time: Option<String>,
    #[serde(deserialize_with = "lenient")]
    specversion: Option<String>,
    #[serde(deserialize_with = "lenient")]
    traceparent: Option<String>,
    #[serde(deserialize_with = "lenient")]
    datacontenttype: Option<String>,
    #[serde(deserialize_with = "lenient")]
    data: Option<RawData>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct RawData {
    #[serde(deserialize_with = "lenient")]
    line_item_id: Option<String>,
    #[serde(deserialize_with = "lenient")]
    order_id: Option<String>,
    #[serde(deserialize_with = "lenient")]
    product_id: Option<String>,
    #[serde(deserialize_with = "lenient")]
    product_type: Option<String>,
    #[serde(deserialize_with = "lenient")]
    purchased_date: Option<String>,
    #[serde(deserialize_with = "lenient")]
    event_date: Option<String>,
    #[serde(deserialize_with = "lenient")]
    sandbox_id: Option<String>,
    #[serde(deserialize_with = "lenient")]
    event_state: Option<String>,
    #[serde(deserialize_with = "lenient")]
    sku_id: Option<String>,
    #[serde(deserialize_with = "lenient")]
    recurrence_data: Option<RawRecurrence>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct RawRecurrence {
    #[serde(deserialize_with = "lenient")]
    recurrence_id: Option<String>,
    #[serde(deserialize_with = "lenient")]
    duration_interval_start: Option<String>,
    duration_in_days: Value,
    consumed_duration_in_days: Value,
    #[serde(deserialize_with = "lenient")]
    refund_type: Option<String>,
}

impl RawEvent {
    /// The typed event, on top of what the queue said of its message.
    fn typed(self, queued: pb::RefundEvent) -> pb::RefundEvent {
        let data = self.data.unwrap_or_default();
        let at = |text: &Option<String>| text.as_deref().and_then(timestamp);
        let state_text = data.event_state.unwrap_or_default();
        pb::RefundEvent {
            id: self.id.unwrap_or_default(),
            source: self.source.unwrap_or_default(),
            r#type: self.kind.unwrap_or_default(),
            state: state(&state_text) as i32,
            state_text,
            order_id: data.order_id.unwrap_or_default(),
            line_item_id: data.line_item_id.unwrap_or_default(),
            product_id: data.product_id.unwrap_or_default(),
            sku_id: data.sku_id.unwrap_or_default(),
            product_type: data.product_type.unwrap_or_default(),
            sandbox_id: data.sandbox_id.unwrap_or_default(),
            purchased_date: at(&data.purchased_date),
            event_date: at(&data.event_date),
            time: at(&self.time),
            recurrence_data: data.recurrence_data.map(RawRecurrence::typed),
            subject: self.subject.unwrap_or_default(),
            specversion: self.specversion.unwrap_or_default(),
            traceparent: self.traceparent.unwrap_or_default(),
            datacontenttype: self.datacontenttype.unwrap_or_default(),
            ..queued
        }
    }
}

impl RawRecurrence {
    fn typed(self) -> pb::RecurrenceRefund {
        let refund_type_text = self.refund_type.unwrap_or_default();
        pb::RecurrenceRefund {
            recurrence_id: self.recurrence_id.unwrap_or_default(),
            duration_interval_start: self.duration_interval_start.as_deref().and_then(timestamp),
            duration_in_days: days(&self.duration_in_days),
            consumed_duration_in_days: days(&self.consumed_duration_in_days),
            refund_type: refund_type(&refund_type_text) as i32,
            refund_type_text,
        }
    }
}

/// A number of days, as a number or a numeric string; a fraction is cut, anything else 0.
fn days(value: &Value) -> i32 {
    let days = match value {
        Value::Number(number) => number.as_f64(),
        Value::String(text) => text.trim().parse::<f64>().ok(),
        _ => None,
    };
    // `as` saturates at the bounds of i32, and a NaN (not possible from JSON) is 0.
    days.map_or(0, |days| days.trunc() as i32)
}

fn state(text: &str) -> pb::RefundEventState {
    use pb::RefundEventState as State;
    match text {
        "" => State::Unspecified,
        t if t.eq_ignore_ascii_case("Revoked") => State::Revoked,
        t if t.eq_ignore_ascii_case("Returned") => State::Returned,
        t if t.eq_ignore_ascii_case("Refunded") => State::Refunded,
        t if t.eq_ignore_ascii_case("ChargebackReversal") => State::ChargebackReversal,
        _ => State::Other,
    }
}

fn refund_type(text: &str) -> pb::RefundType {
    match text {
        "" => pb::RefundType::Unspecified,
        t if t.eq_ignore_ascii_case("Full") => pb::RefundType::Full,
        t if t.eq_ignore_ascii_case("Partial") => pb::RefundType::Partial,
        _ => pb::RefundType::Other,
    }
}

#[cfg(test)]
mod tests {
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    use serde_json::json;

    use super::*;

    fn message(text: String) -> QueueMessage {
        QueueMessage {
            message_id: "0c2e5b1a-7d3f-4e8a-9b6c-1f2e3d4c5b6a".into(),
            pop_receipt: "r1".into(),
            dequeue_count: 3,
            text,
            ..QueueMessage::default()
        }
    }

    fn gdk_event() -> Value {
        json!({
            "id": "0f5e6c2a-1b43-4b5d-9a3e-2c1d7f0e9b11",
            "source": "/Purchase/Refund",
            "type": "ClawbackEventContractV2",
            "subject": "s",
            "time": "2025-10-01T12:00:00.1234567Z",
            "specversion": "1.0",
            "datacontenttype": "application/json",
            "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "data": {
                "lineItemId": "li-1",
                "orderId": "o-1",
                "productId": "9NSANDBOXPAS",
                "productType": "Pass",
                "purchasedDate": "2025-09-01T00:00:00Z",
                "eventDate": "2025-10-01T11:59:00Z",
                "sandboxId": "RETAIL",
                "eventState": "ChargebackReversal",
                "skuId": "0010",
                "recurrenceData": {
                    "recurrenceId": "mdr:0:abc:9NSANDBOXPAS",
                    "durationIntervalStart": "2025-09-01T00:00:00Z",
                    "durationInDays": "30",
                    "consumedDurationInDays": 12.7,
                    "refundType": "Partial"
                },
                "futureField": true
            }
        })
    }

    #[test]
    fn events_are_typed_from_base64_json_in_either_alphabet() {
        let json = gdk_event().to_string();
        for text in [STANDARD.encode(&json), URL_SAFE_NO_PAD.encode(&json)] {
            let event = event(&message(text));
            assert_eq!(event.decode_error, "");
            assert_eq!(event.id, "0f5e6c2a-1b43-4b5d-9a3e-2c1d7f0e9b11");
            assert_eq!(event.state(), pb::RefundEventState::ChargebackReversal);
            assert_eq!(event.state_text, "ChargebackReversal");
            assert_eq!(event.order_id, "o-1");
            assert_eq!(event.line_item_id, "li-1");
            assert_eq!(event.sandbox_id, "RETAIL");
            assert_eq!(event.r#type, "ClawbackEventContractV2");
            assert_eq!(event.dequeue_count, 3);
            assert_eq!(event.time.as_ref().map(|t| t.nanos), Some(123_456_700));
            let recurrence = event.recurrence_data.expect("recurrence data");
            assert_eq!(recurrence.duration_in_days, 30);
            assert_eq!(recurrence.consumed_duration_in_days, 12);
            assert_eq!(recurrence.refund_type(), pb::RefundType::Partial);
            assert_eq!(AckId::decode(&event.ack_id).unwrap().pop_receipt, "r1");
        }
    }

    #[test]
    fn every_state_of_the_2026_docs_is_known() {
        for (text, state) in [
            ("Revoked", pb::RefundEventState::Revoked),
            ("Returned", pb::RefundEventState::Returned),
            ("Refunded", pb::RefundEventState::Refunded),
            ("ChargebackReversal", pb::RefundEventState::ChargebackReversal),
            ("Chargeback", pb::RefundEventState::Other),
            ("", pb::RefundEventState::Unspecified),
        ] {
            assert_eq!(super::state(text), state, "{text}");
        }
    }

    #[test]
    fn unreadable_messages_say_why_and_can_still_be_acknowledged() {
        for (text, why) in [
            ("%%%".to_owned(), "not base64"),
            (STANDARD.encode("not json"), "not base64 of JSON"),
            (STANDARD.encode("[1]"), "not an object"),
            (STANDARD.encode(r#"{"data":{}}"#), "no id"),
            (STANDARD.encode(r#"{"id":""}"#), "no id"),
        ] {
            let event = event(&message(text.clone()));
            assert!(event.decode_error.contains(why), "{text}: {}", event.decode_error);
            assert_eq!(event.message_text, text);
            assert!(AckId::decode(&event.ack_id).is_some());
            assert_eq!(event.id, "");
        }
    }

    #[test]
    fn wrongly_typed_fields_are_dropped_not_the_event() {
        let text = STANDARD.encode(
            json!({"id": "e", "time": 5, "data": {"orderId": 7, "recurrenceData": "x", "eventState": "Revoked"}})
                .to_string(),
        );
        let event = event(&message(text));
        assert_eq!(event.decode_error, "");
        assert_eq!(event.order_id, "");
        assert!(event.recurrence_data.is_none());
        assert_eq!(event.state(), pb::RefundEventState::Revoked);
    }
}
