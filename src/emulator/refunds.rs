//! Refund events ("clawback v2", store-services-apis.md 2.11) and the emulator's own control
//! surface for them under `/emulator`.
//!
//! An event is the message text of the application's refund queue ([`super::queue`], named
//! by [`super::sas::queue_name`]): base64 (standard alphabet, padded) of the UTF-8 JSON
//! `{"id": guid (new per event), "source": "/Purchase/Refund" | "/Purchase/Chargeback",
//! "type": "ClawbackEventContractV2", "subject": orderId, "time": RFC 3339 UTC,
//! "specversion": "1.0", "datacontenttype": "application/json", "traceparent":
//! "00-<32 hex>-<16 hex>-01", "data": {"lineItemId", "orderId", "productId", "productType",
//! "purchasedDate", "eventDate", "sandboxId", "eventState", "skuId", "recurrenceData"?:
//! {"recurrenceId", "durationIntervalStart", "durationInDays", "consumedDurationInDays",
//! "refundType": "Full"}}}`; every date is RFC 3339 UTC with whole seconds
//! (`2026-01-02T03:04:05Z`), `productType` is the catalog's kind of the product (`Pass` for
//! subscriptions), `sandboxId` the order's sandbox (`RETAIL` unless a grant named another).
//!
//! Three things feed the queue:
//! - `POST /emulator/refunds` (below);
//! - a grant of `9NSANDBOXRVK` ([`super::grant`]): a `Revoked` event, source `Refund`;
//! - a `Refund` recurrence change ([`super::recurrences`]): a `Returned` event, source
//!   `Refund`, with `recurrenceData` (`durationIntervalStart` the recurrence's `startTime`,
//!   `durationInDays` the whole days from it to its `expirationTime` before the refund,
//!   `consumedDurationInDays` the whole days from it to the refund, `refundType` `Full`); its
//!   `orderId` and `lineItemId` are GUIDs derived from the user, the recurrence and the
//!   interval, `purchasedDate` the interval's start.
//!
//! The control surface is not Microsoft's and takes **no authentication**: it is how a test
//! or a developer makes the sandbox Store do what real users and Microsoft do. Bodies are
//! JSON; a refusal is `{"error": code, "field"?: name, "message": text}`.
//! - `POST /emulator/refunds` `{"orderId": required, "userId"?: (default `sandbox-user`),
//!   "lineItemId"?: (default the order's line item), "eventState"?: "Revoked" | "Returned" |
//!   "Refunded" | "ChargebackReversal" (default "Refunded"), "source"?: "Refund" |
//!   "Chargeback" (default "Refund"; "ChargebackReversal" implies and needs "Chargeback")}`:
//!   finds the order among the user's orders as the orders query lists them (seed and granted
//!   orders), changes its line item ([`super::orders`]: `Revoked` -> `Revoked`, `Returned` and
//!   `Refunded` -> `Refunded`, with `orderRefundedDate`; `ChargebackReversal` -> `Purchased`),
//!   and enqueues one event into the sandbox application's queue. 200
//!   `{"event": <event JSON>, "messageId": guid}`; 404 `OrderNotFound` (naming `orderId`) or
//!   `LineItemNotFound`; 400 `InvalidField` naming the bad field.
//! - `POST /emulator/refund-queue/rotate-key`: 204; every SAS issued so far answers 403
//!   `AuthenticationFailed` from then on.
//! - `POST /emulator/refund-queue/messages` `{"text": string}`: enqueues that `MessageText`
//!   as is (at most 64 KiB), for testing clients against messages they cannot decode; 201
//!   `{"messageId": guid}`.
//! - `POST /emulator/refund-queue/faults` `{"operation": "sastoken" | "get" | "delete",
//!   "magic": a magic id ([`super::magic`], e.g. `MAGIC-503`, `MAGIC-429`, `MAGIC-RESET`,
//!   `MAGIC-SLOW-1000`, `MAGIC-MALFORMED`), "times"?: 1 to 1000 (default 1)}`: 204; the next
//!   `times` requests of that operation (`get` covers peek) answer as that magic id answers on
//!   the Store endpoints, before any other check. Faults set for one operation queue up in
//!   the order set.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use serde_json::{json, Value};

use super::b2b::{BadField, JsonBody, StoreUser};
use super::catalog::{product_type, SANDBOX_SKU};
use super::clock::{guid_for, now, now_millis, random_guid, rfc3339};
use super::magic::Magic;
use super::orders::{find_order, LineChange, LineItemState, RETAIL};
use super::queue::{Operation, MAX_MESSAGE_BYTES};
use super::recurrences::Refund;
use super::sas::queue_name;
use super::{EmulatorState, ADMIN_PREFIX, SANDBOX_CLIENT_ID, SANDBOX_USER_ID};

