//! The refund event queue ("clawback v2", store-services-apis.md 2.11): an imitation of the
//! Azure Storage Queue REST API (Get Messages, Peek Messages, Delete Message, service version
//! 2021-08-06) under `/queue`, opened by the SAS of [`super::sas`].
//!
//! - `GET /queue/{queue}/messages?<sas>&numofmessages=N&visibilitytimeout=V` (N 1 to 32,
//!   default 1; V 1 to 604800 seconds, default 30): up to N visible messages, oldest first;
//!   each one becomes invisible until now + V, gets a new pop receipt and its `DequeueCount`
//!   goes up by one. With `peekonly=true`: the visible messages as they are, without
//!   `PopReceipt` and `TimeNextVisible` (and `visibilitytimeout` is ignored). 200,
//!   `Content-Type: application/xml`:
//!   `<?xml version="1.0" encoding="utf-8"?><QueueMessagesList><QueueMessage><MessageId>guid</MessageId><InsertionTime>Fri, 09 Oct 2009 21:04:30 GMT</InsertionTime><ExpirationTime>…</ExpirationTime><PopReceipt>…</PopReceipt><TimeNextVisible>…</TimeNextVisible><DequeueCount>1</DequeueCount><MessageText>…</MessageText></QueueMessage>…</QueueMessagesList>`,
//!   or `<QueueMessagesList />` when none is visible. Text is XML-escaped; characters XML 1.0
//!   cannot carry are written as U+FFFD. A pop receipt is 28 characters of base64 that always
//!   hold `+`, `/` and `=`, so that a client must percent-encode it.
//! - `DELETE /queue/{queue}/messages/{messageid}?<sas>&popreceipt=R`: 204 when the message
//!   exists and R is its current pop receipt, even if its visibility timeout has lapsed, as
//!   long as nobody dequeued it again; 400 `PopReceiptMismatch` when it was dequeued again
//!   since (or never); 404 `MessageNotFound` when there is no such message (deleted, expired);
//!   400 `MissingRequiredQueryParameter` without `popreceipt`.
//! - Every request needs a SAS (`sv`, `se`, `sp`, `sig`) of the current key for this queue,
//!   not expired, whose `sp` holds `r` (peek) or `p` (get, delete): else 403
//!   `AuthenticationFailed`. With a good SAS, a queue the emulator does not have is 404
//!   `QueueNotFound` (only the queues a SAS was issued for or an event went to exist). A
//!   `numofmessages` or `visibilitytimeout` that is not an integer is 400
//!   `InvalidQueryParameterValue`, one out of range 400 `OutOfRangeQueryParameterValue`.
//! - Messages expire seven days after insertion (`ExpirationTime`) and vanish then.
//! - Every answer has `x-ms-request-id` (a GUID), `x-ms-version: 2021-08-06` and `Date`; an
//!   error has `x-ms-error-code: <Code>`, `Content-Type: application/xml` and the body
//!   `<?xml version="1.0" encoding="utf-8"?><Error><Code>Code</Code><Message>text\nRequestId:guid\nTime:2024-05-01T12:00:00.0000000Z</Message>…</Error>`,
//!   with Azure's extra elements (`AuthenticationErrorDetail`, `QueryParameterName`, …).
//! - A fault set with `POST /emulator/refund-queue/faults` (operation `get`, which covers
//!   peek too, or `delete`) answers first, as its magic id answers on the Store endpoints.
//!
//! Each queue's messages live in the emulator's memory; operations take the time as an
//! argument so that tests can move it.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use axum::extract::{ConnectInfo, Path, RawQuery, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, DATE};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;

use super::clock::{azure_timestamp, now_millis, random_guid, rfc1123};
use super::connection::ConnectionControl;
use super::magic::Magic;
use super::sas::{Access, QueryParams, SasKeys, SAS_VERSION};
use super::{EmulatorState, REFUND_QUEUE_PREFIX};

