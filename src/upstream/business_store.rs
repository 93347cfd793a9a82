//! Store for Business: `POST /V1/Products/{productId}/{skuId}/OfflineLicense/{contentId}`.

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use reqwest::header::{HeaderValue, AUTHORIZATION, CONTENT_LENGTH};
use serde::Deserialize;

use super::{Answer, Correlation, Route, StoreClient, UpstreamError};
use crate::auth::AccessToken;

/// Everything but RFC 3986 unreserved characters is escaped, so an id is always exactly one
/// path segment: `/`, `%`, `?`, `#` and non-ASCII can never change the path called.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The ids naming one offline license, already validated by the caller of this module.
#[derive(Debug, Clone, Copy)]
pub struct LicenseIds<'a> {
    /// Product id.
    pub product_id: &'a str,
    /// SKU id.
    pub sku_id: &'a str,
    /// Content id.
    pub content_id: &'a str,
}

/// The product and SKU of a license.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProductKey {
    /// Product id.
    #[serde(default)]
    pub product_id: Option<String>,
    /// SKU id.
    #[serde(default)]
    pub sku_id: Option<String>,
}

/// The `OfflineLicense` body; only `licenseBlob` is required, unknown fields are ignored.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OfflineLicense {
    /// Product and SKU.
    #[serde(default)]
    pub product_key: Option<ProductKey>,
    /// The base64 license, verbatim.
    pub license_blob: String,
    /// License version.
    #[serde(default)]
    pub license_instance_id: Option<String>,
    /// Requesting organisation.
    #[serde(default)]
    pub requestor_id: Option<String>,
    /// Content id.
    #[serde(default)]
    pub content_id: Option<String>,
}

const LICENSE_ROUTE: Route = Route {
    name: "POST /V1/Products/{productId}/{skuId}/OfflineLicense/{contentId}",
    method: "POST",
    template: "/V1/Products/{productId}/{skuId}/OfflineLicense/{contentId}",
};

impl StoreClient {
    /// Fetches one offline license with `token`.
    pub async fn offline_license(
        &self,
        ids: LicenseIds<'_>,
        token: &AccessToken,
        correlation: &Correlation,
    ) -> Result<Answer<OfflineLicense>, UpstreamError> {
        let url = format!(
            "{}/V1/Products/{}/{}/OfflineLicense/{}",
            self.business.prefix,
            utf8_percent_encode(ids.product_id, SEGMENT),
            utf8_percent_encode(ids.sku_id, SEGMENT),
            utf8_percent_encode(ids.content_id, SEGMENT),
        );
        let request = self
            .http
            .post(url)
            .header(AUTHORIZATION, token.bearer())
            .header(CONTENT_LENGTH, HeaderValue::from_static("0"));
        let host = &self.business.host;
        let (status, ids, body) = self
            .exchange(&self.business, LICENSE_ROUTE, request, correlation)
            .await?;
        let value = serde_json::from_slice::<OfflineLicense>(&body)
            .ok()
            .filter(|license| !license.license_blob.is_empty())
            .ok_or_else(|| UpstreamError::Malformed {
                host: host.clone(),
                http_status: status.as_u16(),
                ids: ids.clone(),
                expected: "an OfflineLicense with a licenseBlob",
            })?;
        Ok(Answer {
            value,
            ids,
            http_status: status.as_u16(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_single_escaped_segments() {
        let encode = |s| utf8_percent_encode(s, SEGMENT).to_string();
        assert_eq!(encode("9NBLGGH4R2R6"), "9NBLGGH4R2R6");
        assert_eq!(encode("a/../b"), "a%2F..%2Fb");
        assert_eq!(encode("50%?#x"), "50%25%3F%23x");
        assert_eq!(encode("é"), "%C3%A9");
    }

    #[test]
    fn license_parses_leniently() {
        let body = br#"{"licenseBlob":"QUJD","productKey":{"productId":"p"},"extra":1,"requestorId":null}"#;
        let license: OfflineLicense = serde_json::from_slice(body).unwrap();
        assert_eq!(license.license_blob, "QUJD");
        assert_eq!(
            license.product_key.unwrap().product_id.as_deref(),
            Some("p")
        );
        assert!(license.requestor_id.is_none());
    }
}
