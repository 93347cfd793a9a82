//! What a Store operation declares, and nothing more: the generic [`Pipeline`] runs the rest.
//!
//! [`Pipeline`]: super::Pipeline

use std::hash::Hash;

use reqwest::header::HeaderValue;

use super::validation::Tenants;
use crate::auth::{AccessToken, TenantId};
use crate::error::{ApiError, ErrorMapping};
use crate::telemetry::otel::Route;
use crate::upstream::{Host, UpstreamRequest};

/// One Store operation, declared once: validation, upstream route, host and credential,
/// request building, answer parsing and mapping to proto, and how its failures map. The
/// registry line that places it in a service (`src/ops/mod.rs`) gives its RPC identity, with
/// the method name taken from the proto. Everything else per operation (metric series, health
/// and reflection names, retry budget and circuit of its host, the log line, spans) follows.
pub trait Operation: Send + Sync + 'static {
    /// The proto request message.
    type Request: Send + 'static;
    /// The proto response message.
    type Response: Clone + Send + Sync + 'static;
    /// The request after validation: everything the upstream call needs. When the operation
    /// coalesces, calls with equal prepared requests share one upstream request.
    type Prepared: Clone + Eq + Hash + Send + Sync + 'static;
    /// The decoded upstream answer.
    type Answer: Send + 'static;

    /// The upstream route: its HTTP method and URL template, which names client spans (never
    /// the URL itself, which carries ids).
    const ROUTE: &'static Route;
    /// Upstream parameter names for BadRequest, and per-operation status overrides.
    const ERRORS: &'static ErrorMapping;
    /// What a 2xx body must be; anything else is `UPSTREAM_MALFORMED_RESPONSE`.
    const EXPECTED: &'static str;
    /// Whether identical calls in flight share one upstream request (and its outcome).
    const COALESCE: bool = false;

    /// Checks the request before anything else happens; INVALID_ARGUMENT with one
    /// BadRequest violation per bad field. `tenants` is the facade's tenant policy, for
    /// operations that act for a tenant ([`super::validation::acting_tenant`]).
    fn validate(request: Self::Request, tenants: &Tenants) -> Result<Self::Prepared, ApiError>;

    /// The Store host the request goes to; its retry budget and circuit apply.
    fn host(prepared: &Self::Prepared) -> Host;

    /// Who the request is made as.
    fn credential(prepared: &Self::Prepared) -> Credential<'_>;

    /// The upstream request of one attempt, made with `token`.
    fn request(prepared: &Self::Prepared, token: &Token<'_>) -> Result<UpstreamRequest, ApiError>;

    /// The secret values the request carries besides the token (the caller's Store keys).
    /// They are scrubbed out of everything the Store answers, with the token and the client
    /// secret (contract, section 6). No default: every operation says what it sends.
    fn secrets(prepared: &Self::Prepared) -> impl Iterator<Item = &str>;

    /// Decodes a 2xx body; `None` when it is not [`Operation::EXPECTED`].
    fn parse(body: &[u8]) -> Option<Self::Answer>;

    /// The proto answer.
    fn respond(answer: Self::Answer, prepared: &Self::Prepared) -> Self::Response;
}

/// Who an upstream request is made as (no `Debug`: it may hold the caller's ticket).
#[derive(Clone, Copy)]
pub enum Credential<'a> {
    /// The facade's own Entra token for `tenant` (`None`: the configured tenant). A Store 401
    /// drops it and the attempt is made once more with a fresh token.
    Facade {
        /// The tenant the caller named.
        tenant: Option<&'a TenantId>,
    },
    /// A service ticket the caller brought, sent as is: a 401 is not retried with it.
    Caller(&'a str),
}

/// The token an attempt is made with: where it goes (header or body) is the operation's
/// choice in [`Operation::request`]. No `Debug`: it holds a token or a ticket.
pub enum Token<'a> {
    /// The facade's own token.
    Facade(AccessToken),
    /// The caller's service ticket.
    Caller(&'a str),
}

impl Token<'_> {
    /// The token text, for a request body that carries it.
    pub fn text(&self) -> &str {
        match self {
            Token::Facade(token) => token.expose(),
            Token::Caller(ticket) => ticket,
        }
    }

    /// `Bearer <token>` as a sensitive header value.
    pub fn bearer(&self) -> Result<HeaderValue, ApiError> {
        match self {
            Token::Facade(token) => Ok(token.bearer()),
            Token::Caller(ticket) => {
                let mut value =
                    HeaderValue::try_from(format!("Bearer {ticket}")).map_err(|_| {
                        ApiError::invalid(
                            super::validation::INVALID_REQUEST,
                            "service_ticket",
                            "cannot be sent in an HTTP header",
                        )
                    })?;
                value.set_sensitive(true);
                Ok(value)
            }
        }
    }
}