/// How long a message lives after insertion, in milliseconds.
const MESSAGE_TTL_MS: i64 = 7 * 86_400 * 1000;
/// `numofmessages` when absent, and its largest value.
const DEFAULT_MESSAGES: i64 = 1;
const MAX_MESSAGES: i64 = 32;
/// `visibilitytimeout` when absent, and its largest value, in seconds.
const DEFAULT_VISIBILITY_SECONDS: i64 = 30;
const MAX_VISIBILITY_SECONDS: i64 = 7 * 86_400;
/// The largest message text Azure takes, in bytes.
pub(super) const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// `GET /queue/{queue}/messages` and `DELETE /queue/{queue}/messages/{messageid}`.
pub(super) fn routes() -> axum::Router<EmulatorState> {
    axum::Router::new()
        .route(
            &format!("{REFUND_QUEUE_PREFIX}/{{queue}}/messages"),
            axum::routing::get(get_messages),
        )
        .route(
            &format!("{REFUND_QUEUE_PREFIX}/{{queue}}/messages/{{message_id}}"),
            axum::routing::delete(delete_message),
        )
}

/// One message of a queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Message {
    pub(super) id: String,
    pub(super) text: String,
    /// Milliseconds since the Unix epoch, as every time here.
    pub(super) inserted: i64,
    pub(super) expires: i64,
    pub(super) visible_at: i64,
    /// The receipt of the last dequeue; `None` until the first.
    pub(super) pop_receipt: Option<String>,
    pub(super) dequeue_count: u32,
}

/// Why a delete fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum DeleteRefusal {
    QueueNotFound,
    MessageNotFound,
    PopReceiptMismatch,
}

/// Every queue's messages, oldest first.
#[derive(Debug, Default)]
pub(super) struct Queues {
    queues: Mutex<HashMap<String, Vec<Message>>>,
}

impl Queues {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<Message>>> {
        self.queues
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The messages of `queue` that have not expired at `now`, if the queue exists.
    fn with_queue<T>(
        &self,
        queue: &str,
        now: i64,
        act: impl FnOnce(&mut Vec<Message>) -> T,
    ) -> Option<T> {
        let mut queues = self.lock();
        let messages = queues.get_mut(queue)?;
        messages.retain(|m| m.expires > now);
        Some(act(messages))
    }

    /// Makes `queue` exist (it starts empty).
    pub(super) fn create(&self, queue: &str) {
        self.lock().entry(queue.to_owned()).or_default();
    }

    /// Adds `text` to `queue` (created if need be) at `now`, visible at once; its id.
    pub(super) fn enqueue(&self, queue: &str, text: String, now: i64) -> String {
        let id = random_guid();
        self.lock()
            .entry(queue.to_owned())
            .or_default()
            .push(Message {
                id: id.clone(),
                text,
                inserted: now,
                expires: now + MESSAGE_TTL_MS,
                visible_at: now,
                pop_receipt: None,
                dequeue_count: 0,
            });
        id
    }

    /// Dequeues up to `count` visible messages of `queue`, hiding them for `visibility_ms`.
    pub(super) fn get(
        &self,
        queue: &str,
        count: usize,
        visibility_ms: i64,
        now: i64,
    ) -> Option<Vec<Message>> {
        self.with_queue(queue, now, |messages| {
            messages
                .iter_mut()
                .filter(|m| m.visible_at <= now)
                .take(count)
                .map(|m| {
                    m.visible_at = now + visibility_ms;
                    m.pop_receipt = Some(new_pop_receipt());
                    m.dequeue_count = m.dequeue_count.saturating_add(1);
                    m.clone()
                })
                .collect()
        })
    }

    /// Up to `count` visible messages of `queue`, unchanged.
    pub(super) fn peek(&self, queue: &str, count: usize, now: i64) -> Option<Vec<Message>> {
        self.with_queue(queue, now, |messages| {
            messages
                .iter()
                .filter(|m| m.visible_at <= now)
                .take(count)
                .cloned()
                .collect()
        })
    }

