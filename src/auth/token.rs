//! The Entra ID token provider: client credentials (secret or federated assertion), tokens
//! cached per tenant and [`Audience`] until shortly before they expire, one token request per
//! cache miss no matter how many calls wait for it.
//!
//! Token discipline (contract, section 6): a token request runs in a task of its own, so a
//! caller that gives up does not abort it; a rejection by Entra is remembered per tenant and
//! audience for [`REJECTION_MEMORY`]; a Store 401 may force a new token at most once per tenant per
//! [`FORCED_RENEWAL_INTERVAL`].

use std::collections::HashMap;
use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures_util::FutureExt;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::StatusCode;
use http_body_util::Full;
use moka::future::Cache;
use moka::ops::compute::Op;
use moka::Expiry;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use tokio::sync::{watch, Mutex};
use url::Url;

use super::{Audience, TenantId};
use crate::telemetry::metrics::{Metrics, TokenOutcome, UpstreamMetrics};
use crate::telemetry::otel::{self, client_span, record_response, Route};
use crate::upstream::{retry_after, BodyFailure, HttpClient, TransportFailure};

/// How the facade proves its identity to Entra ID.
#[derive(Debug, Clone)]
pub enum CredentialSource {
    /// A client secret (`AZURE_CLIENT_SECRET`).
    ClientSecret(SecretString),
    /// A file holding a client assertion JWT (`AZURE_FEDERATED_TOKEN_FILE`).
    FederatedTokenFile(std::path::PathBuf),
}

/// The facade's own Entra application credentials.
#[derive(Debug, Clone)]
pub struct Credentials {
    /// The tenant used when a request names none.
    pub tenant_id: TenantId,
    /// The application (client) id.
    pub client_id: String,
    /// The secret or assertion file.
    pub source: CredentialSource,
}

const TOKEN_ROUTE: Route = Route {
    name: "POST /{tenant}/oauth2/v2.0/token",
    method: http::Method::POST,
    template: "/{tenant}/oauth2/v2.0/token",
};

const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// Tokens are renewed this long before they expire (as Microsoft's library does), or at half
/// their lifetime when they live shorter than twice that.
const REFRESH_MARGIN: Duration = Duration::from_secs(300);
/// The longest token lifetime believed: Entra's tokens live 60 to 90 minutes, so a longer
/// `expires_in` (up to `u64::MAX`, which would overflow an `Instant`) is cut to a day.
pub const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// The shortest token lifetime believed: an `expires_in` of 0 (or negative, or under a
/// second) counts as one second, so the token is cached for half a second and a token
/// endpoint claiming no lifetime cannot turn every call into a token request.
pub const MIN_TOKEN_LIFETIME: Duration = Duration::from_secs(1);
const MAX_TENANTS: u64 = 10_000;
/// How long an Entra rejection (4xx) of a tenant's token request is remembered: calls naming
/// that tenant meanwhile get the same rejection without a token request of their own.
pub const REJECTION_MEMORY: Duration = Duration::from_secs(30);
/// A Store 401 forces a new token at most once per tenant in this interval; further 401s in
/// it go back to their callers without a retry, so callers cannot churn the facade's tokens.
pub const FORCED_RENEWAL_INTERVAL: Duration = Duration::from_secs(60);

/// An Entra access token. It cannot be printed: `Debug` shows `[redacted]` and there is no
/// `Display`; [`AccessToken::expose`] is the one way to read it, at the point of sending.
#[derive(Clone)]
pub struct AccessToken {
    secret: Arc<SecretString>,
    bearer: HeaderValue,
    refresh_at: Instant,
    expires_at: SystemTime,
}

impl AccessToken {
    /// The token text, for the request that carries it.
    pub fn expose(&self) -> &str {
        self.secret.expose_secret()
    }

    /// `Bearer <token>` as a header value marked sensitive, built once per token.
    pub fn bearer(&self) -> HeaderValue {
        self.bearer.clone()
    }

    /// When the token expires, as Entra's `expires_in` said (within [`MIN_TOKEN_LIFETIME`]
    /// and [`MAX_TOKEN_LIFETIME`]).
    pub fn expires_at(&self) -> SystemTime {
        self.expires_at
    }

    /// Whether `other` is this very token (same fetch).
    fn same_as(&self, other: &AccessToken) -> bool {
        Arc::ptr_eq(&self.secret, &other.secret)
    }
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AccessToken([redacted])")
    }
}

