//! Store ID keys: `POST /collections/v6.0/b2b/keys/renew` and `POST /purchase/v6.0/b2b/keys/renew`,
//! and [`StoreKeySpec`], which mints keys the emulator accepts (for `sandbox-key` and tests).
//!
//! A renewal checks, in order: the body names `serviceTicket` and `key` (400
//! `InvalidParameter`); a magic `payload` claim in the key; the ticket is a valid emulator
//! access token (401 `PartnerAadTicketRequired` when empty, `AuthenticationTokenInvalid`
//! otherwise); the key was issued by the emulator for the host it was sent to and has not
//! expired (401 `AuthenticationTokenInvalid`); the key's `clientId` is the ticket's `appid`
//! (401 `InconsistentClientId`). Then a new key keeps `clientId`, `userId` and `payload` and
//! lives 30 days. No key or ticket is ever logged or echoed.

use std::time::Duration;

use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;
use url::Url;

use super::clock::now;
use super::connection::ConnectionControl;
use super::entra::verify_ticket;
use super::jwt::{self, Claims};
use super::magic::Magic;
use super::store_answer::{self, inner_code};
use super::{host_prefix, EmulatorState, SANDBOX_CLIENT_ID};
use crate::auth::key_audience;
use crate::upstream::Host;

/// Namespace of the Store's own key claims.
const CLAIMS: &str = "http://schemas.microsoft.com/marketplace/2015/08/claims/key/";
/// The `userId` claim of a minted key unless another is chosen.
pub const SANDBOX_USER_ID: &str = "sandbox-user";
/// How long a key lives (current documentation: 30 days).
pub const KEY_LIFETIME: Duration = Duration::from_secs(30 * 24 * 3600);

fn claim(name: &str) -> String {
    format!("{CLAIMS}{name}")
}

/// The Store's own claim `name` of a key (`userId`, `clientId`, `payload`, ...).
pub(super) fn key_claim<'c>(claims: &'c Claims, name: &str) -> Option<&'c str> {
    jwt::text(claims, &claim(name))
}

/// A Store ID key to mint: what `msstore-facade sandbox-key` prints, and what tests renew.
#[derive(Debug, Clone)]
pub struct StoreKeySpec {
    host: Host,
    client_id: String,
    user_id: String,
    payload: String,
    issued_at: i64,
    lifetime: Duration,
    refresh_base: Option<Url>,
}

impl StoreKeySpec {
    /// A key for `host`, for the sandbox application, issued now, living 30 days. Only the
    /// collections and purchase hosts have keys: a key "for" another host has no `aud` and
    /// is refused everywhere.
    pub fn new(host: Host) -> Self {
        Self {
            host,
            client_id: SANDBOX_CLIENT_ID.to_owned(),
            user_id: SANDBOX_USER_ID.to_owned(),
            payload: "sandbox".to_owned(),
            issued_at: now(),
            lifetime: KEY_LIFETIME,
            refresh_base: None,
        }
    }

    /// The `clientId` claim (the renewing token's `appid` must match it).
    pub fn client_id(mut self, client_id: impl Into<String>) -> Self {
        self.client_id = client_id.into();
        self
    }

    /// The `userId` claim: the publisher user id the client passed when it asked the Store for
    /// the key.
    pub fn user_id(mut self, user_id: impl Into<String>) -> Self {
        self.user_id = user_id.into();
        self
    }

    /// The opaque `payload` claim; a magic id here makes renewals fail on purpose.
    pub fn payload(mut self, payload: impl Into<String>) -> Self {
        self.payload = payload.into();
        self
    }

    /// When the key was issued, in seconds since the Unix epoch (`iat`, `nbf`).
    pub fn issued_at(mut self, unix_seconds: i64) -> Self {
        self.issued_at = unix_seconds;
        self
    }

    /// How long the key lives from `iat` to `exp`.
    pub fn lifetime(mut self, lifetime: Duration) -> Self {
        self.lifetime = lifetime;
        self
    }

    /// The emulator whose renew URL goes into `refreshUri` (informational: the facade never
    /// calls it). Without one, the default standalone emulator address is used.
    pub fn refresh_base(mut self, base: Url) -> Self {
        self.refresh_base = Some(base);
        self
    }

    /// The key: a JWT the emulator accepts until it expires.
    pub fn mint(&self) -> String {
        let audience = key_audience(self.host).unwrap_or_default();
        let base = self
            .refresh_base
            .as_ref()
            .map_or(super::DEFAULT_BASE_URL, Url::as_str)
            .trim_end_matches('/');
        let refresh_uri = format!("{base}{}/v6.0/b2b/keys/renew", host_prefix(self.host));
        let lifetime = i64::try_from(self.lifetime.as_secs()).unwrap_or(i64::MAX);
        jwt::encode(&json!({
            "iss": audience,
            "aud": audience,
            "iat": self.issued_at,
            "nbf": self.issued_at,
            "exp": self.issued_at.saturating_add(lifetime),
            claim("clientId"): self.client_id,
            claim("userId"): self.user_id,
            claim("payload"): self.payload,
            claim("refreshUri"): refresh_uri,
        }))
    }
}