    /// Deletes message `id` of `queue` if `pop_receipt` is its current receipt.
    pub(super) fn delete(
        &self,
        queue: &str,
        id: &str,
        pop_receipt: &str,
        now: i64,
    ) -> Result<(), DeleteRefusal> {
        self.with_queue(queue, now, |messages| {
            let index = messages
                .iter()
                .position(|m| m.id.eq_ignore_ascii_case(id))
                .ok_or(DeleteRefusal::MessageNotFound)?;
            if messages[index].pop_receipt.as_deref() != Some(pop_receipt) {
                return Err(DeleteRefusal::PopReceiptMismatch);
            }
            messages.remove(index);
            Ok(())
        })
        .unwrap_or(Err(DeleteRefusal::QueueNotFound))
    }
}

/// A new pop receipt: base64 of 19 bytes whose first three always encode as `++//` and whose
/// length makes `==` padding, the rest random.
fn new_pop_receipt() -> String {
    let mut bytes = vec![0xFB, 0xEF, 0xFF];
    bytes.extend((0..16).map(|_| fastrand::u8(..)));
    STANDARD.encode(bytes)
}

/// The queue operations a fault can be set for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Operation {
    /// `GET /purchase/v8.0/b2b/clawback/sastoken`.
    SasToken,
    /// Get and peek messages.
    Get,
    /// Delete a message.
    Delete,
}

impl Operation {
    pub(super) fn parse(text: &str) -> Option<Self> {
        match text {
            "sastoken" => Some(Self::SasToken),
            "get" => Some(Self::Get),
            "delete" => Some(Self::Delete),
            _ => None,
        }
    }

    /// The parameter a `MAGIC-400` fault names.
    fn parameter(self) -> &'static str {
        match self {
            Self::SasToken => "sastoken",
            Self::Get => "numofmessages",
            Self::Delete => "popreceipt",
        }
    }
}

/// Faults to answer with, per operation, in the order set: (magic, times left).
#[derive(Debug, Default)]
pub(super) struct Faults {
    pending: Mutex<HashMap<Operation, VecDeque<(Magic, u32)>>>,
}

impl Faults {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Operation, VecDeque<(Magic, u32)>>> {
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The next `times` requests of `operation` (after those already set) answer as `magic`.
    pub(super) fn add(&self, operation: Operation, magic: Magic, times: u32) {
        if times > 0 {
            self.lock()
                .entry(operation)
                .or_default()
                .push_back((magic, times));
        }
    }

    /// The fault the next request of `operation` answers with, if any (and one time less).
    pub(super) fn take(&self, operation: Operation) -> Option<Magic> {
        let mut pending = self.lock();
        let faults = pending.get_mut(&operation)?;
        let (magic, left) = faults.front_mut()?;
        let magic = *magic;
        *left -= 1;
        if *left == 0 {
            faults.pop_front();
        }
        Some(magic)
    }
}

/// The refund queues, their signing key and their faults.
#[derive(Debug, Default)]
pub(super) struct RefundQueue {
    pub(super) keys: SasKeys,
    pub(super) queues: Queues,
    pub(super) faults: Faults,
}

impl RefundQueue {
    /// The answer of the next fault of `operation`, if one is set and does not just delay.
    pub(super) async fn fault_answer(
        &self,
        operation: Operation,
        request: &HeaderMap,
        connection: &ConnectionControl,
    ) -> Option<Response> {
        let magic = self.faults.take(operation)?;
        magic
            .apply(request, operation.parameter(), connection)
            .await
    }
}

/// An Azure Storage error.
#[derive(Debug, Clone, PartialEq, Eq)]
struct AzureError {
    status: StatusCode,
    code: &'static str,
    message: &'static str,
    /// Further elements of `<Error>`, as Azure adds them.
    details: Vec<(&'static str, String)>,
}

impl AzureError {
    fn new(status: StatusCode, code: &'static str, message: &'static str) -> Self {
        Self {
            status,
            code,
            message,
            details: Vec::new(),
        }
    }

    fn with(mut self, element: &'static str, text: impl Into<String>) -> Self {
        self.details.push((element, text.into()));
        self
    }