/// Why no token could be had. No variant carries the secret, the assertion or a token.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// No credential is configured and the caller brought none.
    #[error("no Entra credential is configured and the request carries no service_ticket")]
    NotConfigured,
    /// The token endpoint refused the facade's credentials (HTTP 4xx).
    #[error("the token endpoint rejected the facade's credentials: {error}{}", aadsts.as_deref().map(|c| format!(" ({c})")).unwrap_or_default())]
    Rejected {
        /// HTTP status of the refusal.
        http_status: u16,
        /// The OAuth `error` field, e.g. `invalid_client`.
        error: String,
        /// The first Entra error code, e.g. `AADSTS7000215`.
        aadsts: Option<String>,
    },
    /// The token endpoint could not be reached, or answered 429 or 5xx.
    #[error("the token endpoint is unavailable: {cause}")]
    Unavailable {
        /// HTTP status, when there was an answer.
        http_status: Option<u16>,
        /// The endpoint's `Retry-After`, if any.
        retry_after: Option<Duration>,
        /// What went wrong, without any URL.
        cause: &'static str,
    },
    /// The token endpoint answered 2xx with something that is not a token response.
    #[error(
        "the token endpoint answered HTTP {http_status} with a body that is not a token response"
    )]
    Malformed {
        /// HTTP status of the answer.
        http_status: u16,
    },
    /// The federated token file could not be read.
    #[error("the federated token file cannot be read: {0}")]
    AssertionUnreadable(std::io::ErrorKind),
}

/// Gets and caches the facade's own Entra tokens.
#[derive(Clone)]
pub struct TokenProvider {
    inner: Arc<Inner>,
}

/// The outcome of a token request, shared by every caller waiting for it.
type Fetched = Result<AccessToken, Arc<TokenError>>;

/// A token request in flight: `None` until its task publishes the outcome.
type Flight = watch::Receiver<Option<Fetched>>;

/// What a token lookup found once it held the flight table.
enum Lookup {
    /// An outcome known already: a cached token or a remembered rejection.
    Known(Fetched),
    /// A token request to wait for; `joined` when another call started it.
    Wait { flight: Flight, joined: bool },
}

struct Inner {
    http: HttpClient,
    authority: String,
    credentials: Option<Credentials>,
    timeout: Duration,
    /// The tokens, per audience (indexed by [`Audience::index`]) and tenant.
    caches: [Cache<TenantId, AccessToken>; 3],
    /// Entra rejections, per audience and tenant, for [`REJECTION_MEMORY`].
    rejections: [Cache<TenantId, Arc<TokenError>>; 3],
    /// Tenants whose token a Store 401 forced out within the last [`FORCED_RENEWAL_INTERVAL`].
    forced_renewals: Cache<TenantId, ()>,
    /// The token requests in flight. A request leaves this table only after its outcome is in
    /// `caches` or `rejections`, so a lookup holding the table never starts a second one.
    flights: Mutex<HashMap<(TenantId, Audience), Flight>>,
    /// Set by the first token Entra issues: the credentials work (readiness).
    accepted: AtomicBool,
    metrics: Arc<Metrics>,
    endpoint: UpstreamMetrics,
    host: String,
}

struct RefreshAt;

impl Expiry<TenantId, AccessToken> for RefreshAt {
    fn expire_after_create(
        &self,
        _tenant: &TenantId,
        token: &AccessToken,
        created_at: Instant,
    ) -> Option<Duration> {
        Some(token.refresh_at.saturating_duration_since(created_at))
    }
}

impl TokenProvider {
    /// A provider that asks `authority` for tokens with `credentials`, through `http`,
    /// recording token requests and cache hits in `metrics`.
    pub fn new(
        http: HttpClient,
        authority: &Url,
        credentials: Option<Credentials>,
        timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        let cache = || {
            Cache::builder()
                .max_capacity(MAX_TENANTS)
                .expire_after(RefreshAt)
                .build()
        };
        Self {
            inner: Arc::new(Inner {
                http,
                authority: authority.as_str().trim_end_matches('/').to_owned(),
                credentials,
                timeout,
                caches: [cache(), cache(), cache()],
                rejections: [(); 3].map(|()| remembered_for(REJECTION_MEMORY)),
                forced_renewals: remembered_for(FORCED_RENEWAL_INTERVAL),
                flights: Mutex::default(),
                accepted: AtomicBool::new(false),
                endpoint: metrics.upstream("entra", authority.host_str().unwrap_or_default()),
                host: authority.host_str().unwrap_or_default().to_owned(),
                metrics,
            }),
        }
    }

