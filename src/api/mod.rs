//! The gRPC surface: one file per service. Each call is validated, sent upstream, and the
//! answer or failure mapped back (failures through [`crate::error`]).

mod call;
mod entitlements;
mod keys;
mod validation;

pub use call::{grpc_timeout, Arrival, CallContext};
pub use entitlements::EntitlementsService;
pub use keys::KeysService;

use crate::auth::TokenProvider;
use crate::upstream::StoreClient;

/// What both services share: the Store client and the token provider (cheap to clone).
#[derive(Clone)]
pub struct Backends {
    /// The Store REST client.
    pub store: StoreClient,
    /// The Entra token provider.
    pub tokens: TokenProvider,
}

use std::future::Future;

use crate::auth::{AccessToken, TenantId};
use crate::error::ApiError;
use crate::upstream::Answer;

/// Sends with the facade's own token for `tenant`. When the Store answers 401 the token is
/// dropped from the cache (another call may have renewed it already) and the call is sent
/// once more with a fresh token.
async fn with_own_token<T, Fut>(
    tokens: &TokenProvider,
    tenant: Option<&TenantId>,
    call: &CallContext,
    send: impl Fn(AccessToken) -> Fut,
) -> Result<Answer<T>, ApiError>
where
    Fut: Future<Output = Result<Answer<T>, ApiError>>,
{
    let token = tokens.token(tenant).await.map_err(ApiError::Token)?;
    match send(token.clone()).await {
        Err(error) if error.is_upstream_unauthorized() => {
            call.record_upstream_status(error.upstream_http_status());
            tokens.invalidate(tenant, &token).await;
            let fresh = tokens.token(tenant).await.map_err(ApiError::Token)?;
            send(fresh).await
        }
        other => other,
    }
}
