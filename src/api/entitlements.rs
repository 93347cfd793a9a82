//! `msstore.v1.StoreEntitlements`.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::call::{Attempts, CallContext};
use super::validation::Checks;
use super::{with_own_token, Backends};
use crate::auth::{TenantId, TokenError};
use crate::error::{ApiError, Operation};
use crate::proto::msstore::v1 as pb;
use crate::resilience::coalesce::Coalescer;
use crate::resilience::retry::Target;
use crate::telemetry::metrics::Rpc;
use crate::upstream::{self, Answer, LicenseIds};

/// What makes two offline-license calls identical: same ids, same tenant (and so the same
/// token of the facade's own credential).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct LicenseKey {
    tenant: TenantId,
    product_id: String,
    sku_id: String,
    content_id: String,
}

type LicenseOutcome = Result<Answer<pb::OfflineLicense>, ApiError>;

/// The `StoreEntitlements` service.
#[derive(Clone)]
pub struct EntitlementsService {
    backends: Backends,
    flights: Arc<Coalescer<LicenseKey, LicenseOutcome>>,
}

impl EntitlementsService {
    /// A service over `backends`.
    pub fn new(backends: Backends) -> Self {
        Self {
            backends,
            flights: Arc::default(),
        }
    }

    async fn offline_license(
        &self,
        request: pb::GetOfflineLicenseRequest,
        attempts: &Arc<Attempts>,
    ) -> LicenseOutcome {
        let mut checks = Checks::default();
        checks.store_id("product_id", &request.product_id);
        checks.store_id("sku_id", &request.sku_id);
        checks.store_id("content_id", &request.content_id);
        let tenant = checks.tenant("tenant_id", &request.tenant_id);
        checks.finish()?;
        let tenant = tenant
            .or_else(|| self.backends.tokens.default_tenant().cloned())
            .ok_or_else(|| ApiError::Token(Arc::new(TokenError::NotConfigured)))?;
        let key = LicenseKey {
            tenant,
            product_id: request.product_id,
            sku_id: request.sku_id,
            content_id: request.content_id,
        };
        // Identical calls in flight share one upstream request (and its outcome).
        let (backends, flight_key, attempts) =
            (self.backends.clone(), key.clone(), attempts.clone());
        let (outcome, joined) = self
            .flights
            .run(key, move || fetch(backends, flight_key, attempts))
            .await;
        if joined {
            self.backends.metrics.coalesced();
            tracing::debug!("coalesced with an identical call in flight");
        }
        outcome
    }
}

/// The upstream side of one offline-license flight: retries around the token-aware attempt.
async fn fetch(backends: Backends, key: LicenseKey, attempts: Arc<Attempts>) -> LicenseOutcome {
    let ids = LicenseIds {
        product_id: &key.product_id,
        sku_id: &key.sku_id,
        content_id: &key.content_id,
    };
    let (store, tokens, attempts) = (&backends.store, &backends.tokens, &*attempts);
    let answer = backends
        .retry
        .run(Target::Business, attempts.deadline(), || {
            with_own_token(tokens, Some(&key.tenant), attempts, |token| async move {
                store
                    .offline_license(ids, &token, &attempts.next_attempt())
                    .await
                    .map_err(|error| ApiError::upstream(Operation::GetOfflineLicense, error))
            })
        })
        .await?;
    Ok(Answer {
        value: to_proto(answer.value),
        ids: answer.ids,
        http_status: answer.http_status,
    })
}

fn to_proto(license: upstream::OfflineLicense) -> pb::OfflineLicense {
    pb::OfflineLicense {
        product_key: license.product_key.map(|key| pb::ProductKey {
            product_id: key.product_id.unwrap_or_default(),
            sku_id: key.sku_id.unwrap_or_default(),
        }),
        license_blob: license.license_blob,
        license_instance_id: license.license_instance_id.unwrap_or_default(),
        requestor_id: license.requestor_id.unwrap_or_default(),
        content_id: license.content_id.unwrap_or_default(),
    }
}

#[tonic::async_trait]
impl pb::store_entitlements_server::StoreEntitlements for EntitlementsService {
    async fn get_offline_license(
        &self,
        request: Request<pb::GetOfflineLicenseRequest>,
    ) -> Result<Response<pb::OfflineLicense>, Status> {
        let (call, request) = CallContext::begin(
            Rpc::GetOfflineLicense,
            request,
            self.backends.default_deadline,
        );
        let work = self.offline_license(request, call.attempts());
        call.complete(&self.backends.limiter, &self.backends.metrics, work)
            .await
    }
}