    fn authentication_failed(detail: &'static str) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "AuthenticationFailed",
            "Server failed to authenticate the request. Make sure the value of Authorization header is formed correctly including the signature.",
        )
        .with("AuthenticationErrorDetail", detail)
    }

    fn queue_not_found() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "QueueNotFound",
            "The specified queue does not exist.",
        )
    }

    fn delete_refused(refusal: DeleteRefusal) -> Self {
        match refusal {
            DeleteRefusal::QueueNotFound => Self::queue_not_found(),
            DeleteRefusal::MessageNotFound => Self::new(
                StatusCode::NOT_FOUND,
                "MessageNotFound",
                "The specified message does not exist.",
            ),
            DeleteRefusal::PopReceiptMismatch => Self::new(
                StatusCode::BAD_REQUEST,
                "PopReceiptMismatch",
                "The specified pop receipt did not match the pop receipt for a dequeued message.",
            ),
        }
    }
}

/// `x-ms-request-id`, `x-ms-version`, `Date` and Azure's `Cache-Control` and `Server`.
fn azure_response(status: StatusCode, request_id: &str, body: String) -> Response {
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    for (name, value) in [
        ("x-ms-request-id", request_id.to_owned()),
        ("x-ms-version", SAS_VERSION.to_owned()),
        (DATE.as_str(), rfc1123(now_millis())),
        (CACHE_CONTROL.as_str(), "no-cache".to_owned()),
        (
            "server",
            "Windows-Azure-Queue/1.0 Microsoft-HTTPAPI/2.0".to_owned(),
        ),
    ] {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            headers.insert(name, value);
        }
    }
    if status != StatusCode::NO_CONTENT {
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/xml"));
    }
    response
}

const XML_DECLARATION: &str = r#"<?xml version="1.0" encoding="utf-8"?>"#;

impl IntoResponse for AzureError {
    fn into_response(self) -> Response {
        let request_id = random_guid();
        let mut body = format!(
            "{XML_DECLARATION}<Error><Code>{}</Code><Message>{}\nRequestId:{request_id}\nTime:{}</Message>",
            self.code,
            xml_text(self.message),
            azure_timestamp(now_millis()),
        );
        for (element, text) in &self.details {
            body.push_str(&format!("<{element}>{}</{element}>", xml_text(text)));
        }
        body.push_str("</Error>");
        let mut response = azure_response(self.status, &request_id, body);
        if let Ok(code) = HeaderValue::from_str(self.code) {
            response.headers_mut().insert("x-ms-error-code", code);
        }
        response
    }
}

/// `text` as XML character data: markup escaped, characters XML 1.0 cannot carry as U+FFFD.
pub(super) fn xml_text(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&apos;"),
            '\t' | '\n' | '\r' => escaped.push(c),
            c if c < ' ' || c == '\u{FFFE}' || c == '\u{FFFF}' => escaped.push('\u{FFFD}'),
            c => escaped.push(c),
        }
    }
    escaped
}

/// The `QueueMessagesList` of `messages`; `dequeued` adds `PopReceipt` and `TimeNextVisible`.
fn messages_xml(messages: &[Message], dequeued: bool) -> String {
    if messages.is_empty() {
        return format!("{XML_DECLARATION}<QueueMessagesList />");
    }
    let mut body = format!("{XML_DECLARATION}<QueueMessagesList>");
    for message in messages {
        body.push_str("<QueueMessage>");
        body.push_str(&format!("<MessageId>{}</MessageId>", message.id));
        body.push_str(&format!(
            "<InsertionTime>{}</InsertionTime><ExpirationTime>{}</ExpirationTime>",
            rfc1123(message.inserted),
            rfc1123(message.expires)
        ));
        if dequeued {
            body.push_str(&format!(
                "<PopReceipt>{}</PopReceipt><TimeNextVisible>{}</TimeNextVisible>",
                xml_text(message.pop_receipt.as_deref().unwrap_or_default()),
                rfc1123(message.visible_at)
            ));
        }
        body.push_str(&format!(
            "<DequeueCount>{}</DequeueCount><MessageText>{}</MessageText>",
            message.dequeue_count,
            xml_text(&message.text)
        ));
        body.push_str("</QueueMessage>");
    }
    body.push_str("</QueueMessagesList>");
    body
}