/// The most times one fault may be set for.
const MAX_FAULT_TIMES: i64 = 1000;

/// The emulator's refund control routes.
pub(super) fn routes() -> axum::Router<EmulatorState> {
    use axum::routing::post;
    axum::Router::new()
        .route(&format!("{ADMIN_PREFIX}/refunds"), post(refund))
        .route(
            &format!("{ADMIN_PREFIX}/refund-queue/rotate-key"),
            post(rotate_key),
        )
        .route(
            &format!("{ADMIN_PREFIX}/refund-queue/messages"),
            post(raw_message),
        )
        .route(&format!("{ADMIN_PREFIX}/refund-queue/faults"), post(fault))
}

/// `data.eventState`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum EventState {
    Revoked,
    Returned,
    Refunded,
    ChargebackReversal,
}

impl EventState {
    const ALL: [Self; 4] = [
        Self::Revoked,
        Self::Returned,
        Self::Refunded,
        Self::ChargebackReversal,
    ];

    fn parse(text: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|state| state.as_str().eq_ignore_ascii_case(text))
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Revoked => "Revoked",
            Self::Returned => "Returned",
            Self::Refunded => "Refunded",
            Self::ChargebackReversal => "ChargebackReversal",
        }
    }

    /// How the orders query shows the line item after this event at `at`.
    fn line_change(self, at: i64) -> LineChange {
        match self {
            Self::Revoked => LineChange {
                state: LineItemState::Revoked,
                refunded: Some(at),
            },
            Self::Returned | Self::Refunded => LineChange {
                state: LineItemState::Refunded,
                refunded: Some(at),
            },
            Self::ChargebackReversal => LineChange {
                state: LineItemState::Purchased,
                refunded: None,
            },
        }
    }
}

/// `source`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum EventSource {
    Refund,
    Chargeback,
}

impl EventSource {
    fn parse(text: &str) -> Option<Self> {
        match text.to_ascii_lowercase().as_str() {
            "refund" => Some(Self::Refund),
            "chargeback" => Some(Self::Chargeback),
            _ => None,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Refund => "/Purchase/Refund",
            Self::Chargeback => "/Purchase/Chargeback",
        }
    }
}

/// The line item an event is about.
#[derive(Debug, Clone, PartialEq, Eq)]
struct EventLine {
    order_id: String,
    line_item_id: String,
    product_id: String,
    sku_id: String,
    /// Seconds since the Unix epoch, as every time here.
    purchased: i64,
    sandbox: String,
}

/// The event JSON of `state` from `source` about `line` at `at`, with `recurrenceData` for a
/// subscription's `refund`.
fn event_json(
    source: EventSource,
    state: EventState,
    line: &EventLine,
    refund: Option<&Refund>,
    at: i64,
) -> Value {
    let mut data = json!({
        "lineItemId": line.line_item_id,
        "orderId": line.order_id,
        "productId": line.product_id,
        "productType": product_type(&line.product_id),
        "purchasedDate": rfc3339(line.purchased),
        "eventDate": rfc3339(at),
        "sandboxId": line.sandbox,
        "eventState": state.as_str(),
        "skuId": line.sku_id,
    });
    if let Some(refund) = refund {
        data["recurrenceData"] = json!({
            "recurrenceId": refund.recurrence_id,
            "durationIntervalStart": rfc3339(refund.interval_start),
            "durationInDays": refund.duration_days,
            "consumedDurationInDays": refund.consumed_days(),
            "refundType": "Full",
        });
    }
    let trace_id = format!("{:032x}", fastrand::u128(..).max(1));
    let span_id = format!("{:016x}", fastrand::u64(..).max(1));
    json!({
        "id": random_guid(),
        "source": source.as_str(),
        "type": "ClawbackEventContractV2",
        "subject": line.order_id,
        "time": rfc3339(at),
        "specversion": "1.0",
        "datacontenttype": "application/json",
        "traceparent": format!("00-{trace_id}-{span_id}-01"),
        "data": data,
    })
}

/// Puts `event` into the refund queue of the application `client_id`; the message id.
fn enqueue(state: &EmulatorState, client_id: &str, event: &Value) -> String {
    let text = STANDARD.encode(event.to_string());
    state
        .refund_queue
        .queues
        .enqueue(&queue_name(client_id), text, now_millis())
}

