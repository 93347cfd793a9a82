//! What every B2B Store operation of the emulator shares, collections and purchase alike: the
//! JSON body read field by field, the key the request carries (a beneficiary's
//! UserCollectionsId or a `b2bKey` UserPurchaseId), magic ids, the bearer token, the key
//! checks, the rate limit ([`super::fgrl`]) and opaque continuation tokens.
//!
//! Every request goes through [`admit`], in order: `Content-Type: application/json` (else 415);
//! the body (400 `InvalidParameter` naming the first bad field); magic ids; the bearer token
//! (401 `PartnerAadTicketRequired` without one, `AuthenticationTokenInvalid` for a bad or
//! key-creation one); the key (401 `AuthenticationTokenInvalid` when not an unexpired key of
//! this emulator for the request's host, `InconsistentClientId` when its `clientId` is not the
//! token's `appid`); the rate limit (429). One operation is counted when all pass.

use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::de::DeserializeOwned;
use serde_json::{json, Map, Value};

use super::clock::now;
use super::connection::ConnectionControl;
use super::entra::bearer_ticket;
use super::jwt;
use super::keys::{check_key, key_claim};
use super::magic::Magic;
use super::{fgrl, store_answer, EmulatorState};
use crate::upstream::Host;

/// A request field that is missing or wrong: the 400 `InvalidParameter` naming it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct BadField {
    pub(super) field: &'static str,
    pub(super) detail: &'static str,
}

impl BadField {
    pub(super) fn new(field: &'static str, detail: &'static str) -> Self {
        Self { field, detail }
    }

    pub(super) fn answer(&self, request: &HeaderMap) -> Response {
        store_answer::invalid_parameter(request, self.field, self.detail)
    }
}

/// A JSON body read field by field, so that a refusal names the field and never echoes what
/// it holds (a key may sit anywhere).
pub(super) struct JsonBody(Map<String, Value>);

impl JsonBody {
    pub(super) fn parse(body: &[u8]) -> Result<Self, BadField> {
        match serde_json::from_slice(body) {
            Ok(Value::Object(fields)) => Ok(Self(fields)),
            _ => Err(BadField::new("body", "The body must be a JSON object.")),
        }
    }

    /// `name`, absent or `null` being `None`.
    pub(super) fn optional<T: DeserializeOwned>(
        &self,
        name: &'static str,
    ) -> Result<Option<T>, BadField> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(value) => T::deserialize(value)
                .map(Some)
                .map_err(|_| BadField::new(name, "The parameter has the wrong type.")),
        }
    }

    pub(super) fn required<T: DeserializeOwned>(&self, name: &'static str) -> Result<T, BadField> {
        self.optional(name)?
            .ok_or_else(|| BadField::new(name, "The parameter is required."))
    }

    /// A string that must be present and not blank.
    pub(super) fn required_text(&self, name: &'static str) -> Result<String, BadField> {
        let text: String = self.required(name)?;
        if text.trim().is_empty() {
            return Err(BadField::new(name, "The parameter is required."));
        }
        Ok(text)
    }

    /// An integer sent as a JSON number or as a numeric string (the Store documents `pageSize`
    /// and `extensionTimeInDays` as strings; Microsoft's library sends numbers).
    pub(super) fn lenient_integer(&self, name: &'static str) -> Result<Option<i64>, BadField> {
        let bad = || BadField::new(name, "The parameter must be an integer.");
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(number)) => number.as_i64().map(Some).ok_or_else(bad),
            Some(Value::String(text)) => text.trim().parse().map(Some).map_err(|_| bad()),
            Some(_) => Err(bad()),
        }
    }
}

/// The `b2bKey` of a purchase request (a UserPurchaseId) and its `payload` claim, read
/// unverified so that a magic payload fails the request before any credential is checked.
#[derive(Debug, Clone)]
pub(super) struct PurchaseKey {
    pub(super) key: String,
    pub(super) payload: Option<String>,
}

impl PurchaseKey {
    pub(super) fn read(body: &JsonBody) -> Result<Self, BadField> {
        let key = body.required_text("b2bKey")?;
        let payload = jwt::decode_unverified(&key)
            .ok()
            .and_then(|claims| key_claim(&claims, "payload").map(str::to_owned));
        Ok(Self { key, payload })
    }
}

