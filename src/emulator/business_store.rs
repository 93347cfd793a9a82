//! Store for Business: `POST /bspmts/V1/Products/{productId}/{skuId}/OfflineLicense/{contentId}`.
//! A valid emulator access token gets a deterministic `OfflineLicense`: the same tenant and
//! ids always give the same license. A magic product id fails on purpose instead.

use axum::extract::{ConnectInfo, Path};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::json;

use super::clock::{fnv1a, guid_for};
use super::connection::ConnectionControl;
use super::entra::bearer_ticket;
use super::magic::Magic;
use super::store_answer;

/// The ids in the path, percent-decoded.
type LicensePath = (String, String, String);

/// The Store for Business routes.
pub(super) fn routes() -> axum::Router<super::EmulatorState> {
    axum::Router::new().route(
        &format!(
            "{}/V1/Products/{{product_id}}/{{sku_id}}/OfflineLicense/{{content_id}}",
            super::BUSINESS_STORE_PREFIX
        ),
        axum::routing::post(offline_license),
    )
}

/// `POST /bspmts/V1/Products/{productId}/{skuId}/OfflineLicense/{contentId}`.
async fn offline_license(
    Path((product_id, sku_id, content_id)): Path<LicensePath>,
    ConnectInfo(connection): ConnectInfo<ConnectionControl>,
    headers: HeaderMap,
) -> Response {
    if let Some(magic) = Magic::parse(&product_id) {
        if let Some(answer) = magic.apply(&headers, "productId", &connection).await {
            return answer;
        }
    }
    let ticket = match bearer_ticket(&headers) {
        Ok(ticket) => ticket,
        Err(refusal) => return *refusal,
    };
    let license = License {
        tenant: &ticket.tid,
        product_id: &product_id,
        sku_id: &sku_id,
        content_id: &content_id,
    };
    store_answer::json_answer(StatusCode::OK, &headers, &license.to_json())
}

/// One deterministic offline license.
struct License<'a> {
    tenant: &'a str,
    product_id: &'a str,
    sku_id: &'a str,
    content_id: &'a str,
}

impl License<'_> {
    fn ids(&self) -> [&str; 4] {
        [self.tenant, self.product_id, self.sku_id, self.content_id]
    }

    fn to_json(&self) -> serde_json::Value {
        let instance = guid_for(&self.ids());
        json!({
            "productKey": {"productId": self.product_id, "skuId": self.sku_id},
            "licenseBlob": STANDARD.encode(self.document(&instance)),
            "licenseInstanceId": instance,
            "requestorId": self.tenant,
            "contentId": self.content_id,
        })
    }

    /// The license the blob carries: an XML document that says plainly it is emulated.
    fn document(&self, instance: &str) -> String {
        format!(
            concat!(
                r#"<?xml version="1.0" encoding="utf-8"?>"#,
                r#"<License xmlns="urn:msstore-facade:sandbox-emulator" Emulated="true" Version="1">"#,
                "<ProductId>{}</ProductId><SkuId>{}</SkuId><ContentId>{}</ContentId>",
                "<RequestorId>{}</RequestorId><LicenseInstanceId>{}</LicenseInstanceId>",
                "<Binding>{:016x}</Binding></License>"
            ),
            xml_text(self.product_id),
            xml_text(self.sku_id),
            xml_text(self.content_id),
            xml_text(self.tenant),
            instance,
            fnv1a(&self.ids(), 3),
        )
    }
}

fn xml_text(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '&' => "&amp;".to_owned(),
            '<' => "&lt;".to_owned(),
            '>' => "&gt;".to_owned(),
            '"' => "&quot;".to_owned(),
            c if c.is_control() => format!("&#x{:x};", u32::from(c)),
            c => c.to_string(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn licenses_are_deterministic_per_tenant_and_ids() {
        let license = |tenant| License {
            tenant,
            product_id: "9NBLGGH4R2R6",
            sku_id: "0016",
            content_id: "<c&1>",
        };
        let a = license("t1").to_json();
        assert_eq!(a, license("t1").to_json());
        assert_ne!(a["licenseBlob"], license("t2").to_json()["licenseBlob"]);
        let blob = STANDARD.decode(a["licenseBlob"].as_str().unwrap()).unwrap();
        let xml = String::from_utf8(blob).unwrap();
        assert!(
            xml.contains("<ContentId>&lt;c&amp;1&gt;</ContentId>"),
            "{xml}"
        );
        assert!(xml.contains(r#"Emulated="true""#));
    }
}
