//! GetOfflineLicense end to end: the exact upstream request, the answer, metadata, validation
//! and path-segment encoding.

mod common;

use common::*;
use msstore_facade::proto::msstore::v1 as pb;
use tonic::Code;
use wiremock::ResponseTemplate;

fn with_ids(template: ResponseTemplate) -> ResponseTemplate {
    template
        .insert_header("MS-CorrelationId", "corr-1")
        .insert_header("MS-RequestId", "req-1")
        .insert_header("MS-CV", "xu2HW6SrSkyfHyFh.0.1.0")
        .insert_header("MS-ServerId", "server-7")
}

#[tokio::test]
async fn offline_license_sends_the_documented_request() {
    let h = Harness::start().await;
    h.mount_license(ResponseTemplate::new(200).set_body_json(license_body()))
        .await;
    let mut request = tonic::Request::new(license_request());
    request
        .metadata_mut()
        .insert("ms-cv", "xu2HW6SrSkyfHyFh.4".parse().unwrap());
    request.metadata_mut().insert(
        "traceparent",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
            .parse()
            .unwrap(),
    );
    h.entitlements().get_offline_license(request).await.unwrap();

    let requests = Harness::requests(&h.business).await;
    assert_eq!(requests.len(), 1);
    let sent = &requests[0];
    assert_eq!(sent.method.as_str(), "POST");
    assert_eq!(
        sent.url.path(),
        "/V1/Products/9NBLGGH4R2R6/0016/OfflineLicense/c-1"
    );
    assert_eq!(sent.url.query(), None);
    let header = |name: &str| {
        sent.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    assert_eq!(
        header("authorization"),
        Some(format!("Bearer {TOKEN_PREFIX}-1"))
    );
    assert_eq!(header("content-length").as_deref(), Some("0"));
    assert!(sent.body.is_empty());
    assert!(header("user-agent").unwrap().starts_with("msstore-facade/"));
    assert_eq!(header("ms-cv").as_deref(), Some("xu2HW6SrSkyfHyFh.4.1"));
    let traceparent = header("traceparent").unwrap();
    assert!(
        traceparent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-")
            && traceparent.ends_with("-01"),
        "{traceparent}"
    );
}

#[tokio::test]
async fn offline_license_answer_is_mapped_field_by_field() {
    let h = Harness::start().await;
    h.mount_license(with_ids(
        ResponseTemplate::new(200).set_body_json(license_body()),
    ))
    .await;
    let response = h
        .entitlements()
        .get_offline_license(license_request())
        .await
        .unwrap();
    let metadata = response.metadata().clone();
    let license = response.into_inner();
    assert_eq!(
        license,
        pb::OfflineLicense {
            product_key: Some(pb::ProductKey {
                product_id: "9NBLGGH4R2R6".into(),
                sku_id: "0016".into(),
            }),
            license_blob: "PExpY2Vuc2U+c2lnbmVkPC9MaWNlbnNlPg==".into(),
            license_instance_id: "3".into(),
            requestor_id: "contoso".into(),
            content_id: "c-1".into(),
        }
    );
    for (name, value) in [
        ("ms-correlationid", "corr-1"),
        ("ms-requestid", "req-1"),
        ("ms-cv", "xu2HW6SrSkyfHyFh.0.1.0"),
        ("ms-serverid", "server-7"),
    ] {
        assert_eq!(
            metadata.get(name).unwrap().to_str().unwrap(),
            value,
            "{name}"
        );
    }
}

#[tokio::test]
async fn upstream_ids_come_back_as_trailing_metadata_on_error() {
    let h = Harness::start().await;
    h.mount_license(with_ids(ResponseTemplate::new(404))).await;
    let status = h
        .entitlements()
        .get_offline_license(license_request())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(status.metadata().get("ms-correlationid").unwrap(), "corr-1");
    assert_eq!(status.metadata().get("ms-serverid").unwrap(), "server-7");
    let info = error_info(&status);
    assert_eq!(
        info.metadata.get("ms_correlationid").map(String::as_str),
        Some("corr-1")
    );
    assert_eq!(
        info.metadata.get("http_status").map(String::as_str),
        Some("404")
    );
}

#[tokio::test]
async fn ids_are_percent_encoded_as_single_segments() {
    let h = Harness::start().await;
    h.mount_license(ResponseTemplate::new(200).set_body_json(license_body()))
        .await;
    let cases = [
        ("a/b", "a%2Fb"),
        ("../admin", "..%2Fadmin"),
        ("...", "..."),
        ("50%", "50%25"),
        ("q?x=1", "q%3Fx%3D1"),
        ("frag#x", "frag%23x"),
        ("ünï cødé", "%C3%BCn%C3%AF%20c%C3%B8d%C3%A9"),
        (&"x".repeat(256), &"x".repeat(256)),
    ];
    for (id, _) in &cases {
        let request = pb::GetOfflineLicenseRequest {
            product_id: id.to_string(),
            sku_id: id.to_string(),
            content_id: id.to_string(),
            tenant_id: String::new(),
        };
        h.entitlements().get_offline_license(request).await.unwrap();
    }
    let requests = Harness::requests(&h.business).await;
    for ((id, encoded), sent) in cases.iter().zip(&requests) {
        let raw_path = &sent.url[url::Position::BeforePath..];
        assert_eq!(
            raw_path,
            format!("/V1/Products/{encoded}/{encoded}/OfflineLicense/{encoded}"),
            "{id}"
        );
    }
}

#[tokio::test]
async fn invalid_ids_are_rejected_before_any_call_with_one_violation_each() {
    let h = Harness::start().await;
    let long = "x".repeat(257);
    let cases: [(&str, &str, &str, &[&str]); 6] = [
        ("", "0016", "c", &["product_id"]),
        (".", "..", "c", &["product_id", "sku_id"]),
        ("p", "s", "", &["content_id"]),
        (&long, "s", "c", &["product_id"]),
        ("p", "s\u{0}x", "c\r\n", &["sku_id", "content_id"]),
        ("", "", "", &["product_id", "sku_id", "content_id"]),
    ];
    for (product_id, sku_id, content_id, fields) in cases {
        let request = pb::GetOfflineLicenseRequest {
            product_id: product_id.into(),
            sku_id: sku_id.into(),
            content_id: content_id.into(),
            tenant_id: String::new(),
        };
        let status = h
            .entitlements()
            .get_offline_license(request)
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{fields:?}");
        assert_eq!(bad_fields(&status), *fields);
        let info = error_info(&status);
        assert_eq!(info.reason, "INVALID_REQUEST");
        assert_eq!(info.domain, "msstore-facade");
    }
    assert!(Harness::requests(&h.business).await.is_empty());
    assert!(h.token_requests().await.is_empty());
}

#[tokio::test]
async fn tenant_id_selects_the_token_tenant_and_bad_tenants_are_rejected() {
    let h = Harness::start().await;
    h.mount_license(ResponseTemplate::new(200).set_body_json(license_body()))
        .await;
    let mut request = license_request();
    request.tenant_id = "72F988BF-86F1-41AF-91AB-2D7CD011DB47".into();
    h.entitlements().get_offline_license(request).await.unwrap();
    h.entitlements()
        .get_offline_license(license_request())
        .await
        .unwrap();
    let paths: Vec<String> = h.token_paths().await;
    assert_eq!(
        paths,
        [
            "/72f988bf-86f1-41af-91ab-2d7cd011db47/oauth2/v2.0/token",
            "/contoso.onmicrosoft.com/oauth2/v2.0/token"
        ]
    );
    for bad in ["common/../x", "not a tenant", "evil.com/path", "contoso"] {
        let mut request = license_request();
        request.tenant_id = bad.into();
        let status = h
            .entitlements()
            .get_offline_license(request)
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{bad}");
        assert_eq!(bad_fields(&status), ["tenant_id"]);
    }
    assert_eq!(h.token_requests().await.len(), 2);
}