/// Why a refund cannot be made.
#[derive(Debug, Clone, PartialEq, Eq)]
enum RefundRefusal {
    OrderNotFound,
    LineItemNotFound,
}

/// What a refund asks.
#[derive(Debug, Clone)]
struct RefundOrder<'a> {
    client_id: &'a str,
    user_id: &'a str,
    order_id: &'a str,
    line_item_id: Option<&'a str>,
    state: EventState,
    source: EventSource,
}

/// Refunds as `refund` asks at `at`: changes the order's line item and enqueues the event;
/// the event and its message id.
fn refund_order(
    state: &EmulatorState,
    refund: &RefundOrder<'_>,
    at: i64,
) -> Result<(Value, String), RefundRefusal> {
    let order =
        find_order(state, refund.user_id, refund.order_id).ok_or(RefundRefusal::OrderNotFound)?;
    if refund
        .line_item_id
        .is_some_and(|id| !id.eq_ignore_ascii_case(&order.line_item_id))
    {
        return Err(RefundRefusal::LineItemNotFound);
    }
    state.order_changes.set(
        refund.user_id,
        &order.order_id,
        refund.state.line_change(at),
    );
    let line = EventLine {
        order_id: order.order_id,
        line_item_id: order.line_item_id,
        product_id: order.product_id,
        sku_id: order.sku_id,
        purchased: order.purchased,
        sandbox: order.sandbox,
    };
    let event = event_json(refund.source, refund.state, &line, None, at);
    let message_id = enqueue(state, refund.client_id, &event);
    Ok((event, message_id))
}

/// A grant of `9NSANDBOXRVK` to `user` made order `order_id`: revoke it at once.
pub(super) fn revoke_on_grant(state: &EmulatorState, user: &StoreUser, order_id: &str) {
    let refund = RefundOrder {
        client_id: &user.client_id,
        user_id: &user.user_id,
        order_id,
        line_item_id: None,
        state: EventState::Revoked,
        source: EventSource::Refund,
    };
    if refund_order(state, &refund, now()).is_err() {
        tracing::warn!("emulator could not find the order it just granted to revoke it");
    }
}

/// A `Refund` recurrence change of the application `client_id` (in sandbox `sbx`): enqueue
/// its `Returned` event.
pub(super) fn subscription_refunded(
    state: &EmulatorState,
    client_id: &str,
    refund: &Refund,
    sbx: Option<&str>,
) {
    let interval = refund.interval_start.to_string();
    let parts = [refund.user_id.as_str(), &refund.recurrence_id, &interval];
    let line = EventLine {
        order_id: guid_for(&[&["recurrence order"], &parts[..]].concat()),
        line_item_id: guid_for(&[&["recurrence order line"], &parts[..]].concat()),
        product_id: refund.product_id.to_owned(),
        sku_id: SANDBOX_SKU.to_owned(),
        purchased: refund.interval_start,
        sandbox: sbx.unwrap_or(RETAIL).to_owned(),
    };
    let event = event_json(
        EventSource::Refund,
        EventState::Returned,
        &line,
        Some(refund),
        refund.refunded_at,
    );
    enqueue(state, client_id, &event);
}

/// An answer of the control surface.
fn admin_json(status: StatusCode, body: &Value) -> Response {
    (
        status,
        [(
            axum::http::header::CONTENT_TYPE,
            "application/json; charset=utf-8",
        )],
        body.to_string(),
    )
        .into_response()
}

fn invalid_field(bad: &BadField) -> Response {
    admin_json(
        StatusCode::BAD_REQUEST,
        &json!({"error": "InvalidField", "field": bad.field, "message": bad.detail}),
    )
}

/// A body of `POST /emulator/refunds`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RefundBody {
    order_id: String,
    user_id: String,
    line_item_id: Option<String>,
    state: EventState,
    source: EventSource,
}