/// The renew request body; missing fields are told apart from empty ones.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RenewBody {
    service_ticket: Option<String>,
    key: Option<String>,
}

/// `POST /collections/v6.0/b2b/keys/renew` and `POST /purchase/v6.0/b2b/keys/renew`.
pub(super) fn routes() -> axum::Router<EmulatorState> {
    axum::Router::new()
        .route(
            &format!("{}/v6.0/b2b/keys/renew", host_prefix(Host::Collections)),
            axum::routing::post(renew_collections),
        )
        .route(
            &format!("{}/v6.0/b2b/keys/renew", host_prefix(Host::Purchase)),
            axum::routing::post(renew_purchase),
        )
}

/// `POST /collections/v6.0/b2b/keys/renew`.
async fn renew_collections(
    state: State<EmulatorState>,
    connection: ConnectInfo<ConnectionControl>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    renew(Host::Collections, state, connection, headers, body).await
}

/// `POST /purchase/v6.0/b2b/keys/renew`.
async fn renew_purchase(
    state: State<EmulatorState>,
    connection: ConnectInfo<ConnectionControl>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    renew(Host::Purchase, state, connection, headers, body).await
}

async fn renew(
    host: Host,
    State(state): State<EmulatorState>,
    ConnectInfo(connection): ConnectInfo<ConnectionControl>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(refusal) = store_answer::require_json(&headers) {
        return *refusal;
    }
    let (ticket, key) = match parse_body(&body) {
        Ok(fields) => fields,
        Err(field) => {
            return store_answer::invalid_parameter(&headers, field, "The parameter is required.")
        }
    };
    let magic = jwt::decode_unverified(&key)
        .ok()
        .and_then(|claims| key_claim(&claims, "payload").and_then(Magic::parse));
    if let Some(magic) = magic {
        if let Some(answer) = magic.apply(&headers, "key", &connection).await {
            return answer;
        }
    }
    match check(host, &ticket, &key) {
        Ok(old) => {
            let renewed = renewed_key(host, &old, &state.refresh_base);
            store_answer::json_answer(StatusCode::OK, &headers, &json!({ "key": renewed }))
        }
        Err((inner, detail)) => store_answer::unauthorized(&headers, inner, detail),
    }
}

/// The ticket and the key, or the name of the first missing one.
fn parse_body(body: &[u8]) -> Result<(String, String), &'static str> {
    let parsed: RenewBody = serde_json::from_slice(body).map_err(|_| "body")?;
    let ticket = parsed.service_ticket.ok_or("serviceTicket")?;
    let key = parsed.key.filter(|k| !k.is_empty()).ok_or("key")?;
    Ok((ticket, key))
}

/// A 401 refusal: the Store's inner code and a detail that echoes nothing of the request.
pub(super) type Refusal = (&'static str, &'static str);

/// The old key's claims, if the ticket and the key pass every check.
fn check(host: Host, ticket: &str, key: &str) -> Result<Claims, Refusal> {
    if ticket.trim().is_empty() {
        return Err((
            inner_code::PARTNER_AAD_TICKET_REQUIRED,
            "A service ticket (Entra access token) is required.",
        ));
    }
    let ticket = verify_ticket(ticket).map_err(|_| {
        (
            inner_code::AUTHENTICATION_TOKEN_INVALID,
            "Authentication token supplied is invalid or expired.",
        )
    })?;
    check_key(host, key, &ticket.appid)
}

/// The claims of a Store ID `key` sent to `host` on behalf of the application `appid`: issued
/// here for that host, not expired, and minted for that application (else the 401 inner code
/// and detail the Store answers).
pub(super) fn check_key(host: Host, key: &str, appid: &str) -> Result<Claims, Refusal> {
    let invalid = |detail| (inner_code::AUTHENTICATION_TOKEN_INVALID, detail);
    let claims = jwt::decode(key).map_err(|_| invalid("The key is invalid or revoked."))?;
    if jwt::text(&claims, "aud") != key_audience(host) {
        return Err(invalid("The key was issued for another service."));
    }
    if !jwt::is_current(&claims, now()) {
        return Err(invalid("The key has expired."));
    }
    if key_claim(&claims, "clientId") != Some(appid) {
        return Err((
            inner_code::INCONSISTENT_CLIENT_ID,
            "The key's clientId differs from the service ticket's appid.",
        ));
    }
    Ok(claims)
}

fn renewed_key(host: Host, old: &Claims, refresh_base: &Url) -> String {
    let carried = |name: &str| key_claim(old, name).unwrap_or_default().to_owned();
    StoreKeySpec::new(host)
        .client_id(carried("clientId"))
        .user_id(carried("userId"))
        .payload(carried("payload"))
        .refresh_base(refresh_base.clone())
        .mint()
}
