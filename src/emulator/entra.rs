//! The Entra ID v2 token endpoint, `POST /login/{tenant}/oauth2/v2.0/token`: client
//! credentials with a client secret or a client assertion, one registered application (the
//! sandbox one), any tenant, the three [`Audience`]s of the Store. Refusals carry Entra's own
//! error shape and `AADSTS` codes. The secret and the assertion are compared and dropped: never
//! logged, never echoed.

use std::collections::HashMap;

use axum::extract::Path;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{json, Value};

use super::clock::{entra_timestamp, guid_for, now, random_guid};
use super::jwt::{self, Claims, JwtError};
use super::{SANDBOX_CLIENT_ID, SANDBOX_CLIENT_SECRET};
use crate::auth::{Audience, TenantId};

const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// Lifetime of an access token, as Entra's v2 endpoint usually grants.
const TOKEN_LIFETIME_SECONDS: i64 = 3599;

/// Why a bearer token or service ticket is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(super) enum TicketError {
    /// Not a token this emulator issued.
    #[error("the token was not issued by this emulator")]
    NotIssuedHere(#[from] JwtError),
    /// Issued for another audience.
    #[error("the token's audience is not {}", Audience::Service.as_str())]
    WrongAudience,
    /// Expired (or not yet valid).
    #[error("the token has expired")]
    Expired,
}

/// What the Store reads out of a valid access token.
#[derive(Debug, Clone)]
pub(super) struct Ticket {
    /// The application the token was issued to.
    pub(super) appid: String,
    /// The tenant (a GUID).
    pub(super) tid: String,
}

/// The verified ticket of an `Authorization: Bearer` header, or the Store's 401 answer:
/// `PartnerAadTicketRequired` without one, `AuthenticationTokenInvalid` for a bad one.
pub(super) fn bearer_ticket(headers: &axum::http::HeaderMap) -> Result<Ticket, Box<Response>> {
    use super::store_answer::{self, inner_code};
    let bearer = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|token| !token.is_empty());
    let Some(bearer) = bearer else {
        return Err(Box::new(store_answer::unauthorized(
            headers,
            inner_code::PARTNER_AAD_TICKET_REQUIRED,
            "An Authorization: Bearer token is required.",
        )));
    };
    verify_ticket(bearer).map_err(|error| {
        Box::new(store_answer::unauthorized(
            headers,
            inner_code::AUTHENTICATION_TOKEN_INVALID,
            &format!("Authentication token supplied is invalid: {error}."),
        ))
    })
}

/// Checks an access token the way the Store does: issued here, for the service audience (a
/// key-creation token is as foreign here as any other), not expired.
pub(super) fn verify_ticket(token: &str) -> Result<Ticket, TicketError> {
    let claims = jwt::decode(token)?;
    if jwt::text(&claims, "aud") != Some(Audience::Service.as_str()) {
        return Err(TicketError::WrongAudience);
    }
    if !jwt::is_current(&claims, now()) {
        return Err(TicketError::Expired);
    }
    let text = |name| jwt::text(&claims, name).unwrap_or_default().to_owned();
    Ok(Ticket {
        appid: text("appid"),
        tid: text("tid"),
    })
}

/// The tenant GUID Entra would put in `tid`: a GUID stands for itself, a domain name maps to a
/// GUID derived from it.
pub(super) fn tenant_guid(tenant: &TenantId) -> String {
    let text = tenant.as_str();
    let is_guid = text.len() == 36 && text.bytes().filter(|b| *b == b'-').count() == 4;
    if is_guid {
        text.to_owned()
    } else {
        guid_for(&["tenant", text])
    }
}

/// A refusal in Entra's shape.
struct EntraError {
    status: StatusCode,
    error: &'static str,
    code: u32,
    description: String,
}

impl EntraError {
    /// A 401 `invalid_client` refusal: the client could not be authenticated.
    fn invalid_client(code: u32, description: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            code,
            description,
        )
    }

    /// A 400 refusal.
    fn bad_request(error: &'static str, code: u32, description: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, error, code, description)
    }

    fn new(
        status: StatusCode,
        error: &'static str,
        code: u32,
        description: impl Into<String>,
    ) -> Self {
        Self {
            status,
            error,
            code,
            description: description.into(),
        }
    }
}

