//! The gRPC serving path, generic over operations: an [`Operation`] declares what is
//! particular to one RPC, and its [`Pipeline`] runs everything else (deadline, validation,
//! concurrency limit, coalescing, retries with the host's budget and circuit, token, exchange,
//! mapping through [`crate::error`], metrics, span and log line). The operations themselves
//! and the registry that places them in services are in `crate::ops`.

mod call;
mod operation;
mod pipeline;
pub mod validation;

use std::sync::Arc;

pub(crate) use call::deadline_after;
pub use call::{grpc_timeout, Arrival, Attempts, CallContext, CallDeadlines, CallLimiter, RpcId};
pub use operation::{Credential, Operation, Outcome, StoreOperation, Token, Upstream};
pub use pipeline::{exchange, Pipeline};

use crate::auth::{SasCache, TokenProvider};
use crate::resilience::retry::RetryPolicy;
use crate::telemetry::metrics::Metrics;
use crate::upstream::StoreClient;
use validation::Tenants;

/// What every pipeline shares (cheap to clone).
#[derive(Clone)]
pub struct Backends {
    /// The Store REST client.
    pub store: StoreClient,
    /// The Entra token provider.
    pub tokens: TokenProvider,
    /// Retries of transient upstream failures.
    pub retry: Arc<RetryPolicy>,
    /// The limit on calls in flight.
    pub limiter: Arc<CallLimiter>,
    /// The budget of a call whose caller sets no deadline, and the cap on a caller's.
    pub deadlines: CallDeadlines,
    /// The instance's metrics.
    pub metrics: Arc<Metrics>,
    /// The tenants calls may act for.
    pub tenants: Arc<Tenants>,
    /// The refund queue's SAS, per tenant.
    pub refund_sas: Arc<SasCache>,
}
