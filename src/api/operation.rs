//! What an operation declares, and nothing more: the generic [`Pipeline`] runs the rest.
//!
//! Two kinds: an [`Operation`] is anything served through the pipeline (validation, then some
//! asynchronous work); a [`StoreOperation`] is one Store REST call, declared by its route,
//! host, credential, request and answer, and is an [`Operation`] through the blanket impl
//! below. Operations that call no Store endpoint (the key-creation tokens come from Entra)
//! implement [`Operation`] directly.
//!
//! [`Pipeline`]: super::Pipeline

use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;

use http::header::HeaderValue;

use super::call::Attempts;
use super::validation::Tenants;
use super::Backends;
use crate::auth::{AccessToken, TenantId};
use crate::error::{ApiError, ErrorMapping};
use crate::telemetry::otel::Route;
use crate::upstream::{Answer, Host, UpstreamRequest};

/// What the upstream side of a call ends in: an answer with its upstream ids, or an error.
pub type Outcome<T> = Result<Answer<T>, ApiError>;

/// What an operation calls upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upstream {
    /// A Store REST endpoint: a [`StoreOperation`].
    Store,
    /// Only the Entra token endpoint (the facade's own tokens).
    Entra,
    /// The Store's refund queue SAS endpoint, then the refund queue (Azure Storage).
    RefundQueue,
}

/// One RPC method's behaviour, declared once. The registry line that places it in a service
/// (`src/ops/mod.rs`) gives its RPC identity, with the method name taken from the proto.
/// Everything else per operation (deadline, concurrency limit, coalescing, metric series,
/// health and reflection names, the log line, spans) follows from the pipeline.
pub trait Operation: Send + Sync + 'static {
    /// The proto request message.
    type Request: Send + 'static;
    /// The proto response message.
    type Response: Clone + Send + Sync + 'static;
    /// The request after validation. When the operation coalesces, calls with equal
    /// prepared requests share one fetch.
    type Prepared: Clone + Eq + Hash + Send + Sync + 'static;
    /// Whether identical calls in flight share one fetch (and its outcome).
    const COALESCE: bool;
    /// What it calls upstream.
    const UPSTREAM: Upstream;

    /// Checks the request before anything else happens; INVALID_ARGUMENT with one
    /// BadRequest violation per bad field.
    fn validate(request: Self::Request, tenants: &Tenants) -> Result<Self::Prepared, ApiError>;

    /// The work of one call (or of the calls coalesced with it), within `attempts`' deadline.
    fn fetch(
        backends: Backends,
        prepared: Self::Prepared,
        attempts: Arc<Attempts>,
    ) -> impl Future<Output = Outcome<Self::Response>> + Send + 'static;
}

/// One Store REST operation, declared once: validation, upstream route, host and credential,
/// request building, answer parsing and mapping to proto, and how its failures map. The
/// retry budget and circuit of its host, the token, redaction and error mapping follow.
pub trait StoreOperation: Sized + Send + Sync + 'static {
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

    /// Decodes a 2xx body; `None` when it is not [`StoreOperation::EXPECTED`].
    fn parse(body: &[u8]) -> Option<Self::Answer>;

    /// The proto answer.
    fn respond(answer: Self::Answer, prepared: &Self::Prepared) -> Self::Response;

    /// The work of one call: by default one upstream request (with retries, token and
    /// mapping: [`exchange`](super::exchange)) and its proto answer. An operation that needs
    /// more than one request per call (following continuation tokens) provides its own,
    /// built on [`exchange`](super::exchange).
    fn fetch(
        backends: Backends,
        prepared: Self::Prepared,
        attempts: Arc<Attempts>,
    ) -> impl Future<Output = Outcome<Self::Response>> + Send + 'static {
        async move {
            let answer = super::exchange::<Self>(&backends, &prepared, &attempts).await?;
            Ok(Answer {
                value: Self::respond(answer.value, &prepared),
                ids: answer.ids,
                http_status: answer.http_status,
            })
        }
    }
}

impl<Op: StoreOperation> Operation for Op {
    type Request = <Op as StoreOperation>::Request;
    type Response = <Op as StoreOperation>::Response;
    type Prepared = <Op as StoreOperation>::Prepared;
    const COALESCE: bool = <Op as StoreOperation>::COALESCE;
    const UPSTREAM: Upstream = Upstream::Store;

    fn validate(request: Self::Request, tenants: &Tenants) -> Result<Self::Prepared, ApiError> {
        <Op as StoreOperation>::validate(request, tenants)
    }

    fn fetch(
        backends: Backends,
        prepared: Self::Prepared,
        attempts: Arc<Attempts>,
    ) -> impl Future<Output = Outcome<Self::Response>> + Send + 'static {
        <Op as StoreOperation>::fetch(backends, prepared, attempts)
    }
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
    /// No token: the request's URL carries its own credential (the refund queue's SAS,
    /// which [`StoreOperation::secrets`] names).
    InUrl,
}

/// The token an attempt is made with: where it goes (header or body) is the operation's
/// choice in [`StoreOperation::request`]. No `Debug`: it holds a token or a ticket.
pub enum Token<'a> {
    /// The facade's own token.
    Facade(AccessToken),
    /// The caller's service ticket.
    Caller(&'a str),
    /// None ([`Credential::InUrl`]).
    None,
}

impl Token<'_> {
    /// The token text, for a request body that carries it.
    pub fn text(&self) -> &str {
        match self {
            Token::Facade(token) => token.expose(),
            Token::Caller(ticket) => ticket,
            Token::None => "",
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
            // Only an operation declaring `Credential::InUrl` gets no token, and it sends none.
            Token::None => Err(ApiError::Token(Arc::new(
                crate::auth::TokenError::NotConfigured,
            ))),
        }
    }
}
