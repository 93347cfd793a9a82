//! `StoreEntitlements/GetOfflineLicense` -> Store for Business
//! `POST /V1/Products/{productId}/{skuId}/OfflineLicense/{contentId}`.

use serde::Deserialize;

use crate::api::validation::{self as checks, Checks, Tenants};
use crate::api::{Credential, StoreOperation, Token};
use crate::auth::TenantId;
use crate::error::{ApiError, ErrorMapping, Retries};
use crate::proto::msstore::v1 as pb;
use crate::telemetry::otel::Route;
use crate::upstream::{segment, Host, UpstreamRequest};

/// Fetches the offline license of one product, SKU and content id.
#[derive(Debug)]
pub struct GetOfflineLicense;

/// A validated license request: what makes two calls identical (same ids, same tenant, the
/// configured one when the caller names none, and so the same token of the facade's own
/// credential).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LicenseRequest {
    tenant: TenantId,
    product_id: String,
    sku_id: String,
    content_id: String,
}

/// The product and SKU of a license.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProductKey {
    #[serde(default)]
    product_id: Option<String>,
    #[serde(default)]
    sku_id: Option<String>,
}

/// The `OfflineLicense` body; only `licenseBlob` is required, unknown fields are ignored.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OfflineLicense {
    #[serde(default)]
    product_key: Option<ProductKey>,
    license_blob: String,
    #[serde(default)]
    license_instance_id: Option<String>,
    #[serde(default)]
    requestor_id: Option<String>,
    #[serde(default)]
    content_id: Option<String>,
}

impl StoreOperation for GetOfflineLicense {
    type Request = pb::GetOfflineLicenseRequest;
    type Response = pb::OfflineLicense;
    type Prepared = LicenseRequest;
    type Answer = OfflineLicense;

    const ROUTE: &'static Route = &Route {
        name: "POST /V1/Products/{productId}/{skuId}/OfflineLicense/{contentId}",
        method: http::Method::POST,
        template: "/V1/Products/{productId}/{skuId}/OfflineLicense/{contentId}",
    };
    const ERRORS: &'static ErrorMapping = &ErrorMapping {
        fields: &[
            ("productId", "product_id"),
            ("skuId", "sku_id"),
            ("contentId", "content_id"),
        ],
        overrides: &[],
        retries: Retries::Transient,
    };
    const EXPECTED: &'static str = "an OfflineLicense with a licenseBlob";
    const COALESCE: bool = true;

    fn validate(request: Self::Request, tenants: &Tenants) -> Result<LicenseRequest, ApiError> {
        let mut checks = Checks::default();
        checks.store_id("product_id", &request.product_id);
        checks.store_id("sku_id", &request.sku_id);
        checks.store_id("content_id", &request.content_id);
        let tenant = checks.tenant("tenant_id", &request.tenant_id);
        checks.finish()?;
        Ok(LicenseRequest {
            tenant: checks::acting_tenant(tenant, tenants)?,
            product_id: request.product_id,
            sku_id: request.sku_id,
            content_id: request.content_id,
        })
    }

    fn host(_: &LicenseRequest) -> Host {
        Host::BusinessStore
    }

    fn credential(prepared: &LicenseRequest) -> Credential<'_> {
        Credential::Facade {
            tenant: Some(&prepared.tenant),
        }
    }

    fn request(prepared: &LicenseRequest, token: &Token<'_>) -> Result<UpstreamRequest, ApiError> {
        let path = format!(
            "/V1/Products/{}/{}/OfflineLicense/{}",
            segment(&prepared.product_id),
            segment(&prepared.sku_id),
            segment(&prepared.content_id),
        );
        Ok(UpstreamRequest::new(Self::ROUTE, path).authorization(token.bearer()?))
    }

    /// Ids only, besides the token.
    fn secrets(_: &LicenseRequest) -> impl Iterator<Item = &str> {
        std::iter::empty()
    }

    fn parse(body: &[u8]) -> Option<OfflineLicense> {
        serde_json::from_slice::<OfflineLicense>(body)
            .ok()
            .filter(|license| !license.license_blob.is_empty())
    }

    fn respond(license: OfflineLicense, _: &LicenseRequest) -> pb::OfflineLicense {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn license_parses_leniently() {
        let body = br#"{"licenseBlob":"QUJD","productKey":{"productId":"p"},"extra":1,"requestorId":null}"#;
        let license = GetOfflineLicense::parse(body).unwrap();
        assert_eq!(license.license_blob, "QUJD");
        assert_eq!(
            license.product_key.unwrap().product_id.as_deref(),
            Some("p")
        );
        assert!(license.requestor_id.is_none());
        assert!(GetOfflineLicense::parse(br#"{"licenseBlob":""}"#).is_none());
    }
}