impl RefundBody {
    fn parse(body: &[u8]) -> Result<Self, BadField> {
        let body = JsonBody::parse(body)?;
        let order_id = body.required_text("orderId")?;
        let user_id = match body.optional::<String>("userId")? {
            Some(user) if user.trim().is_empty() => {
                return Err(BadField::new("userId", "The userId must not be blank."))
            }
            Some(user) => user,
            None => SANDBOX_USER_ID.to_owned(),
        };
        let state = match body.optional::<String>("eventState")? {
            None => EventState::Refunded,
            Some(text) => EventState::parse(&text).ok_or_else(|| {
                BadField::new(
                    "eventState",
                    "Use Revoked, Returned, Refunded or ChargebackReversal.",
                )
            })?,
        };
        let source = match body.optional::<String>("source")? {
            None if state == EventState::ChargebackReversal => EventSource::Chargeback,
            None => EventSource::Refund,
            Some(text) => EventSource::parse(&text)
                .ok_or_else(|| BadField::new("source", "Use Refund or Chargeback."))?,
        };
        if state == EventState::ChargebackReversal && source != EventSource::Chargeback {
            return Err(BadField::new(
                "source",
                "A ChargebackReversal comes from a Chargeback.",
            ));
        }
        Ok(Self {
            order_id,
            user_id,
            line_item_id: body.optional("lineItemId")?,
            state,
            source,
        })
    }
}

/// `POST /emulator/refunds`.
async fn refund(State(state): State<EmulatorState>, body: Bytes) -> Response {
    let asked = match RefundBody::parse(&body) {
        Ok(asked) => asked,
        Err(bad) => return invalid_field(&bad),
    };
    let refund = RefundOrder {
        client_id: SANDBOX_CLIENT_ID,
        user_id: &asked.user_id,
        order_id: &asked.order_id,
        line_item_id: asked.line_item_id.as_deref(),
        state: asked.state,
        source: asked.source,
    };
    match refund_order(&state, &refund, now()) {
        Ok((event, message_id)) => admin_json(
            StatusCode::OK,
            &json!({"event": event, "messageId": message_id}),
        ),
        Err(RefundRefusal::OrderNotFound) => admin_json(
            StatusCode::NOT_FOUND,
            &json!({
                "error": "OrderNotFound",
                "field": "orderId",
                "message": format!(
                    "User {} has no order {}.",
                    printable(&asked.user_id),
                    printable(&asked.order_id)
                ),
            }),
        ),
        Err(RefundRefusal::LineItemNotFound) => admin_json(
            StatusCode::NOT_FOUND,
            &json!({
                "error": "LineItemNotFound",
                "field": "lineItemId",
                "message": format!("Order {} has no such line item.", printable(&asked.order_id)),
            }),
        ),
    }
}

/// An identifier safe to echo: short, printable ASCII only.
fn printable(text: &str) -> String {
    text.chars()
        .take(64)
        .map(|c| if c.is_ascii_graphic() { c } else { '?' })
        .collect()
}

/// `POST /emulator/refund-queue/rotate-key`.
async fn rotate_key(State(state): State<EmulatorState>) -> StatusCode {
    state.refund_queue.keys.rotate();
    StatusCode::NO_CONTENT
}

/// `POST /emulator/refund-queue/messages`.
async fn raw_message(State(state): State<EmulatorState>, body: Bytes) -> Response {
    let text = JsonBody::parse(&body).and_then(|body| body.required::<String>("text"));
    let text = match text {
        Ok(text) if text.len() > MAX_MESSAGE_BYTES => {
            return invalid_field(&BadField::new("text", "At most 64 KiB."))
        }
        Ok(text) => text,
        Err(bad) => return invalid_field(&bad),
    };
    let queue = queue_name(SANDBOX_CLIENT_ID);
    let message_id = state
        .refund_queue
        .queues
        .enqueue(&queue, text, now_millis());
    admin_json(StatusCode::CREATED, &json!({"messageId": message_id}))
}

/// A body of `POST /emulator/refund-queue/faults`.
fn parse_fault(body: &[u8]) -> Result<(Operation, Magic, u32), BadField> {
    let body = JsonBody::parse(body)?;
    let operation = Operation::parse(&body.required_text("operation")?)
        .ok_or_else(|| BadField::new("operation", "Use sastoken, get or delete."))?;
    let magic = Magic::parse(&body.required_text("magic")?)
        .ok_or_else(|| BadField::new("magic", "Not a magic id."))?;
    let times = body.lenient_integer("times")?.unwrap_or(1);
    let times = u32::try_from(times)
        .ok()
        .filter(|_| (1..=MAX_FAULT_TIMES).contains(&times))
        .ok_or_else(|| BadField::new("times", "Use 1 to 1000."))?;
    Ok((operation, magic, times))
}

