//! The one pipeline every RPC runs: begin the call (deadline, metadata, log line) -> validate
//! -> concurrency limit -> coalescing (where the operation opts in) -> the operation's fetch.
//! For a Store operation that is [`exchange`]: retries with the budget and circuit of its host
//! -> token -> exchange -> map.

use std::future::Future;
use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::call::{Attempts, CallContext, RpcId};
use super::operation::{Credential, Operation, Outcome, StoreOperation, Token};
use super::Backends;
use crate::auth::{AccessToken, TenantId, TokenProvider};
use crate::error::ApiError;
use crate::resilience::coalesce::Coalescer;
use crate::telemetry::metrics::RpcMetrics;
use crate::upstream::{Answer, Host, Redactor, StoreClient};

/// One RPC method served by its [`Operation`]: built once at start-up, which registers the
/// method's metric series.
pub struct Pipeline<Op: Operation> {
    backends: Backends,
    rpc: RpcId,
    metrics: RpcMetrics,
    flights: Coalescer<Op::Prepared, Outcome<Op::Response>>,
}

impl<Op: Operation> Pipeline<Op> {
    /// The pipeline of `Op` as `method` of `service`, over `backends`.
    pub fn new(service: &'static str, method: &'static str, backends: &Backends) -> Self {
        Self {
            backends: backends.clone(),
            rpc: RpcId::new(service, method),
            metrics: backends.metrics.rpc(service, method),
            flights: Coalescer::default(),
        }
    }

    /// Serves one call.
    pub async fn serve(
        &self,
        request: Request<Op::Request>,
    ) -> Result<Response<Op::Response>, Status> {
        let backends = &self.backends;
        let (call, message) = CallContext::begin(&self.rpc, request, backends.deadlines);
        let prepared = match Op::validate(message, &backends.tenants) {
            Ok(prepared) => prepared,
            Err(error) => return call.finish(&self.metrics, Err(error)),
        };
        let work = self.shared_fetch(prepared, call.attempts());
        call.complete(&backends.limiter, &self.metrics, work).await
    }

    /// The upstream side of the call, shared with identical calls in flight when `Op`
    /// coalesces. The upstream work is boxed either way, so that this future (and the ones
    /// around it, which are moved into boxes per call) stays small: the work's own state
    /// (retries, token, the HTTP exchange) is a few kilobytes.
    async fn shared_fetch(
        &self,
        prepared: Op::Prepared,
        attempts: &Arc<Attempts>,
    ) -> Outcome<Op::Response> {
        let backends = self.backends.clone();
        if !Op::COALESCE {
            return Box::pin(Op::fetch(backends, prepared, attempts.clone())).await;
        }
        let (key, attempts) = (prepared.clone(), attempts.clone());
        let (outcome, joined) = self
            .flights
            .run(prepared, move || Op::fetch(backends, key, attempts))
            .await;
        if joined {
            self.backends.metrics.coalesced();
            tracing::debug!("coalesced with an identical call in flight");
        }
        outcome
    }
}

/// One Store request of `Op` made good: retries (with the budget and circuit of its host)
/// around the token-aware attempt, each attempt built, exchanged and decoded; the decoded
/// answer, or the mapped error.
pub async fn exchange<Op: StoreOperation>(
    backends: &Backends,
    prepared: &Op::Prepared,
    attempts: &Attempts,
) -> Outcome<Op::Answer> {
    let host = Op::host(prepared);
    let (store, tokens) = (&backends.store, &backends.tokens);
    let budget = store.host(host).retry_budget();
    backends
        .retry
        .run(budget, attempts.deadline(), || async move {
            match Op::credential(prepared) {
                Credential::Caller(ticket) => {
                    send::<Op>(store, host, prepared, Token::Caller(ticket), attempts).await
                }
                Credential::InUrl => send::<Op>(store, host, prepared, Token::None, attempts).await,
                Credential::Facade { tenant } => {
                    with_own_token(tokens, tenant, attempts, |token| {
                        send::<Op>(store, host, prepared, Token::Facade(token), attempts)
                    })
                    .await
                }
            }
        })
        .await
}

/// One attempt: build the request, exchange it, decode the answer.
async fn send<Op: StoreOperation>(
    store: &StoreClient,
    host: Host,
    prepared: &Op::Prepared,
    token: Token<'_>,
    attempts: &Attempts,
) -> Outcome<Op::Answer> {
    let request = Op::request(prepared, &token)?;
    let mut secrets = Redactor::none();
    secrets.secret(token.text());
    Op::secrets(prepared).for_each(|secret| {
        secrets.secret(secret);
    });
    store
        .exchange(host, request, &attempts.next_attempt(), secrets)
        .await
        .and_then(|reply| reply.decode(Op::parse, Op::EXPECTED))
        .map_err(|error| ApiError::upstream(Op::ERRORS, error))
}

/// Sends with the facade's own token for `tenant`. When the Store answers 401 the token is
/// dropped from the cache (another call may have renewed it already) and the call is sent
/// once more with a fresh token, unless a 401 forced a new token for `tenant` within the last
/// minute: then the 401 goes back to the caller at once (contract, section 6).
async fn with_own_token<T, Fut>(
    tokens: &TokenProvider,
    tenant: Option<&TenantId>,
    attempts: &Attempts,
    send: impl Fn(AccessToken) -> Fut,
) -> Result<Answer<T>, ApiError>
where
    Fut: Future<Output = Result<Answer<T>, ApiError>>,
{
    let token = tokens.token(tenant).await.map_err(ApiError::Token)?;
    match send(token.clone()).await {
        Err(error) if error.is_upstream_unauthorized() => {
            if !tokens.renew_after_rejection(tenant, &token).await {
                return Err(error);
            }
            attempts.record_upstream_status(error.upstream_http_status());
            let fresh = tokens.token(tenant).await.map_err(ApiError::Token)?;
            send(fresh).await
        }
        other => other,
    }
}