impl IntoResponse for EntraError {
    fn into_response(self) -> Response {
        let (trace_id, correlation_id) = (random_guid(), random_guid());
        let timestamp = entra_timestamp(now());
        let body = json!({
            "error": self.error,
            "error_description": format!(
                "AADSTS{}: {}\r\nTrace ID: {trace_id}\r\nCorrelation ID: {correlation_id}\r\nTimestamp: {timestamp}",
                self.code, self.description
            ),
            "error_codes": [self.code],
            "timestamp": timestamp,
            "trace_id": trace_id,
            "correlation_id": correlation_id,
            "error_uri": format!("https://login.microsoftonline.com/error?code={}", self.code),
        });
        let mut response = entra_json(self.status, &body);
        if matches!(self.status.as_u16(), 429 | 503) {
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

fn entra_json(status: StatusCode, body: &Value) -> Response {
    (
        status,
        [
            (CONTENT_TYPE, "application/json; charset=utf-8"),
            (CACHE_CONTROL, "no-store, no-cache"),
        ],
        body.to_string(),
    )
        .into_response()
}

/// The Entra routes.
pub(super) fn routes() -> axum::Router<super::EmulatorState> {
    axum::Router::new().route(
        &format!("{}/{{tenant}}/oauth2/v2.0/token", super::LOGIN_PREFIX),
        axum::routing::post(token),
    )
}

/// `POST /login/{tenant}/oauth2/v2.0/token`.
async fn token(Path(tenant): Path<String>, body: Bytes) -> Response {
    let form: HashMap<String, String> = form_urlencoded::parse(&body).into_owned().collect();
    match issue(&tenant, &form) {
        Ok(body) => entra_json(StatusCode::OK, &body),
        Err(refusal) => refusal.into_response(),
    }
}

fn issue(tenant: &str, form: &HashMap<String, String>) -> Result<Value, EntraError> {
    let field = |name: &str| form.get(name).map(String::as_str).filter(|v| !v.is_empty());
    let tenant = check_tenant(tenant)?;
    if field("grant_type") != Some("client_credentials") {
        return Err(EntraError::bad_request(
            "unsupported_grant_type",
            70_003,
            "The app requested an unsupported grant type; this endpoint grants client_credentials only.",
        ));
    }
    let client_id = field("client_id").ok_or_else(|| missing_parameter("client_id"))?;
    let scope = field("scope").ok_or_else(|| missing_parameter("scope"))?;
    let audience = Audience::from_scope(scope).ok_or_else(invalid_scope)?;
    if client_id != SANDBOX_CLIENT_ID {
        return Err(EntraError::bad_request(
            "unauthorized_client",
            700_016,
            format!(
                "Application with identifier '{}' was not found in the directory '{}'.",
                printable(client_id),
                tenant.as_str()
            ),
        ));
    }
    let appidacr = authenticate_client(
        field("client_secret"),
        field("client_assertion_type"),
        field("client_assertion"),
    )?;
    Ok(token_answer(&tenant, audience, appidacr))
}

/// 400 `invalid_scope`, naming the scopes the emulator grants.
fn invalid_scope() -> EntraError {
    let scopes: Vec<&str> = Audience::ALL.into_iter().map(Audience::scope).collect();
    EntraError::bad_request(
        "invalid_scope",
        70_011,
        format!(
            "The provided value for the input parameter 'scope' is not valid. Use one of {}.",
            scopes.join(", ")
        ),
    )
}

fn check_tenant(tenant: &str) -> Result<TenantId, EntraError> {
    let parsed = TenantId::parse(tenant).map_err(|_| {
        EntraError::bad_request(
            "invalid_request",
            900_023,
            format!(
                "Specified tenant identifier '{}' is neither a valid DNS name, nor a valid external domain.",
                printable(tenant)
            ),
        )
    })?;
    // `magic-<status>.<domain>`: the token endpoint answers that status (see the README).
    let magic_status = parsed
        .as_str()
        .split('.')
        .next()
        .and_then(|label| label.strip_prefix("magic-"))
        .and_then(|digits| digits.parse::<u16>().ok())
        .and_then(|status| StatusCode::from_u16(status).ok())
        .filter(|status| status.is_client_error() || status.is_server_error());
    match magic_status {
        None => Ok(parsed),
        Some(status) if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS => {
            Err(EntraError::new(
                status,
                "temporarily_unavailable",
                50_000,
                "There was an error issuing a token (sandbox emulator magic tenant).",
            ))
        }
        Some(status) => Err(EntraError::new(
            status,
            "invalid_request",
            90_002,
            format!(
                "Tenant '{}' not found (sandbox emulator magic tenant).",
                parsed.as_str()
            ),
        )),
    }
}

/// Checks the secret or the assertion; `appidacr` of the token: `1` secret, `2` assertion.
fn authenticate_client(
    secret: Option<&str>,
    assertion_type: Option<&str>,
    assertion: Option<&str>,
) -> Result<&'static str, EntraError> {
    if let Some(secret) = secret {
        return if same_text(secret, SANDBOX_CLIENT_SECRET) {
            Ok("1")
        } else {
            Err(EntraError::invalid_client(
                7_000_215,
                format!(
                    "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '{SANDBOX_CLIENT_ID}'."
                ),
            ))
        };
    }
    let Some(assertion) = assertion else {
        return Err(EntraError::invalid_client(
            7_000_218,
            "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
        ));
    };
    if assertion_type != Some(ASSERTION_TYPE) {
        return Err(EntraError::bad_request(
            "invalid_request",
            70_002,
            format!("The 'client_assertion_type' parameter must be {ASSERTION_TYPE}."),
        ));
    }
    let claims = jwt::decode_unverified(assertion)
        .map_err(|_| EntraError::invalid_client(50_027, "JWT token is invalid or malformed."))?;
    if assertion_expired(&claims) {
        return Err(EntraError::bad_request(
            "invalid_client",
            700_024,
            "Client assertion is not within its valid time range.",
        ));
    }
    Ok("2")
}

/// A federated assertion comes from another issuer, so only its shape and its `exp` (when it
/// has one) are checked.
fn assertion_expired(claims: &Claims) -> bool {
    jwt::seconds(claims, "exp").is_some_and(|exp| exp <= now())
}

fn missing_parameter(name: &str) -> EntraError {
    EntraError::bad_request(
        "invalid_request",
        900_144,
        format!("The request body must contain the following parameter: '{name}'."),
    )
}

fn token_answer(tenant: &TenantId, audience: Audience, appidacr: &str) -> Value {
    let issued = now();
    let tid = tenant_guid(tenant);
    let access_token = jwt::encode(&json!({
        "aud": audience.as_str(),
        "iss": format!("https://sts.windows.net/{tid}/"),
        "iat": issued,
        "nbf": issued,
        "exp": issued + TOKEN_LIFETIME_SECONDS,
        "appid": SANDBOX_CLIENT_ID,
        "appidacr": appidacr,
        "idp": format!("https://sts.windows.net/{tid}/"),
        "oid": guid_for(&["service principal", &tid]),
        "sub": guid_for(&["service principal", &tid]),
        "tid": tid,
        "ver": "1.0",
    }));
    json!({
        "token_type": "Bearer",
        "expires_in": TOKEN_LIFETIME_SECONDS,
        "ext_expires_in": TOKEN_LIFETIME_SECONDS,
        "access_token": access_token,
    })
}

/// Compares without stopping at the first difference.
fn same_text(given: &str, expected: &str) -> bool {
    given.len() == expected.len()
        && given
            .bytes()
            .zip(expected.bytes())
            .fold(0u8, |diff, (a, b)| diff | (a ^ b))
            == 0
}

/// An identifier safe to echo in a description: short, printable ASCII only.
fn printable(text: &str) -> String {
    text.chars()
        .take(64)
        .map(|c| if c.is_ascii_graphic() { c } else { '?' })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token_with(claims: Value) -> String {
        jwt::encode(&claims)
    }

    #[test]
    fn tickets_must_be_current_onestore_tokens_issued_here() {
        let now = now();
        let service = Audience::Service.as_str();
        let good = token_with(json!({"aud": service, "exp": now + 60, "appid": "a", "tid": "t"}));
        let ticket = verify_ticket(&good).unwrap();
        assert_eq!((ticket.appid.as_str(), ticket.tid.as_str()), ("a", "t"));
        let expired = token_with(json!({"aud": service, "exp": now - 1}));
        assert_eq!(verify_ticket(&expired).unwrap_err(), TicketError::Expired);
        let key_creation = [
            Audience::CollectionsKeyCreation.as_str(),
            Audience::PurchaseKeyCreation.as_str(),
        ];
        for aud in key_creation
            .into_iter()
            .chain(["https://graph.microsoft.com"])
        {
            let foreign = token_with(json!({"aud": aud, "exp": now + 60, "appid": "a"}));
            let refusal = verify_ticket(&foreign).unwrap_err();
            assert_eq!(refusal, TicketError::WrongAudience, "{aud}");
        }
        assert!(matches!(
            verify_ticket("a.b.c"),
            Err(TicketError::NotIssuedHere(_))
        ));
    }

    #[test]
    fn each_scope_names_its_audience_and_nothing_else_does() {
        for audience in Audience::ALL {
            assert_eq!(Audience::from_scope(audience.scope()), Some(audience));
            assert_eq!(Audience::from_scope(audience.as_str()), None);
        }
        let near_misses = [
            "https://onestore.microsoft.com/b2b/keys/create/.default",
            "https://onestore.microsoft.com//.default",
            "https://graph.microsoft.com/.default",
            "/.default",
        ];
        for scope in near_misses {
            assert_eq!(Audience::from_scope(scope), None, "{scope}");
        }
    }

    #[test]
    fn domain_tenants_get_a_stable_guid_and_guids_stand_for_themselves() {
        let guid = TenantId::parse("72f988bf-86f1-41af-91ab-2d7cd011db47").unwrap();
        assert_eq!(tenant_guid(&guid), guid.as_str());
        let domain = TenantId::parse("contoso.onmicrosoft.com").unwrap();
        assert_eq!(tenant_guid(&domain), tenant_guid(&domain));
        assert_eq!(tenant_guid(&domain).len(), 36);
    }

    #[test]
    fn descriptions_echo_only_short_printable_identifiers() {
        assert_eq!(printable("app\r\nid"), "app??id");
        assert_eq!(printable(&"x".repeat(100)).len(), 64);
    }
}