/// Who a request acts for: the key's `userId` and the application that holds the key.
#[derive(Debug, Clone)]
pub(super) struct StoreUser {
    pub(super) user_id: String,
    pub(super) client_id: String,
}

/// A request body of a B2B operation.
pub(super) trait StoreRequest: Sized {
    /// The host whose keys the request must carry.
    const HOST: Host;
    /// The parameter a magic id is named by when it fails the request.
    const MAGIC_PARAMETER: &'static str;
    /// The values that may be magic.
    fn magic_ids(&self) -> Vec<&str>;
    /// The user's key (UserCollectionsId or UserPurchaseId).
    fn key(&self) -> &str;
}

/// What every B2B operation checks first, in order (see the module docs). `parsed` is the
/// request read from the body (and path). The request and its user, or the answer that ends
/// the exchange.
pub(super) async fn admit<R: StoreRequest>(
    state: &EmulatorState,
    connection: &ConnectionControl,
    headers: &HeaderMap,
    parsed: Result<R, BadField>,
) -> Result<(R, StoreUser), Response> {
    store_answer::require_json(headers).map_err(|refusal| *refusal)?;
    let request = parsed.map_err(|bad| bad.answer(headers))?;
    let ids = request.magic_ids();
    if let Some(answer) = magic_answer(ids, R::MAGIC_PARAMETER, headers, connection).await {
        return Err(answer);
    }
    let user = authorize(state, headers, R::HOST, request.key()).map_err(|refusal| *refusal)?;
    Ok((request, user))
}

/// Checks the bearer token, the key and the rate limit; one operation is counted when all
/// pass.
fn authorize(
    state: &EmulatorState,
    request: &HeaderMap,
    host: Host,
    key: &str,
) -> Result<StoreUser, Box<Response>> {
    let ticket = bearer_ticket(request)?;
    let claims = check_key(host, key, &ticket.appid)
        .map_err(|(inner, detail)| Box::new(store_answer::unauthorized(request, inner, detail)))?;
    let user = StoreUser {
        user_id: key_claim(&claims, "userId").unwrap_or_default().to_owned(),
        client_id: ticket.appid,
    };
    state
        .rate_limiter
        .admit(&user.user_id, &user.client_id, now())
        .map_err(|retry_after| Box::new(fgrl::throttled(request, retry_after)))?;
    Ok(user)
}

/// The answer of the first magic id among `ids`, if one fails on purpose (`parameter` names
/// where it was; a 429 says the rate limiter's text).
async fn magic_answer<'a>(
    ids: impl IntoIterator<Item = &'a str>,
    parameter: &str,
    request: &HeaderMap,
    connection: &ConnectionControl,
) -> Option<Response> {
    let magic = ids.into_iter().find_map(Magic::parse)?;
    magic
        .apply_throttling_as(request, parameter, connection, &fgrl::message())
        .await
}

/// The continuation token of the page that starts at `offset` of the listing `fingerprint`
/// names: base64 of `{"checkSatisfactionIndex": offset, "query": fingerprint}`.
pub(super) fn continuation_token(offset: usize, fingerprint: &str) -> String {
    let text = json!({"checkSatisfactionIndex": offset, "query": fingerprint}).to_string();
    STANDARD.encode(text)
}

/// Where the page of `token` starts, if the token belongs to the listing `fingerprint` of
/// `listed` entries (else 400 naming `continuationToken`).
pub(super) fn page_offset(
    token: &str,
    fingerprint: &str,
    listed: usize,
) -> Result<usize, BadField> {
    let refused = || {
        BadField::new(
            "continuationToken",
            "The continuation token is invalid or belongs to another query.",
        )
    };
    let bytes = STANDARD.decode(token.trim()).map_err(|_| refused())?;
    let parsed: Value = serde_json::from_slice(&bytes).map_err(|_| refused())?;
    let offset = parsed["checkSatisfactionIndex"]
        .as_u64()
        .and_then(|o| usize::try_from(o).ok())
        .filter(|o| (1..listed).contains(o));
    match offset {
        Some(offset) if parsed["query"] == fingerprint => Ok(offset),
        _ => Err(refused()),
    }
}