    /// Whether the facade has credentials of its own.
    pub fn is_configured(&self) -> bool {
        self.inner.credentials.is_some()
    }

    /// Whether Entra has issued a token for the facade's credentials at least once since
    /// start (for any tenant). A later outage or rejection does not clear it.
    pub fn credentials_accepted(&self) -> bool {
        self.inner.accepted.load(Ordering::Acquire)
    }

    /// The tenant used when a request names none.
    pub fn default_tenant(&self) -> Option<&TenantId> {
        self.inner.credentials.as_ref().map(|c| &c.tenant_id)
    }

    /// The service access token for `tenant` (the configured tenant when `None`): the one
    /// Store calls are made with. See [`TokenProvider::token_for`].
    pub async fn token(&self, tenant: Option<&TenantId>) -> Fetched {
        self.token_for(tenant, Audience::Service).await
    }

    /// A token of `audience` for `tenant` (the configured tenant when `None`), from the
    /// cache or from one token request shared by every concurrent caller. The request runs in
    /// a task of its own: dropping this future (a caller's deadline, a cancel) leaves it
    /// running, and its outcome goes to every caller waiting and into the cache.
    pub async fn token_for(&self, tenant: Option<&TenantId>, audience: Audience) -> Fetched {
        let tenant = tenant
            .or_else(|| self.default_tenant())
            .ok_or_else(|| Arc::new(TokenError::NotConfigured))?;
        let inner = &self.inner;
        if let Some(token) = inner.caches[audience.index()].get(tenant).await {
            inner.metrics.token_cache_hit();
            return Ok(token);
        }
        let (mut flight, joined) = match self.lookup(tenant, audience).await {
            Lookup::Known(known) => return known,
            Lookup::Wait { flight, joined } => (flight, joined),
        };
        let fetched = match flight.wait_for(Option::is_some).await {
            Ok(outcome) => outcome.clone().expect("waited for an outcome"),
            // The task ends only after publishing, so this is not expected; still, no panic.
            Err(_) => Err(Arc::new(TokenError::Unavailable {
                http_status: None,
                retry_after: None,
                cause: "the token request ended without an answer",
            })),
        };
        if joined && fetched.is_ok() {
            inner.metrics.token_cache_hit();
        }
        fetched
    }

    /// Under the flight table: the cached token, the remembered rejection, the request in
    /// flight, or a new request started in a task of its own.
    async fn lookup(&self, tenant: &TenantId, audience: Audience) -> Lookup {
        let inner = &self.inner;
        let mut flights = inner.flights.lock().await;
        let key = (tenant.clone(), audience);
        if let Some(flight) = flights.get(&key) {
            return Lookup::Wait {
                flight: flight.clone(),
                joined: true,
            };
        }
        // A request that ended since the first look stored its outcome before leaving.
        if let Some(token) = inner.caches[audience.index()].get(tenant).await {
            inner.metrics.token_cache_hit();
            return Lookup::Known(Ok(token));
        }
        if let Some(rejection) = inner.rejections[audience.index()].get(tenant).await {
            return Lookup::Known(Err(rejection));
        }
        let (publish, flight) = watch::channel(None);
        flights.insert(key.clone(), flight.clone());
        // The request's span stays a child of the call that started it.
        let fly = Inner::fly(inner.clone(), key, publish);
        tokio::spawn(tracing::Instrument::in_current_span(fly));
        Lookup::Wait {
            flight,
            joined: false,
        }
    }

    /// After a Store 401 on a call made with `rejected`: whether the call may be sent once
    /// more. The first 401 of a tenant in [`FORCED_RENEWAL_INTERVAL`] drops `rejected` from
    /// the cache (unless a newer token has replaced it already) and may retry; later ones in
    /// that interval leave the cache alone and go back to their callers.
    pub async fn renew_after_rejection(
        &self,
        tenant: Option<&TenantId>,
        rejected: &AccessToken,
    ) -> bool {
        let Some(tenant) = tenant.or_else(|| self.default_tenant()) else {
            return false;
        };
        let claimed = self
            .inner
            .forced_renewals
            .entry_by_ref(tenant)
            .or_insert(())
            .await
            .is_fresh();
        if !claimed {
            tracing::debug!(tenant = %tenant, "token renewed by a 401 less than a minute ago; not again");
            return false;
        }
        self.inner.caches[Audience::Service.index()]
            .entry_by_ref(tenant)
            .and_compute_with(|entry| {
                let op = match entry {
                    Some(entry) if entry.value().same_as(rejected) => Op::Remove,
                    _ => Op::Nop,
                };
                std::future::ready(op)
            })
            .await;
        true
    }
}