/// The integer query parameter `name` in `min..=max`, `default` when absent.
fn integer_parameter(
    params: &QueryParams,
    name: &'static str,
    (min, max, default): (i64, i64, i64),
) -> Result<i64, AzureError> {
    let Some(text) = params.get(name) else {
        return Ok(default);
    };
    let shown: String = text.chars().take(32).collect();
    let value = text.trim().parse::<i64>().map_err(|_| {
        AzureError::new(
            StatusCode::BAD_REQUEST,
            "InvalidQueryParameterValue",
            "Value for one of the query parameters specified in the request URI is invalid.",
        )
        .with("QueryParameterName", name)
        .with("QueryParameterValue", shown.clone())
        .with("Reason", "The value is not an integer.")
    })?;
    if !(min..=max).contains(&value) {
        return Err(AzureError::new(
            StatusCode::BAD_REQUEST,
            "OutOfRangeQueryParameterValue",
            "One of the query parameters specified in the request URI is outside the permissible range.",
        )
        .with("QueryParameterName", name)
        .with("QueryParameterValue", shown)
        .with("MinimumAllowed", min.to_string())
        .with("MaximumAllowed", max.to_string()));
    }
    Ok(value)
}

/// The SAS check of a request to `queue`.
fn authorize(
    state: &EmulatorState,
    queue: &str,
    params: &QueryParams,
    access: Access,
) -> Result<(), AzureError> {
    let now = now_millis().div_euclid(1000);
    state
        .refund_queue
        .keys
        .check(queue, params, access, now)
        .map_err(AzureError::authentication_failed)
}

/// `GET /queue/{queue}/messages` (get or, with `peekonly=true`, peek).
async fn get_messages(
    State(state): State<EmulatorState>,
    ConnectInfo(connection): ConnectInfo<ConnectionControl>,
    Path(queue): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    if let Some(answer) = state
        .refund_queue
        .fault_answer(Operation::Get, &headers, &connection)
        .await
    {
        return answer;
    }
    let params = QueryParams::parse(query.as_deref());
    match list_messages(&state, &queue, &params) {
        Ok(body) => azure_response(StatusCode::OK, &random_guid(), body),
        Err(error) => error.into_response(),
    }
}

fn list_messages(
    state: &EmulatorState,
    queue: &str,
    params: &QueryParams,
) -> Result<String, AzureError> {
    let peek = params
        .get("peekonly")
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let access = if peek { Access::Read } else { Access::Process };
    authorize(state, queue, params, access)?;
    let count = integer_parameter(params, "numofmessages", (1, MAX_MESSAGES, DEFAULT_MESSAGES))?;
    let count = usize::try_from(count).unwrap_or(1);
    let now = now_millis();
    let queues = &state.refund_queue.queues;
    let listed = if peek {
        queues.peek(queue, count, now)
    } else {
        let visibility = integer_parameter(
            params,
            "visibilitytimeout",
            (1, MAX_VISIBILITY_SECONDS, DEFAULT_VISIBILITY_SECONDS),
        )?;
        queues.get(queue, count, visibility * 1000, now)
    };
    let messages = listed.ok_or_else(AzureError::queue_not_found)?;
    Ok(messages_xml(&messages, !peek))
}

