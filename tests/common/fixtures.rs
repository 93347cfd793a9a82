//! Request and answer bodies, keys and JWTs the tests send or have the upstreams answer.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use msstore_facade::proto::msstore::v1 as pb;
use serde_json::{json, Value};

use super::CLIENT_ID;

/// Decodes an `application/x-www-form-urlencoded` body.
pub fn form(body: &[u8]) -> Vec<(String, String)> {
    url::form_urlencoded::parse(body).into_owned().collect()
}

/// A well-formed `OfflineLicense` body.
pub fn license_body() -> Value {
    json!({
        "productKey": {"productId": "9NBLGGH4R2R6", "skuId": "0016"},
        "licenseBlob": "PExpY2Vuc2U+c2lnbmVkPC9MaWNlbnNlPg==",
        "licenseInstanceId": "3",
        "requestorId": "contoso",
        "contentId": "c-1",
        "futureField": {"ignored": true}
    })
}

/// A JWT-shaped Store key (unsigned) with these claims.
pub fn store_key(aud: &str, iat: i64, exp: i64) -> String {
    jwt(&json!({
        "aud": aud,
        "iss": aud,
        "iat": iat,
        "nbf": iat,
        "exp": exp,
        "http://schemas.microsoft.com/marketplace/2015/08/claims/key/clientId": CLIENT_ID,
        "http://schemas.microsoft.com/marketplace/2015/08/claims/key/refreshUri": "https://refresh.invalid/never-called",
        "http://schemas.microsoft.com/marketplace/2015/08/claims/key/payload": "opaque",
    }))
}

/// A JWT (header `RS256`, signature bytes fixed) with `claims` as payload.
pub fn jwt(claims: &Value) -> String {
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        URL_SAFE_NO_PAD.encode(b"signature-bytes")
    )
}

/// A ServiceError body as the Store sends it, the inner code only inside `innererror.data`.
pub fn service_error(code: &str, inner_code: &str) -> Value {
    json!({
        "code": code,
        "message": "The request failed.",
        "source": "b2b",
        "data": [],
        "details": [],
        "innererror": {
            "code": "AuthenticationFailure",
            "message": "Authentication failed.",
            "source": "auth",
            "details": [],
            "data": [format!("MSA : {{ : {inner_code} : Details of {inner_code} }}")]
        }
    })
}

/// A valid request for an offline license.
pub fn license_request() -> pb::GetOfflineLicenseRequest {
    pb::GetOfflineLicenseRequest {
        product_id: "9NBLGGH4R2R6".into(),
        sku_id: "0016".into(),
        content_id: "c-1".into(),
        tenant_id: String::new(),
    }
}

/// Seconds since the Unix epoch.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// The claims of a JWT, read without checking the signature.
pub fn claims(jwt: &str) -> Value {
    let payload = jwt.split('.').nth(1).expect("three parts");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("base64url")).expect("JSON")
}