/// A per-tenant memory whose entries are forgotten `interval` after they are stored.
fn remembered_for<V: Clone + Send + Sync + 'static>(interval: Duration) -> Cache<TenantId, V> {
    Cache::builder()
        .max_capacity(MAX_TENANTS)
        .time_to_live(interval)
        .build()
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    expires_in: ExpiresIn,
}

/// Entra's v2 endpoint sends a number; some endpoints send it as a string.
#[derive(Deserialize)]
#[serde(untagged)]
enum ExpiresIn {
    Number(u64),
    Fraction(f64),
    Text(String),
}

impl ExpiresIn {
    /// The lifetime, within [`MIN_TOKEN_LIFETIME`] and [`MAX_TOKEN_LIFETIME`]; `None` when the
    /// text is not a number.
    fn lifetime(&self) -> Option<Duration> {
        let seconds = match self {
            Self::Number(n) => *n as f64,
            Self::Fraction(f) => *f,
            Self::Text(t) => t.trim().parse::<f64>().ok().filter(|f| !f.is_nan())?,
        };
        Some(clamp_lifetime(seconds))
    }
}

/// `seconds` as a token lifetime within [`MIN_TOKEN_LIFETIME`] and [`MAX_TOKEN_LIFETIME`].
fn clamp_lifetime(seconds: f64) -> Duration {
    let max = MAX_TOKEN_LIFETIME.as_secs_f64();
    let min = MIN_TOKEN_LIFETIME.as_secs_f64();
    // `clamp` brings the infinities to the ends; `max` keeps even a NaN (refused by the
    // caller) from reaching `from_secs_f64`, which would panic on it.
    Duration::from_secs_f64(seconds.clamp(min, max).floor().max(min))
}

#[derive(Deserialize, Default)]
struct TokenErrorBody {
    #[serde(default)]
    error: String,
    #[serde(default)]
    error_codes: Vec<u64>,
}

impl Inner {
    /// One token request as a task of its own: counts it, stores its outcome (a token in the
    /// cache, a rejection in the rejection memory), leaves the flight table, then publishes the
    /// outcome to the callers waiting.
    async fn fly(
        self: Arc<Self>,
        key: (TenantId, Audience),
        publish: watch::Sender<Option<Fetched>>,
    ) {
        let (tenant, audience) = &key;
        let fetched = AssertUnwindSafe(self.fetch(tenant, *audience))
            .catch_unwind()
            .await
            .unwrap_or(Err(TokenError::Unavailable {
                http_status: None,
                retry_after: None,
                cause: "the token request failed unexpectedly",
            }));
        self.metrics.token_request(match &fetched {
            Ok(_) => TokenOutcome::Issued,
            Err(TokenError::Rejected { .. }) => TokenOutcome::Rejected,
            Err(_) => TokenOutcome::Failed,
        });
        let fetched = fetched.map_err(Arc::new);
        match &fetched {
            Ok(token) => {
                // Readiness: the token Store calls are made with, not a key-creation one.
                if *audience == Audience::Service {
                    self.accepted.store(true, Ordering::Release);
                }
                self.caches[audience.index()]
                    .insert(tenant.clone(), token.clone())
                    .await;
            }
            Err(error) if matches!(**error, TokenError::Rejected { .. }) => {
                self.rejections[audience.index()]
                    .insert(tenant.clone(), error.clone())
                    .await;
            }
            Err(_) => {}
        }
        self.flights.lock().await.remove(&key);
        publish.send_replace(Some(fetched));
    }

