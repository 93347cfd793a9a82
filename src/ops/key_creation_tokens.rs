//! `StoreKeys/GetKeyCreationTokens` -> the facade's own Entra tokens for the two key-creation
//! audiences (`store-services-apis.md` 1.1). No Store endpoint is called: the tokens are what
//! the client app sends to the Store to mint the user's Store ID keys.

use std::sync::Arc;
use std::time::UNIX_EPOCH;

use crate::api::validation::{acting_tenant, Checks, Tenants};
use crate::api::{Attempts, Backends, Operation, Outcome, Upstream};
use crate::auth::{AccessToken, Audience, TenantId};
use crate::error::ApiError;
use crate::proto::msstore::v1 as pb;
use crate::upstream::{Answer, UpstreamIds};

/// Gets the collections and purchase key-creation tokens of a tenant.
#[derive(Debug)]
pub struct GetKeyCreationTokens;

impl Operation for GetKeyCreationTokens {
    type Request = pb::GetKeyCreationTokensRequest;
    type Response = pb::GetKeyCreationTokensResponse;
    /// The tenant the tokens are for.
    type Prepared = TenantId;
    /// The token provider fetches each token once however many calls wait for it.
    const COALESCE: bool = false;
    const UPSTREAM: Upstream = Upstream::Entra;

    fn validate(request: Self::Request, tenants: &Tenants) -> Result<TenantId, ApiError> {
        let mut checks = Checks::default();
        let tenant = checks.tenant("tenant_id", &request.tenant_id);
        checks.finish()?;
        acting_tenant(tenant, tenants)
    }

    async fn fetch(
        backends: Backends,
        tenant: TenantId,
        _: Arc<Attempts>,
    ) -> Outcome<Self::Response> {
        let tokens = &backends.tokens;
        let (collections, purchase) = tokio::join!(
            tokens.token_for(Some(&tenant), Audience::CollectionsKeyCreation),
            tokens.token_for(Some(&tenant), Audience::PurchaseKeyCreation),
        );
        let (collections, purchase) = (
            collections.map_err(ApiError::Token)?,
            purchase.map_err(ApiError::Token)?,
        );
        let expires_at = collections.expires_at().min(purchase.expires_at());
        Ok(Answer {
            value: pb::GetKeyCreationTokensResponse {
                collections_token: text(collections),
                purchase_token: text(purchase),
                expires_at: Some(timestamp(expires_at)),
            },
            ids: UpstreamIds::default(),
            http_status: 200,
        })
    }
}

/// The token's text, for the answer: these two are meant to leave the service.
fn text(token: AccessToken) -> String {
    token.expose().to_owned()
}

fn timestamp(at: std::time::SystemTime) -> prost_types::Timestamp {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    prost_types::Timestamp {
        seconds: i64::try_from(since.as_secs()).unwrap_or(i64::MAX),
        nanos: 0,
    }
}