/// `POST /emulator/refund-queue/faults`.
async fn fault(State(state): State<EmulatorState>, body: Bytes) -> Response {
    match parse_fault(&body) {
        Ok((operation, magic, times)) => {
            state.refund_queue.faults.add(operation, magic, times);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(bad) => invalid_field(&bad),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AT: i64 = 1_790_000_000;

    fn line() -> EventLine {
        EventLine {
            order_id: "o".into(),
            line_item_id: "l".into(),
            product_id: "9NSANDBOXCNS".into(),
            sku_id: SANDBOX_SKU.into(),
            purchased: AT - 86_400,
            sandbox: RETAIL.into(),
        }
    }

    #[test]
    fn events_have_the_cloud_event_shape() {
        let event = event_json(
            EventSource::Chargeback,
            EventState::Revoked,
            &line(),
            None,
            AT,
        );
        assert_eq!(event["source"], "/Purchase/Chargeback");
        assert_eq!(event["type"], "ClawbackEventContractV2");
        assert_eq!(event["subject"], "o");
        assert_eq!(event["specversion"], "1.0");
        assert_eq!(event["time"], rfc3339(AT));
        let traceparent = event["traceparent"].as_str().unwrap();
        assert_eq!(traceparent.len(), 55, "{traceparent}");
        assert!(traceparent.starts_with("00-") && traceparent.ends_with("-01"));
        let data = &event["data"];
        assert_eq!(data["productType"], "Consumable");
        assert_eq!(data["eventState"], "Revoked");
        assert_eq!(data["sandboxId"], "RETAIL");
        assert_eq!(data["purchasedDate"], rfc3339(AT - 86_400));
        assert!(data.get("recurrenceData").is_none());
        let other = event_json(
            EventSource::Chargeback,
            EventState::Revoked,
            &line(),
            None,
            AT,
        );
        assert_ne!(event["id"], other["id"], "one id per event");
    }

    #[test]
    fn subscription_events_carry_recurrence_data() {
        let refund = Refund {
            user_id: "u".into(),
            recurrence_id: "mdr:0:abc:9NSANDBOXPAS".into(),
            product_id: "9NSANDBOXPAS",
            interval_start: AT - 10 * 86_400 - 5,
            duration_days: 30,
            refunded_at: AT,
        };
        let event = event_json(
            EventSource::Refund,
            EventState::Returned,
            &line(),
            Some(&refund),
            AT,
        );
        let data = &event["data"]["recurrenceData"];
        assert_eq!(data["recurrenceId"], "mdr:0:abc:9NSANDBOXPAS");
        assert_eq!(data["durationInDays"], 30);
        assert_eq!(data["consumedDurationInDays"], 10);
        assert_eq!(data["refundType"], "Full");
    }

    #[test]
    fn refund_bodies_default_and_name_the_bad_field() {
        let parse = |body: Value| RefundBody::parse(body.to_string().as_bytes());
        let plain = parse(json!({"orderId": "o"})).unwrap();
        assert_eq!(
            (plain.user_id.as_str(), plain.state, plain.source),
            (SANDBOX_USER_ID, EventState::Refunded, EventSource::Refund)
        );
        let reversal = parse(json!({"orderId": "o", "eventState": "ChargebackReversal"}));
        assert_eq!(reversal.unwrap().source, EventSource::Chargeback);
        for (body, field) in [
            (json!({}), "orderId"),
            (json!({"orderId": " "}), "orderId"),
            (json!({"orderId": "o", "eventState": "Lost"}), "eventState"),
            (json!({"orderId": "o", "source": "Gift"}), "source"),
            (
                json!({"orderId": "o", "eventState": "ChargebackReversal", "source": "Refund"}),
                "source",
            ),
            (json!({"orderId": "o", "userId": 5}), "userId"),
            (json!({"orderId": "o", "lineItemId": 5}), "lineItemId"),
        ] {
            assert_eq!(parse(body.clone()).unwrap_err().field, field, "{body}");
        }
    }

    #[test]
    fn fault_bodies_name_the_bad_field() {
        let parse = |body: Value| parse_fault(body.to_string().as_bytes());
        let (operation, magic, times) =
            parse(json!({"operation": "get", "magic": "MAGIC-503"})).unwrap();
        assert_eq!(
            (operation, magic, times),
            (Operation::Get, Magic::parse("MAGIC-503").unwrap(), 1)
        );
        for (body, field) in [
            (
                json!({"operation": "put", "magic": "MAGIC-503"}),
                "operation",
            ),
            (json!({"operation": "get", "magic": "MAGIC-200"}), "magic"),
            (
                json!({"operation": "get", "magic": "MAGIC-503", "times": 0}),
                "times",
            ),
            (json!({"magic": "MAGIC-503"}), "operation"),
        ] {
            assert_eq!(parse(body.clone()).unwrap_err().field, field, "{body}");
        }
    }
}