    /// One token request, in a client span when traces are exported.
    async fn fetch(
        &self,
        tenant: &TenantId,
        audience: Audience,
    ) -> Result<AccessToken, TokenError> {
        use tracing::Instrument;
        let span = client_span(&TOKEN_ROUTE, &self.host);
        let fetched = self
            .request(tenant, audience, &span)
            .instrument(span.clone())
            .await;
        if !span.is_disabled() {
            let status = match &fetched {
                Ok(_) => Some(200),
                Err(TokenError::Rejected { http_status, .. })
                | Err(TokenError::Malformed { http_status }) => Some(*http_status),
                Err(TokenError::Unavailable { http_status, .. }) => *http_status,
                Err(_) => None,
            };
            record_response(&span, status);
        }
        fetched
    }

    async fn request(
        &self,
        tenant: &TenantId,
        audience: Audience,
        span: &tracing::Span,
    ) -> Result<AccessToken, TokenError> {
        let credentials = self.credentials.as_ref().ok_or(TokenError::NotConfigured)?;
        let assertion;
        let mut form: Vec<(&str, &str)> = vec![
            ("grant_type", "client_credentials"),
            ("client_id", &credentials.client_id),
            ("scope", audience.scope()),
        ];
        match &credentials.source {
            CredentialSource::ClientSecret(secret) => {
                form.push(("client_secret", secret.expose_secret()));
            }
            CredentialSource::FederatedTokenFile(path) => {
                assertion = tokio::fs::read_to_string(path)
                    .await
                    .map_err(|e| TokenError::AssertionUnreadable(e.kind()))?;
                form.push(("client_assertion_type", ASSERTION_TYPE));
                form.push(("client_assertion", assertion.trim()));
            }
        }
        let url = format!("{}/{}/oauth2/v2.0/token", self.authority, tenant.as_str());
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(&form)
            .finish();
        let mut request = http::Request::post(url).header(
            CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        if let Some(traceparent) = otel::traceparent(span) {
            request = request.header("traceparent", traceparent);
        }
        let unavailable = |http_status, cause| TokenError::Unavailable {
            http_status,
            retry_after: None,
            cause,
        };
        // The authority is a parsed URL and the tenant an id of safe characters, so this
        // only fails if the configuration is wrong: as if Entra could not be reached.
        let request = request
            .body(Full::new(Bytes::from(body)))
            .map_err(|_| unavailable(None, "connection failed"))?;
        let started = Instant::now();
        let answer = self
            .http
            .send(request, self.timeout)
            .await
            .inspect_err(|_| self.endpoint.attempt(None, started.elapsed()))
            .map_err(|failure| {
                unavailable(
                    None,
                    match failure {
                        TransportFailure::Timeout => "timed out",
                        TransportFailure::Connect => "connection failed",
                        TransportFailure::ConnectionLost => "connection lost",
                    },
                )
            })?;
        let status = answer.status;
        self.endpoint
            .attempt(Some(status.as_u16()), started.elapsed());
        let retry_after = retry_after(&answer.headers);
        let body = answer.body.map_err(|failure| {
            unavailable(
                Some(status.as_u16()),
                match failure {
                    BodyFailure::TooLarge => "answer too large",
                    BodyFailure::Transport(_) => "connection lost while reading the answer",
                },
            )
        })?;
        tracing::debug!(tenant = %tenant, audience = audience.label(), http_status = status.as_u16(), "token request answered");
        token_from_answer(status, retry_after, &body, started)
    }
}

/// Reads the token endpoint's answer to a token request sent at `requested_at`: a token whose
/// lifetime is clamped to [`MIN_TOKEN_LIFETIME`]..=[`MAX_TOKEN_LIFETIME`], or why there is none.
/// Whatever the body holds, this returns; it never panics.
pub(crate) fn token_from_answer(
    status: StatusCode,
    retry_after: Option<Duration>,
    body: &[u8],
    requested_at: Instant,
) -> Result<AccessToken, TokenError> {
    if status.is_success() {
        let malformed = || TokenError::Malformed {
            http_status: status.as_u16(),
        };
        let parsed: TokenResponse = serde_json::from_slice(body).map_err(|_| malformed())?;
        let lifetime = parsed.expires_in.lifetime().ok_or_else(malformed)?;
        let mut bearer = HeaderValue::try_from(format!("Bearer {}", parsed.access_token))
            .map_err(|_| malformed())?;
        bearer.set_sensitive(true);
        if parsed.access_token.is_empty() {
            return Err(malformed());
        }
        let margin = REFRESH_MARGIN.min(lifetime / 2);
        // `lifetime` is at most a day, so this cannot overflow.
        return Ok(AccessToken {
            secret: Arc::new(SecretString::from(parsed.access_token)),
            bearer,
            refresh_at: requested_at + (lifetime - margin),
            expires_at: SystemTime::now() + lifetime - requested_at.elapsed().min(lifetime),
        });
    }
    if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
        return Err(TokenError::Unavailable {
            http_status: Some(status.as_u16()),
            retry_after,
            cause: if status.is_server_error() {
                "server error"
            } else {
                "too many requests"
            },
        });
    }
    let parsed: TokenErrorBody = serde_json::from_slice(body).unwrap_or_default();
    Err(TokenError::Rejected {
        http_status: status.as_u16(),
        // OAuth error codes are short snake_case words; anything else is not echoed.
        error: if is_oauth_code(&parsed.error) {
            parsed.error
        } else {
            format!("HTTP {}", status.as_u16())
        },
        aadsts: parsed.error_codes.first().map(|c| format!("AADSTS{c}")),
    })
}