/// `DELETE /queue/{queue}/messages/{messageid}`.
async fn delete_message(
    State(state): State<EmulatorState>,
    ConnectInfo(connection): ConnectInfo<ConnectionControl>,
    Path((queue, message_id)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    if let Some(answer) = state
        .refund_queue
        .fault_answer(Operation::Delete, &headers, &connection)
        .await
    {
        return answer;
    }
    let params = QueryParams::parse(query.as_deref());
    let deleted = authorize(&state, &queue, &params, Access::Process).and_then(|()| {
        let receipt = params.get("popreceipt").ok_or_else(|| {
            AzureError::new(
                StatusCode::BAD_REQUEST,
                "MissingRequiredQueryParameter",
                "A query parameter that's mandatory for this request is not specified.",
            )
            .with("QueryParameterName", "popreceipt")
        })?;
        state
            .refund_queue
            .queues
            .delete(&queue, &message_id, receipt, now_millis())
            .map_err(AzureError::delete_refused)
    });
    match deleted {
        Ok(()) => azure_response(StatusCode::NO_CONTENT, &random_guid(), String::new()),
        Err(error) => error.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AT: i64 = 1_790_000_000_000;
    const SECOND: i64 = 1000;

    fn queue_with(texts: &[&str]) -> Queues {
        let queues = Queues::default();
        for (n, text) in texts.iter().enumerate() {
            queues.enqueue("q", (*text).to_owned(), AT + i64::try_from(n).unwrap());
        }
        queues
    }

    #[test]
    fn get_hides_messages_for_the_visibility_timeout_and_counts_dequeues() {
        let queues = queue_with(&["a", "b", "c"]);
        let first = queues.get("q", 2, 30 * SECOND, AT + 10).unwrap();
        let texts: Vec<&str> = first.iter().map(|m| m.text.as_str()).collect();
        assert_eq!(texts, ["a", "b"], "oldest first");
        assert!(first.iter().all(|m| m.dequeue_count == 1));
        assert_eq!(first[0].visible_at, AT + 10 + 30 * SECOND);
        let rest = queues.get("q", 32, 30 * SECOND, AT + 20).unwrap();
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].text, "c");
        assert!(queues.get("q", 32, SECOND, AT + 30).unwrap().is_empty());
        assert!(queues.peek("q", 32, AT + 30).unwrap().is_empty());
        let again = queues.get("q", 32, SECOND, AT + 10 + 30 * SECOND).unwrap();
        assert_eq!(again.len(), 2, "a and b are visible again");
        assert!(again.iter().all(|m| m.dequeue_count == 2));
        assert_ne!(again[0].pop_receipt, first[0].pop_receipt);
        assert_eq!(queues.get("nope", 1, SECOND, AT), None);
    }

    #[test]
    fn peek_changes_nothing() {
        let queues = queue_with(&["a"]);
        let peeked = queues.peek("q", 1, AT).unwrap();
        assert_eq!(peeked, queues.peek("q", 1, AT).unwrap());
        assert_eq!(
            (peeked[0].dequeue_count, peeked[0].pop_receipt.clone()),
            (0, None)
        );
        assert_eq!(queues.get("q", 1, SECOND, AT).unwrap().len(), 1);
    }

    #[test]
    fn delete_needs_the_current_pop_receipt_even_after_the_timeout_lapsed() {
        let queues = queue_with(&["a", "b"]);
        let first = queues.get("q", 1, SECOND, AT).unwrap().remove(0);
        let old = first.pop_receipt.clone().unwrap();
        assert!(old.contains('+') && old.contains('/') && old.ends_with("=="));
        // The timeout lapsed and nobody dequeued it again: the receipt still deletes it.
        let later = AT + 5 * SECOND;
        let second = queues.get("q", 1, SECOND, AT + 1).unwrap().remove(0);
        assert_eq!(
            queues.delete("q", &second.id, &old, later),
            Err(DeleteRefusal::PopReceiptMismatch),
            "another message's receipt"
        );
        assert_eq!(queues.delete("q", &first.id, &old, later), Ok(()));
        assert_eq!(
            queues.delete("q", &first.id, &old, later),
            Err(DeleteRefusal::MessageNotFound)
        );
        // Dequeued again: the old receipt no longer deletes it.
        let receipt = second.pop_receipt.unwrap();
        let again = queues.get("q", 1, SECOND, later).unwrap().remove(0);
        assert_eq!(again.id, second.id);
        assert_eq!(
            queues.delete("q", &second.id, &receipt, later),
            Err(DeleteRefusal::PopReceiptMismatch)
        );
        let current = again.pop_receipt.unwrap();
        assert_eq!(
            queues.delete("q", &second.id.to_uppercase(), &current, later),
            Ok(())
        );
        assert_eq!(
            queues.delete("other", &second.id, &current, later),
            Err(DeleteRefusal::QueueNotFound)
        );
    }

    #[test]
    fn a_never_dequeued_message_has_no_receipt_to_match() {
        let queues = queue_with(&["a"]);
        let id = queues.peek("q", 1, AT).unwrap().remove(0).id;
        assert_eq!(
            queues.delete("q", &id, "", AT),
            Err(DeleteRefusal::PopReceiptMismatch)
        );
    }

    #[test]
    fn messages_vanish_seven_days_after_insertion() {
        let queues = queue_with(&["a"]);
        let expires = AT + MESSAGE_TTL_MS;
        assert_eq!(queues.peek("q", 1, expires - 1).unwrap().len(), 1);
        assert!(queues.peek("q", 1, expires).unwrap().is_empty());
        let id = queues.enqueue("q", "b".into(), expires);
        let receipt = queues.get("q", 1, SECOND, expires).unwrap()[0]
            .pop_receipt
            .clone()
            .unwrap();
        assert_eq!(
            queues.delete("q", &id, &receipt, expires + MESSAGE_TTL_MS),
            Err(DeleteRefusal::MessageNotFound)
        );
    }

    #[test]
    fn faults_answer_in_order_as_many_times_as_set() {
        let faults = Faults::default();
        let unavailable = Magic::parse("MAGIC-503").unwrap();
        let reset = Magic::parse("MAGIC-RESET").unwrap();
        faults.add(Operation::Get, unavailable, 2);
        faults.add(Operation::Get, reset, 1);
        faults.add(Operation::Delete, reset, 0);
        assert_eq!(faults.take(Operation::SasToken), None);
        assert_eq!(faults.take(Operation::Delete), None);
        assert_eq!(faults.take(Operation::Get), Some(unavailable));
        assert_eq!(faults.take(Operation::Get), Some(unavailable));
        assert_eq!(faults.take(Operation::Get), Some(reset));
        assert_eq!(faults.take(Operation::Get), None);
    }

    #[test]
    fn xml_is_azures_shape_and_escaped() {
        let queues = queue_with(&["<a&'\"\u{1}>"]);
        let peeked = messages_xml(&queues.peek("q", 1, AT).unwrap(), false);
        assert!(peeked.starts_with(XML_DECLARATION));
        assert!(
            peeked.contains("<MessageText>&lt;a&amp;&apos;&quot;\u{FFFD}&gt;</MessageText>"),
            "{peeked}"
        );
        assert!(!peeked.contains("PopReceipt") && !peeked.contains("TimeNextVisible"));
        assert!(peeked.contains("<DequeueCount>0</DequeueCount>"));
        let got = messages_xml(&queues.get("q", 1, SECOND, AT).unwrap(), true);
        assert!(got.contains("<PopReceipt>") && got.contains("<TimeNextVisible>"));
        assert!(got.contains(" GMT</InsertionTime>"), "{got}");
        assert_eq!(
            messages_xml(&[], true),
            format!("{XML_DECLARATION}<QueueMessagesList />")
        );
    }

    #[test]
    fn integer_parameters_are_checked_against_their_range() {
        let range = (1, 32, 1);
        let read = |query: &str| {
            integer_parameter(&QueryParams::parse(Some(query)), "numofmessages", range)
        };
        assert_eq!(read(""), Ok(1));
        assert_eq!(read("NumOfMessages=32"), Ok(32));
        assert_eq!(
            read("numofmessages=33").unwrap_err().code,
            "OutOfRangeQueryParameterValue"
        );
        assert_eq!(
            read("numofmessages=0").unwrap_err().code,
            "OutOfRangeQueryParameterValue"
        );
        assert_eq!(
            read("numofmessages=x").unwrap_err().code,
            "InvalidQueryParameterValue"
        );
    }
}
