//! `msstore.v1.StoreEntitlements`.

use tonic::{Request, Response, Status};

use super::call::CallContext;
use super::validation::Checks;
use super::{with_own_token, Backends};
use crate::error::{ApiError, Operation};
use crate::proto::msstore::v1 as pb;
use crate::upstream::{self, Answer, LicenseIds};

/// The `StoreEntitlements` service.
#[derive(Clone)]
pub struct EntitlementsService {
    backends: Backends,
}

impl EntitlementsService {
    /// A service over `backends`.
    pub fn new(backends: Backends) -> Self {
        Self { backends }
    }

    async fn offline_license(
        &self,
        request: pb::GetOfflineLicenseRequest,
        call: &CallContext,
    ) -> Result<Answer<pb::OfflineLicense>, ApiError> {
        let mut checks = Checks::default();
        checks.store_id("product_id", &request.product_id);
        checks.store_id("sku_id", &request.sku_id);
        checks.store_id("content_id", &request.content_id);
        let tenant = checks.tenant("tenant_id", &request.tenant_id);
        checks.finish()?;
        let ids = LicenseIds {
            product_id: &request.product_id,
            sku_id: &request.sku_id,
            content_id: &request.content_id,
        };
        let store = &self.backends.store;
        let answer = with_own_token(
            &self.backends.tokens,
            tenant.as_ref(),
            call,
            |token| async move {
                store
                    .offline_license(ids, &token, &call.next_attempt())
                    .await
                    .map_err(|error| ApiError::upstream(Operation::GetOfflineLicense, error))
            },
        )
        .await?;
        Ok(Answer {
            value: to_proto(answer.value),
            ids: answer.ids,
            http_status: answer.http_status,
        })
    }
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
        let (call, request) = CallContext::begin("GetOfflineLicense", request);
        call.complete(self.offline_license(request, &call)).await
    }
}