fn is_oauth_code(text: &str) -> bool {
    (1..=64).contains(&text.len())
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_is_refreshed_five_minutes_early_or_at_half_life() {
        let now = Instant::now();
        let body = br#"{"token_type":"Bearer","expires_in":3599,"access_token":"t"}"#;
        let token = token_from_answer(StatusCode::OK, None, body, now).unwrap();
        assert_eq!(token.refresh_at - now, Duration::from_secs(3299));
        let body = br#"{"expires_in":"60","access_token":"t"}"#;
        let token = token_from_answer(StatusCode::OK, None, body, now).unwrap();
        assert_eq!(token.refresh_at - now, Duration::from_secs(30));
    }

    fn refresh_after(expires_in: &str) -> Result<Duration, TokenError> {
        let now = Instant::now();
        let body = format!(r#"{{"expires_in":{expires_in},"access_token":"t"}}"#);
        token_from_answer(StatusCode::OK, None, body.as_bytes(), now)
            .map(|token| token.refresh_at - now)
    }

    #[test]
    fn absurd_lifetimes_are_clamped_to_a_day() {
        let day_less_margin = MAX_TOKEN_LIFETIME - REFRESH_MARGIN;
        for huge in [
            "18446744073709551615",
            r#""18446744073709551615""#,
            r#""1e300""#,
            "1e300",
            "86401",
        ] {
            assert_eq!(refresh_after(huge).unwrap(), day_less_margin, "{huge}");
        }
        assert_eq!(
            refresh_after("86400").unwrap(),
            day_less_margin,
            "a day is believed"
        );
    }

    #[test]
    fn no_lifetime_still_caches_the_token_half_a_second() {
        for none in ["0", r#""0""#, "-5", "0.2", r#""-1e300""#] {
            assert_eq!(
                refresh_after(none).unwrap(),
                Duration::from_millis(500),
                "{none}"
            );
        }
    }

    #[test]
    fn a_lifetime_that_is_not_a_number_is_malformed() {
        for bad in [r#""soon""#, r#""NaN""#, "null", "true"] {
            assert!(
                matches!(refresh_after(bad), Err(TokenError::Malformed { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn rejection_names_the_entra_error_not_the_description() {
        let body = br#"{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret","error_codes":[7000215]}"#;
        let err = token_from_answer(StatusCode::UNAUTHORIZED, None, body, Instant::now())
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "the token endpoint rejected the facade's credentials: invalid_client (AADSTS7000215)"
        );
    }

    #[test]
    fn server_errors_and_throttling_are_unavailable() {
        for status in [
            StatusCode::SERVICE_UNAVAILABLE,
            StatusCode::TOO_MANY_REQUESTS,
        ] {
            let err = token_from_answer(status, None, b"", Instant::now()).unwrap_err();
            assert!(matches!(err, TokenError::Unavailable { .. }), "{status}");
        }
    }

    #[test]
    fn token_debug_is_redacted() {
        let body = br#"{"expires_in":60,"access_token":"very-secret-token"}"#;
        let token = token_from_answer(StatusCode::OK, None, body, Instant::now()).unwrap();
        assert!(!format!("{token:?}").contains("very-secret-token"));
    }

    fn provider() -> TokenProvider {
        let authority = Url::parse("http://127.0.0.1:9").unwrap();
        TokenProvider::new(
            HttpClient::new(Duration::from_secs(1), 1),
            &authority,
            None,
            Duration::from_secs(1),
            Arc::new(Metrics::new()),
        )
    }

    #[tokio::test]
    async fn a_401_forces_a_new_token_once_per_tenant_per_interval() {
        let tokens = provider();
        let body = br#"{"expires_in":3599,"access_token":"t"}"#;
        let token = token_from_answer(StatusCode::OK, None, body, Instant::now()).unwrap();
        let contoso = TenantId::parse("contoso.onmicrosoft.com").unwrap();
        let fabrikam = TenantId::parse("fabrikam.onmicrosoft.com").unwrap();
        assert!(tokens.renew_after_rejection(Some(&contoso), &token).await);
        assert!(!tokens.renew_after_rejection(Some(&contoso), &token).await);
        assert!(tokens.renew_after_rejection(Some(&fabrikam), &token).await);
        assert!(
            !tokens.renew_after_rejection(None, &token).await,
            "no tenant, nothing to renew"
        );
    }
}

#[cfg(test)]
mod proptests {
    //! [`crate::fuzzing::token_response`]'s properties (shared with its fuzz target) over
    //! arbitrary bodies and token responses whose `expires_in` is any JSON value; plus the
    //! bounds of the lifetime and of the refresh time, which only this module can see.
    use proptest::prelude::*;
    use serde_json::{json, Value};

    use super::*;
    use crate::fuzzing;

    fn expires_in() -> impl Strategy<Value = Value> {
        prop_oneof![
            any::<u64>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            (0u64..200_000).prop_map(Value::from),
            any::<f64>().prop_map(|f| Value::from(f.to_string())),
            "[ ]?[-+]?[0-9]{0,25}(\\.[0-9]{0,3})?([eE][-+]?[0-9]{1,3})?[ ]?".prop_map(Value::from),
            prop::sample::select(vec![
                "NaN", "inf", "-inf", "infinity", "-0", "", "soon", "0x10"
            ])
            .prop_map(Value::from),
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            Just(json!([3599])),
            Just(json!({"seconds": 3599})),
        ]
    }

    fn access_token() -> impl Strategy<Value = Value> {
        prop_oneof![
            4 => "[A-Za-z0-9._-]{1,40}".prop_map(Value::from),
            1 => any::<String>().prop_map(Value::from),
            1 => Just(Value::Null),
            1 => any::<i64>().prop_map(Value::from),
        ]
    }

    proptest! {
        #[test]
        fn arbitrary_answers_are_read_without_panic(body in prop::collection::vec(any::<u8>(), 0..512)) {
            fuzzing::token_response(&body);
        }

        #[test]
        fn a_token_is_cached_within_half_a_second_and_a_day(
            expires_in in expires_in(),
            access_token in access_token(),
        ) {
            let body = json!({ "token_type": "Bearer", "expires_in": expires_in, "access_token": access_token });
            let body = body.to_string();
            fuzzing::token_response(body.as_bytes());
            let now = Instant::now();
            if let Ok(token) = token_from_answer(StatusCode::OK, None, body.as_bytes(), now) {
                let refresh = token.refresh_at - now;
                prop_assert!(refresh >= MIN_TOKEN_LIFETIME / 2, "{:?} for {}", refresh, body);
                prop_assert!(refresh <= MAX_TOKEN_LIFETIME - REFRESH_MARGIN, "{:?} for {}", refresh, body);
            }
        }

        #[test]
        fn lifetimes_are_whole_seconds_within_bounds_and_monotonic(a in any::<f64>(), b in any::<f64>()) {
            for seconds in [a, b] {
                let lifetime = clamp_lifetime(seconds);
                prop_assert!((MIN_TOKEN_LIFETIME..=MAX_TOKEN_LIFETIME).contains(&lifetime), "{}", seconds);
                prop_assert_eq!(lifetime.subsec_nanos(), 0);
            }
            if a <= b {
                prop_assert!(clamp_lifetime(a) <= clamp_lifetime(b), "{} {}", a, b);
            }
        }

        #[test]
        fn a_believable_lifetime_is_kept(seconds in 1u64..=86_400) {
            prop_assert_eq!(clamp_lifetime(seconds as f64), Duration::from_secs(seconds));
            prop_assert_eq!(clamp_lifetime(seconds as f64 + 0.5), Duration::from_secs(seconds));
        }
    }
}