/// One page of `listed` starting where `token` says, of at most `page_size` entries, and the
/// token of the next page when more follow.
pub(super) fn page<T: Clone>(
    listed: &[T],
    token: Option<&str>,
    fingerprint: &str,
    page_size: usize,
) -> Result<(Vec<T>, Option<String>), BadField> {
    let offset = match token {
        Some(token) => page_offset(token, fingerprint, listed.len())?,
        None => 0,
    };
    let end = listed.len().min(offset + page_size);
    let next = (end < listed.len()).then(|| continuation_token(end, fingerprint));
    Ok((listed[offset..end].to_vec(), next))
}

/// The 200 answer of a page: `{"items": [...], "continuationToken"?: string}`.
pub(super) fn page_answer(
    headers: &HeaderMap,
    items: Vec<Value>,
    next: Option<String>,
) -> Response {
    let mut answer = json!({ "items": items });
    if let Some(next) = next {
        answer["continuationToken"] = next.into();
    }
    store_answer::json_answer(StatusCode::OK, headers, &answer)
}

/// A purchase query: its key (whose `payload` claim is its only magic place, named
/// `b2bKey`), its continuation token and what else the query asks (`T`).
#[derive(Debug)]
pub(super) struct PurchaseQuery<T> {
    pub(super) key: PurchaseKey,
    pub(super) continuation_token: Option<String>,
    pub(super) asks: T,
}

impl<T> PurchaseQuery<T> {
    /// Reads `b2bKey`, `continuationToken` and `sbx` of `body`, and the rest with `asks`.
    pub(super) fn read(
        body: &[u8],
        asks: impl FnOnce(&JsonBody) -> Result<T, BadField>,
    ) -> Result<Self, BadField> {
        let body = JsonBody::parse(body)?;
        let key = PurchaseKey::read(&body)?;
        let asks = asks(&body)?;
        body.optional::<String>("sbx")?;
        Ok(Self {
            key,
            continuation_token: body.optional("continuationToken")?,
            asks,
        })
    }
}

impl<T> StoreRequest for PurchaseQuery<T> {
    const HOST: Host = Host::Purchase;
    const MAGIC_PARAMETER: &'static str = "b2bKey";

    fn magic_ids(&self) -> Vec<&str> {
        self.key.payload.as_deref().into_iter().collect()
    }

    fn key(&self) -> &str {
        &self.key.key
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continuation_tokens_belong_to_one_query() {
        let token = continuation_token(2, "abc");
        assert_eq!(page_offset(&token, "abc", 5), Ok(2));
        for (token, fingerprint, listed) in [
            (token.as_str(), "abd", 5),
            (token.as_str(), "abc", 2),
            ("not base64!", "abc", 5),
            ("e30=", "abc", 5),
        ] {
            let refused = page_offset(token, fingerprint, listed).unwrap_err();
            assert_eq!(refused.field, "continuationToken");
        }
    }

    #[test]
    fn pages_walk_the_listing_once() {
        let listed: Vec<u32> = (0..5).collect();
        let (first, next) = page(&listed, None, "f", 2).unwrap();
        assert_eq!(first, [0, 1]);
        let (second, next) = page(&listed, next.as_deref(), "f", 2).unwrap();
        assert_eq!(second, [2, 3]);
        let (last, next) = page(&listed, next.as_deref(), "f", 2).unwrap();
        assert_eq!((last, next), (vec![4], None));
    }

    #[test]
    fn integers_come_as_numbers_or_numeric_strings() {
        let body =
            JsonBody::parse(br#"{"a": 5, "b": "-3", "c": "x", "d": 1.5, "e": true}"#).unwrap();
        assert_eq!(body.lenient_integer("a"), Ok(Some(5)));
        assert_eq!(body.lenient_integer("b"), Ok(Some(-3)));
        assert_eq!(body.lenient_integer("z"), Ok(None));
        for bad in ["c", "d", "e"] {
            assert_eq!(body.lenient_integer(bad).unwrap_err().field, bad);
        }
    }
}
