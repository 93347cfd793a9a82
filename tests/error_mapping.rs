//! The contract's error table (section 4), row by row, end to end: the gRPC code, ErrorInfo
//! (reason, domain, `http_status` and upstream ids), RetryInfo and BadRequest where the table
//! says, for both RPCs where a row applies to both; and nothing the caller sees (message,
//! details, metadata) carries a secret, a token, a key or a full upstream URL.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use common::*;
use msstore_facade::auth::TenantId;
use msstore_facade::auth::{CredentialSource, Credentials};
use msstore_facade::proto::msstore::v1 as pb;
use msstore_facade::Settings;
use pb::store_entitlements_client::StoreEntitlementsClient;
use pb::store_keys_client::StoreKeysClient;
use secrecy::SecretString;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tonic::metadata::KeyAndValueRef;
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_types::{ErrorInfo, StatusExt};
use wiremock::matchers::{method, path_regex};
use wiremock::{Mock, MockServer, ResponseTemplate};

/// `ErrorInfo.domain` of the facade's own errors.
const FACADE: &str = "msstore-facade";
/// `ErrorInfo.domain` of errors the (loopback) Store answered: its host without port.
const STORE: &str = "127.0.0.1";
/// A service ticket a caller brings: must never come back.
const CALLER_TICKET: &str = "eyJ0eXAiOiJKV1QifQ.caller-ticket-never-log-me";
/// No answer may carry this: the client secret, the tokens and the caller's ticket all contain it.
const NEVER: &str = "never-log-me";

// ---------------------------------------------------------------------------------------------
// The two RPCs, called the same way.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rpc {
    GetOfflineLicense,
    RenewKey,
}

const BOTH: [Rpc; 2] = [Rpc::GetOfflineLicense, Rpc::RenewKey];

/// A live collections key (renewed on the collections host).
fn collections_key() -> String {
    store_key(COLLECTIONS_AUD, now() - 3600, now() + 29 * 24 * 3600)
}

fn renew_request() -> pb::RenewKeyRequest {
    pb::RenewKeyRequest {
        key: collections_key(),
        key_type: pb::KeyType::Unspecified as i32,
        service_ticket: String::new(),
    }
}

impl Rpc {
    /// The Store answers this RPC's upstream request with `template`.
    async fn mount(self, h: &Harness, template: ResponseTemplate) {
        match self {
            Self::GetOfflineLicense => h.mount_license(template).await,
            Self::RenewKey => h.mount_renew(template).await,
        }
    }

    /// The upstream this RPC's (collections key) request goes to.
    fn store(self, h: &Harness) -> &MockServer {
        match self {
            Self::GetOfflineLicense => &h.business,
            Self::RenewKey => &h.collections,
        }
    }

    /// A well-formed 2xx answer for this RPC.
    fn ok_body(self) -> Value {
        match self {
            Self::GetOfflineLicense => license_body(),
            Self::RenewKey => json!({ "key": collections_key() }),
        }
    }

    /// Calls the RPC with a valid request (RenewKey with the facade's own token).
    async fn call(self, channel: &Channel, timeout: Option<Duration>) -> Result<(), Status> {
        match self {
            Self::GetOfflineLicense => {
                let mut request = tonic::Request::new(license_request());
                if let Some(timeout) = timeout {
                    request.set_timeout(timeout);
                }
                StoreEntitlementsClient::new(channel.clone())
                    .get_offline_license(request)
                    .await
                    .map(drop)
            }
            Self::RenewKey => renew(channel, renew_request(), timeout).await,
        }
    }

    /// Calls the RPC, which must fail.
    async fn fail(self, channel: &Channel) -> Status {
        match self.call(channel, None).await {
            Ok(()) => panic!("{self:?} succeeded where it must fail"),
            Err(status) => status,
        }
    }
}

async fn renew(
    channel: &Channel,
    message: pb::RenewKeyRequest,
    timeout: Option<Duration>,
) -> Result<(), Status> {
    let mut request = tonic::Request::new(message);
    if let Some(timeout) = timeout {
        request.set_timeout(timeout);
    }
    StoreKeysClient::new(channel.clone())
        .renew_key(request)
        .await
        .map(drop)
}

// ---------------------------------------------------------------------------------------------
// Assertions.

/// Checks code, ErrorInfo reason and domain, and that nothing leaks; returns the ErrorInfo.
#[track_caller]
fn expect(status: &Status, case: &str, code: Code, reason: &str, domain: &str) -> ErrorInfo {
    assert_eq!(status.code(), code, "{case}: {status:?}");
    let info = error_info(status);
    assert_eq!(info.reason, reason, "{case}: {status:?}");
    assert_eq!(info.domain, domain, "{case}: {status:?}");
    assert!(
        !info.reason.is_empty()
            && info
                .reason
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'),
        "{case}: reason {:?} is not UPPER_SNAKE",
        info.reason
    );
    assert_no_leaks(status, case);
    info
}

/// The message, the details and the metadata carry no secret, token, key or upstream URL.
#[track_caller]
fn assert_no_leaks(status: &Status, case: &str) {
    let mut seen = vec![
        ("message", status.message().to_owned()),
        (
            "details",
            String::from_utf8_lossy(status.details()).into_owned(),
        ),
    ];
    for entry in status.metadata().iter() {
        if let KeyAndValueRef::Ascii(name, value) = entry {
            seen.push((
                "metadata",
                format!("{}: {}", name, value.to_str().unwrap_or_default()),
            ));
        }
    }
    let forbidden = [
        CLIENT_SECRET,
        NEVER,
        TOKEN_PREFIX,
        // Every JWT (tokens, tickets and keys alike) starts with a base64 `{"`.
        "eyJ",
        "http://127.0.0.1:",
        "refresh.invalid",
    ];
    for (place, text) in &seen {
        for bad in forbidden {
            assert!(
                !text.contains(bad),
                "{case}: {place} contains {bad:?}: {text:?}"
            );
        }
    }
    assert!(
        !status.message().contains("://"),
        "{case}: the message names a URL: {:?}",
        status.message()
    );
}

fn meta<'a>(info: &'a ErrorInfo, key: &str) -> Option<&'a str> {
    info.metadata.get(key).map(String::as_str)
}

/// `ErrorInfo.metadata.http_status` is `expected`.
#[track_caller]
fn expect_http_status(info: &ErrorInfo, case: &str, expected: u16) {
    assert_eq!(
        meta(info, "http_status"),
        Some(expected.to_string().as_str()),
        "{case}: {info:?}"
    );
}

/// The upstream ids of [`with_ids`] are in ErrorInfo and in the trailing metadata.
#[track_caller]
fn expect_upstream_ids(status: &Status, info: &ErrorInfo, case: &str) {
    for (header, value) in [
        ("ms-correlationid", "corr-1"),
        ("ms-requestid", "req-1"),
        ("ms-cv", "xu2HW6SrSkyfHyFh.0.1.0"),
        ("ms-serverid", "server-7"),
    ] {
        assert_eq!(
            meta(info, &header.replace('-', "_")),
            Some(value),
            "{case}: ErrorInfo {header}: {info:?}"
        );
        assert_eq!(
            status.metadata().get(header).and_then(|v| v.to_str().ok()),
            Some(value),
            "{case}: trailing {header}"
        );
    }
}

#[track_caller]
fn expect_retry(status: &Status, case: &str, expected: Duration) {
    assert_eq!(retry_delay(status), Some(expected), "{case}: RetryInfo");
}

#[track_caller]
fn expect_no_retry(status: &Status, case: &str) {
    assert!(
        status.get_details_retry_info().is_none(),
        "{case}: unexpected RetryInfo on {status:?}"
    );
}

#[track_caller]
fn expect_no_bad_request(status: &Status, case: &str) {
    assert!(
        status.get_details_bad_request().is_none(),
        "{case}: unexpected BadRequest on {status:?}"
    );
}

/// The Store's correlation headers on an answer.
fn with_ids(template: ResponseTemplate) -> ResponseTemplate {
    template
        .insert_header("MS-CorrelationId", "corr-1")
        .insert_header("MS-RequestId", "req-1")
        .insert_header("MS-CV", "xu2HW6SrSkyfHyFh.0.1.0")
        .insert_header("MS-ServerId", "server-7")
}

/// A Store error body whose message echoes a token, a key and the upstream URL, as a
/// careless upstream might: none of it may reach the caller.
fn echoing_body(code: &str) -> Value {
    json!({
        "code": code,
        "message": format!(
            "Request POST http://127.0.0.1:1/v6.0/b2b/keys/renew with token {TOKEN_PREFIX}-1 \
             and key {} failed",
            collections_key()
        ),
    })
}

// ---------------------------------------------------------------------------------------------
// Facades built by hand, and upstreams that misbehave at the TCP level.

fn secret_credentials() -> Credentials {
    Credentials {
        tenant_id: TenantId::parse(TENANT).unwrap(),
        client_id: CLIENT_ID.to_owned(),
        source: CredentialSource::ClientSecret(SecretString::from(CLIENT_SECRET)),
    }
}

/// A token endpoint that hands out tokens.
async fn token_server() -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path_regex(r"^/[^/]+/oauth2/v2\.0/token$"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "token_type": "Bearer",
            "expires_in": 3599,
            "access_token": format!("{TOKEN_PREFIX}-1"),
        })))
        .mount(&server)
        .await;
    server
}

/// `http://127.0.0.1:<port>` where nothing listens (a port just bound and released).
fn closed_port_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}")
}

/// A facade whose three Store hosts are `store_base`, with a working token endpoint.
async fn facade_with_store_at(store_base: &str) -> (MockServer, Facade) {
    let token = token_server().await;
    let mut settings = Settings::for_upstream(store_base).expect("valid base URL");
    settings.authority_host = token.uri().parse().unwrap();
    settings.credentials = Some(secret_credentials());
    (token, Facade::start(settings).await)
}

/// How a raw upstream breaks the exchange, after reading the whole request.
#[derive(Debug, Clone, Copy)]
enum Breakage {
    /// RST (SO_LINGER 0) before any byte of an answer.
    ResetBeforeAnswer,
    /// Part of the status line and headers, then FIN.
    CutMidHeaders,
    /// Headers promising 4096 bytes, a few of them, then FIN.
    CutMidBody,
    /// Headers promising 4096 bytes, a few of them, then RST.
    ResetMidBody,
    /// A 429 with `Retry-After: 30` whose error body is cut off (FIN).
    CutMidErrorBody,
}

const PARTIAL_ANSWER: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
    Content-Length: 4096\r\nMS-CorrelationId: corr-1\r\n\r\n{\"licenseBlob\":\"QUJD";

const THROTTLED_CUT: &[u8] = b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 30\r\n\
    Content-Type: application/json\r\nContent-Length: 4096\r\n\r\n{\"code\":\"Throttled\",";

/// A loopback HTTP/1.1 "server" that breaks every exchange the way `breakage` says.
async fn broken_upstream(breakage: Breakage) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                read_request(&mut stream).await;
                match breakage {
                    Breakage::ResetBeforeAnswer => {
                        let _ = stream.set_zero_linger();
                    }
                    Breakage::CutMidHeaders => {
                        let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Le").await;
                        let _ = stream.shutdown().await;
                    }
                    Breakage::CutMidBody => {
                        let _ = stream.write_all(PARTIAL_ANSWER).await;
                        let _ = stream.shutdown().await;
                    }
                    Breakage::CutMidErrorBody => {
                        let _ = stream.write_all(THROTTLED_CUT).await;
                        let _ = stream.shutdown().await;
                    }
                    Breakage::ResetMidBody => {
                        let _ = stream.write_all(PARTIAL_ANSWER).await;
                        let _ = stream.flush().await;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        let _ = stream.set_zero_linger();
                    }
                }
                drop(stream);
            });
        }
    });
    addr
}

/// Reads one HTTP/1.1 request: the head, then `Content-Length` bytes of body.
async fn read_request(stream: &mut TcpStream) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let body_len = head
                .lines()
                .find_map(|line| line.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + body_len {
                return;
            }
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// local validation fails -> INVALID_ARGUMENT, BadRequest one violation per bad field

#[tokio::test]
async fn local_validation_failure_maps_to_invalid_argument_with_one_violation_per_field() {
    let h = Harness::start().await;
    let mut license = license_request();
    license.sku_id = String::new();
    license.content_id = "..".into();
    let status = h
        .entitlements()
        .get_offline_license(license)
        .await
        .unwrap_err();
    expect(
        &status,
        "GetOfflineLicense",
        Code::InvalidArgument,
        "INVALID_REQUEST",
        FACADE,
    );
    assert_eq!(bad_fields(&status), ["sku_id", "content_id"]);

    let status = renew(
        &h.facade.channel,
        pb::RenewKeyRequest {
            key: String::new(),
            key_type: 7,
            service_ticket: format!("{CALLER_TICKET}\u{7}"),
        },
        None,
    )
    .await
    .unwrap_err();
    expect(
        &status,
        "RenewKey",
        Code::InvalidArgument,
        "INVALID_REQUEST",
        FACADE,
    );
    assert_eq!(bad_fields(&status), ["key", "service_ticket", "key_type"]);

    assert!(Harness::requests(&h.business).await.is_empty());
    assert!(Harness::requests(&h.collections).await.is_empty());
    assert!(h.token_requests().await.is_empty());
}

// ---------------------------------------------------------------------------------------------
// upstream 400 -> INVALID_ARGUMENT, BadRequest when the body names the field

fn invalid_parameter(named: &str) -> Value {
    json!({
        "code": "BadRequest",
        "message": "The request is invalid.",
        "innererror": {
            "code": "InvalidParameter",
            "message": "A parameter is invalid.",
            "data": [format!("{named} : is not valid")]
        }
    })
}

#[tokio::test]
async fn upstream_400_naming_a_field_maps_to_invalid_argument_with_bad_request_on_the_proto_field()
{
    let cases = [
        (Rpc::GetOfflineLicense, "productId", "product_id"),
        (Rpc::GetOfflineLicense, "skuId", "sku_id"),
        (Rpc::GetOfflineLicense, "contentId", "content_id"),
        (Rpc::RenewKey, "serviceTicket", "service_ticket"),
        (Rpc::RenewKey, "key", "key"),
    ];
    for (rpc, named, field) in cases {
        let case = format!("{rpc:?} 400 naming {named}");
        let h = Harness::start().await;
        rpc.mount(
            &h,
            with_ids(ResponseTemplate::new(400).set_body_json(invalid_parameter(named))),
        )
        .await;
        let status = rpc.fail(&h.facade.channel).await;
        let info = expect(
            &status,
            &case,
            Code::InvalidArgument,
            "INVALID_PARAMETER",
            STORE,
        );
        expect_http_status(&info, &case, 400);
        expect_upstream_ids(&status, &info, &case);
        assert_eq!(bad_fields(&status), [field], "{case}");
        expect_no_retry(&status, &case);
    }
}

#[tokio::test]
async fn upstream_400_naming_no_field_maps_to_invalid_argument_without_bad_request() {
    let bodies = [
        (
            "ServiceError",
            ResponseTemplate::new(400).set_body_json(json!({
                "code": "BadRequest",
                "message": "Something about this request is wrong.",
                "innererror": {"code": "InvalidParameter", "data": ["one of the values is wrong"]}
            })),
            "INVALID_PARAMETER",
        ),
        (
            "plain text",
            ResponseTemplate::new(400).set_body_string("Bad Request: SKU unknown"),
            "BAD_REQUEST",
        ),
        ("empty", ResponseTemplate::new(400), "BAD_REQUEST"),
    ];
    for rpc in BOTH {
        for (name, template, reason) in &bodies {
            let case = format!("{rpc:?} 400 {name}");
            let h = Harness::start().await;
            rpc.mount(&h, template.clone()).await;
            let status = rpc.fail(&h.facade.channel).await;
            let info = expect(&status, &case, Code::InvalidArgument, reason, STORE);
            expect_http_status(&info, &case, 400);
            expect_no_bad_request(&status, &case);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// upstream 401 -> UNAUTHENTICATED, reason from the Store inner code

const INNER_CODES: [(&str, &str); 3] = [
    ("AuthenticationTokenInvalid", "AUTHENTICATION_TOKEN_INVALID"),
    ("InconsistentClientId", "INCONSISTENT_CLIENT_ID"),
    ("PartnerAadTicketRequired", "PARTNER_AAD_TICKET_REQUIRED"),
];

#[tokio::test]
async fn upstream_401_inner_code_inside_innererror_data_becomes_the_reason() {
    for rpc in BOTH {
        for (inner, reason) in INNER_CODES {
            let case = format!("{rpc:?} 401 {inner} in innererror.data");
            let h = Harness::start().await;
            rpc.mount(
                &h,
                with_ids(
                    ResponseTemplate::new(401).set_body_json(service_error("Unauthorized", inner)),
                ),
            )
            .await;
            let status = rpc.fail(&h.facade.channel).await;
            let info = expect(&status, &case, Code::Unauthenticated, reason, STORE);
            expect_http_status(&info, &case, 401);
            expect_upstream_ids(&status, &info, &case);
            expect_no_retry(&status, &case);
        }
    }
}

#[tokio::test]
async fn upstream_401_inner_code_in_innererror_code_becomes_the_reason() {
    for rpc in BOTH {
        for (inner, reason) in INNER_CODES {
            let case = format!("{rpc:?} 401 {inner} in innererror.code");
            let h = Harness::start().await;
            let body = json!({
                "code": "Unauthorized",
                "message": "The request failed.",
                "innererror": {"code": inner, "message": "Authentication failed.", "data": []}
            });
            rpc.mount(&h, ResponseTemplate::new(401).set_body_json(body))
                .await;
            let status = rpc.fail(&h.facade.channel).await;
            let info = expect(&status, &case, Code::Unauthenticated, reason, STORE);
            expect_http_status(&info, &case, 401);
        }
    }
}

#[tokio::test]
async fn upstream_401_with_the_facades_token_is_retried_once_and_the_callers_ticket_is_not() {
    let h = Harness::start().await;
    let body = service_error("Unauthorized", "AuthenticationTokenInvalid");
    for rpc in BOTH {
        rpc.mount(&h, ResponseTemplate::new(401).set_body_json(body.clone()))
            .await;
        let status = rpc.fail(&h.facade.channel).await;
        expect(
            &status,
            &format!("{rpc:?} own token"),
            Code::Unauthenticated,
            "AUTHENTICATION_TOKEN_INVALID",
            STORE,
        );
        assert_eq!(Harness::requests(rpc.store(&h)).await.len(), 2, "{rpc:?}");
    }

    let mut request = renew_request();
    request.service_ticket = CALLER_TICKET.into();
    let status = renew(&h.facade.channel, request, None).await.unwrap_err();
    let info = expect(
        &status,
        "RenewKey caller ticket",
        Code::Unauthenticated,
        "AUTHENTICATION_TOKEN_INVALID",
        STORE,
    );
    expect_http_status(&info, "RenewKey caller ticket", 401);
    assert_eq!(Harness::requests(&h.collections).await.len(), 3);
}

// ---------------------------------------------------------------------------------------------
// 403, 404, 409, 412: one code each (409 depends on the RPC)

/// The Store answers `http` with the ids headers; the RPC ends in `code` with `reason`.
async fn check_plain_status(rpc: Rpc, http: u16, code: Code, reason: &str) {
    let case = format!("{rpc:?} HTTP {http}");
    let h = Harness::start().await;
    rpc.mount(
        &h,
        with_ids(ResponseTemplate::new(http).set_body_json(echoing_body("Failure"))),
    )
    .await;
    let status = rpc.fail(&h.facade.channel).await;
    let info = expect(&status, &case, code, reason, STORE);
    expect_http_status(&info, &case, http);
    expect_upstream_ids(&status, &info, &case);
    expect_no_retry(&status, &case);
    expect_no_bad_request(&status, &case);
}

#[tokio::test]
async fn upstream_403_maps_to_permission_denied() {
    for rpc in BOTH {
        check_plain_status(rpc, 403, Code::PermissionDenied, "FORBIDDEN").await;
    }
}

#[tokio::test]
async fn upstream_404_maps_to_not_found() {
    for rpc in BOTH {
        check_plain_status(rpc, 404, Code::NotFound, "NOT_FOUND").await;
    }
}

#[tokio::test]
async fn offline_license_409_maps_to_failed_precondition() {
    check_plain_status(
        Rpc::GetOfflineLicense,
        409,
        Code::FailedPrecondition,
        "CONFLICT",
    )
    .await;
}

#[tokio::test]
async fn renew_key_409_maps_to_aborted() {
    check_plain_status(Rpc::RenewKey, 409, Code::Aborted, "CONFLICT").await;
}

#[tokio::test]
async fn upstream_412_maps_to_failed_precondition() {
    for rpc in BOTH {
        check_plain_status(rpc, 412, Code::FailedPrecondition, "PRECONDITION_FAILED").await;
    }
}

// ---------------------------------------------------------------------------------------------
// upstream 429 -> RESOURCE_EXHAUSTED, RetryInfo = Retry-After (seconds or HTTP date), else 1 s

/// Calls `rpc` against a 429 with `retry_after` and returns the status after the common checks.
async fn throttled(rpc: Rpc, retry_after: Option<String>, case: &str) -> Status {
    let h = Harness::start().await;
    let mut template = with_ids(ResponseTemplate::new(429));
    if let Some(value) = retry_after {
        template = template.insert_header("Retry-After", value.as_str());
    }
    rpc.mount(&h, template).await;
    let status = rpc.fail(&h.facade.channel).await;
    let info = expect(
        &status,
        case,
        Code::ResourceExhausted,
        "TOO_MANY_REQUESTS",
        STORE,
    );
    expect_http_status(&info, case, 429);
    expect_upstream_ids(&status, &info, case);
    status
}

#[tokio::test]
async fn upstream_429_with_retry_after_seconds_maps_to_resource_exhausted_with_that_delay() {
    for rpc in BOTH {
        let case = format!("{rpc:?} 429 Retry-After: 30");
        let status = throttled(rpc, Some("30".into()), &case).await;
        expect_retry(&status, &case, Duration::from_secs(30));
    }
}

#[tokio::test]
async fn upstream_429_with_retry_after_date_maps_to_resource_exhausted_with_the_delay_until_then() {
    for rpc in BOTH {
        let at = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(120));
        let case = format!("{rpc:?} 429 Retry-After: {at}");
        let status = throttled(rpc, Some(at), &case).await;
        let delay = retry_delay(&status).unwrap_or_else(|| panic!("{case}: no RetryInfo"));
        assert!(
            delay > Duration::from_secs(60) && delay <= Duration::from_secs(120),
            "{case}: {delay:?}"
        );
    }
}

#[tokio::test]
async fn upstream_429_without_retry_after_maps_to_resource_exhausted_with_one_second() {
    for rpc in BOTH {
        let case = format!("{rpc:?} 429 without Retry-After");
        let status = throttled(rpc, None, &case).await;
        expect_retry(&status, &case, Duration::from_secs(1));
    }
}

// ---------------------------------------------------------------------------------------------
// upstream 500, other 5xx -> INTERNAL; 501 -> UNIMPLEMENTED

#[tokio::test]
async fn upstream_500_and_other_5xx_map_to_internal() {
    let cases = [
        (500, "INTERNAL_SERVER_ERROR"),
        (505, "HTTP_VERSION_NOT_SUPPORTED"),
        (507, "INSUFFICIENT_STORAGE"),
        (599, "HTTP_599"),
    ];
    for rpc in BOTH {
        for (http, reason) in cases {
            check_plain_status(rpc, http, Code::Internal, reason).await;
        }
    }
}

#[tokio::test]
async fn upstream_501_maps_to_unimplemented() {
    for rpc in BOTH {
        check_plain_status(rpc, 501, Code::Unimplemented, "NOT_IMPLEMENTED").await;
    }
}

// ---------------------------------------------------------------------------------------------
// upstream 502, 503, 504, 408 -> UNAVAILABLE + RetryInfo

#[tokio::test]
async fn upstream_502_503_504_408_map_to_unavailable_with_retry_info() {
    let cases = [
        (502, "BAD_GATEWAY", None),
        (503, "SERVICE_UNAVAILABLE", None),
        (503, "SERVICE_UNAVAILABLE", Some("30")),
        (504, "GATEWAY_TIMEOUT", None),
        (408, "REQUEST_TIMEOUT", None),
    ];
    for rpc in BOTH {
        for (http, reason, retry_after) in cases {
            let case = format!("{rpc:?} HTTP {http} Retry-After {retry_after:?}");
            let h = Harness::start().await;
            let mut template =
                with_ids(ResponseTemplate::new(http).set_body_json(echoing_body("Unavailable")));
            if let Some(value) = retry_after {
                template = template.insert_header("Retry-After", value);
            }
            rpc.mount(&h, template).await;
            let status = rpc.fail(&h.facade.channel).await;
            let info = expect(&status, &case, Code::Unavailable, reason, STORE);
            expect_http_status(&info, &case, http);
            expect_upstream_ids(&status, &info, &case);
            let delay = retry_after.map_or(1, |s| s.parse().unwrap());
            expect_retry(&status, &case, Duration::from_secs(delay));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// connect and reset errors -> UNAVAILABLE + RetryInfo, domain msstore-facade

#[tokio::test]
async fn connection_refused_maps_to_unavailable_with_retry_info() {
    let (_token, facade) = facade_with_store_at(&closed_port_url()).await;
    for rpc in BOTH {
        let case = format!("{rpc:?} connection refused");
        let status = rpc.fail(&facade.channel).await;
        let info = expect(
            &status,
            &case,
            Code::Unavailable,
            "UPSTREAM_UNREACHABLE",
            FACADE,
        );
        assert_eq!(meta(&info, "host"), Some(STORE), "{case}");
        assert_eq!(meta(&info, "http_status"), None, "{case}");
        expect_retry(&status, &case, Duration::from_secs(1));
    }
}

#[tokio::test]
async fn connection_reset_or_cut_off_mid_answer_maps_to_unavailable_with_retry_info() {
    let breakages = [
        Breakage::ResetBeforeAnswer,
        Breakage::CutMidHeaders,
        Breakage::CutMidBody,
        Breakage::ResetMidBody,
    ];
    for breakage in breakages {
        let addr = broken_upstream(breakage).await;
        let (_token, facade) = facade_with_store_at(&format!("http://{addr}")).await;
        for rpc in BOTH {
            let case = format!("{rpc:?} {breakage:?}");
            let status = rpc.fail(&facade.channel).await;
            let info = expect(
                &status,
                &case,
                Code::Unavailable,
                "UPSTREAM_CONNECTION_LOST",
                FACADE,
            );
            assert_eq!(meta(&info, "host"), Some(STORE), "{case}");
            expect_retry(&status, &case, Duration::from_secs(1));
        }
    }
}

#[tokio::test]
async fn upstream_attempt_timeout_maps_to_unavailable_with_retry_info() {
    let h = Harness::builder()
        .upstream_timeout(Duration::from_millis(300))
        .start()
        .await;
    h.mount_token(3599).await;
    for rpc in BOTH {
        let case = format!("{rpc:?} attempt timeout");
        rpc.mount(
            &h,
            ResponseTemplate::new(200)
                .set_body_json(rpc.ok_body())
                .set_delay(Duration::from_secs(5)),
        )
        .await;
        let status = rpc.fail(&h.facade.channel).await;
        let info = expect(
            &status,
            &case,
            Code::Unavailable,
            "UPSTREAM_TIMEOUT",
            FACADE,
        );
        assert_eq!(meta(&info, "host"), Some(STORE), "{case}");
        expect_retry(&status, &case, Duration::from_secs(1));
    }
}

// ---------------------------------------------------------------------------------------------
// 2xx with a body that does not parse -> INTERNAL, UPSTREAM_MALFORMED_RESPONSE

#[tokio::test]
async fn malformed_2xx_bodies_map_to_internal_upstream_malformed_response() {
    let key = collections_key();
    let cases: Vec<(Rpc, &str, ResponseTemplate, u16)> = vec![
        (
            Rpc::GetOfflineLicense,
            "not JSON",
            ResponseTemplate::new(200).set_body_string("<html>hello</html>"),
            200,
        ),
        (
            Rpc::GetOfflineLicense,
            "empty",
            ResponseTemplate::new(200),
            200,
        ),
        (
            Rpc::GetOfflineLicense,
            "JSON without licenseBlob",
            ResponseTemplate::new(200).set_body_json(json!({
                "productKey": {"productId": "9NBLGGH4R2R6", "skuId": "0016"},
                "contentId": "c-1"
            })),
            200,
        ),
        (
            Rpc::GetOfflineLicense,
            "licenseBlob not a string",
            ResponseTemplate::new(201).set_body_json(json!({"licenseBlob": 42})),
            201,
        ),
        (
            Rpc::RenewKey,
            "not JSON",
            ResponseTemplate::new(200).set_body_string(format!("key={key}")),
            200,
        ),
        (
            Rpc::RenewKey,
            "JSON without key",
            ResponseTemplate::new(200).set_body_json(json!({"newKey": key})),
            200,
        ),
        (
            Rpc::RenewKey,
            "empty key",
            ResponseTemplate::new(200).set_body_json(json!({"key": ""})),
            200,
        ),
    ];
    for (rpc, name, template, http) in cases {
        let case = format!("{rpc:?} {name}");
        let h = Harness::start().await;
        rpc.mount(&h, with_ids(template)).await;
        let status = rpc.fail(&h.facade.channel).await;
        let info = expect(
            &status,
            &case,
            Code::Internal,
            "UPSTREAM_MALFORMED_RESPONSE",
            FACADE,
        );
        expect_http_status(&info, &case, http);
        expect_upstream_ids(&status, &info, &case);
        expect_no_retry(&status, &case);
    }
}

// ---------------------------------------------------------------------------------------------
// caller's deadline runs out -> DEADLINE_EXCEEDED, well before the upstream answers

#[tokio::test]
async fn caller_deadline_running_out_maps_to_deadline_exceeded_before_the_upstream_answers() {
    let upstream_delay = Duration::from_secs(8);
    let h = Harness::start().await;
    for rpc in BOTH {
        rpc.mount(
            &h,
            ResponseTemplate::new(200)
                .set_body_json(rpc.ok_body())
                .set_delay(upstream_delay),
        )
        .await;
        let case = format!("{rpc:?} 1 s deadline");
        let started = Instant::now();
        let status = rpc
            .call(&h.facade.channel, Some(Duration::from_secs(1)))
            .await
            .expect_err("the deadline runs out first");
        let elapsed = started.elapsed();
        expect(
            &status,
            &case,
            Code::DeadlineExceeded,
            "DEADLINE_EXCEEDED",
            FACADE,
        );
        assert!(
            elapsed < upstream_delay - Duration::from_secs(2),
            "{case}: answered after {elapsed:?}"
        );
        assert_eq!(Harness::requests(rpc.store(&h)).await.len(), 1, "{case}");
    }
}

// ---------------------------------------------------------------------------------------------
// token endpoint rejects the credentials -> INTERNAL, reason names it, secret never appears

#[tokio::test]
async fn token_endpoint_rejecting_the_credentials_maps_to_internal_naming_the_rejection() {
    for http in [400, 401] {
        for rpc in BOTH {
            let case = format!("{rpc:?} token endpoint {http}");
            let h = Harness::builder().start().await;
            Mock::given(method("POST"))
                .respond_with(ResponseTemplate::new(http).set_body_json(json!({
                    "error": "invalid_client",
                    "error_description": format!(
                        "AADSTS7000215: Invalid client secret provided. Ensure the secret \
                         being sent in the request is the client secret value: {CLIENT_SECRET} \
                         Trace ID: 0000 See https://login.microsoftonline.com/error?code=7000215"
                    ),
                    "error_codes": [7000215],
                    "trace_id": "0000",
                    "correlation_id": "1111"
                })))
                .mount(&h.token)
                .await;
            rpc.mount(&h, ResponseTemplate::new(200).set_body_json(rpc.ok_body()))
                .await;
            let status = rpc.fail(&h.facade.channel).await;
            let info = expect(
                &status,
                &case,
                Code::Internal,
                "TOKEN_REQUEST_REJECTED",
                FACADE,
            );
            expect_http_status(&info, &case, http);
            assert!(
                status.message().contains("invalid_client")
                    && (status.message().contains("AADSTS7000215")
                        || info.metadata.values().any(|v| v.contains("7000215"))),
                "{case}: the Entra error is not named: {status:?}"
            );
            expect_no_retry(&status, &case);
            assert!(Harness::requests(rpc.store(&h)).await.is_empty(), "{case}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// token endpoint unreachable or 5xx -> UNAVAILABLE + RetryInfo

#[tokio::test]
async fn token_endpoint_5xx_maps_to_unavailable_with_retry_info() {
    let cases = [(503, Some("30")), (503, None), (500, None), (504, None)];
    for (http, retry_after) in cases {
        for rpc in BOTH {
            let case = format!("{rpc:?} token endpoint {http} Retry-After {retry_after:?}");
            let h = Harness::builder().start().await;
            let mut template = ResponseTemplate::new(http).set_body_string("upstream trouble");
            if let Some(value) = retry_after {
                template = template.insert_header("Retry-After", value);
            }
            Mock::given(method("POST"))
                .respond_with(template)
                .mount(&h.token)
                .await;
            let status = rpc.fail(&h.facade.channel).await;
            let info = expect(
                &status,
                &case,
                Code::Unavailable,
                "TOKEN_ENDPOINT_UNAVAILABLE",
                FACADE,
            );
            expect_http_status(&info, &case, http);
            let delay = retry_after.map_or(1, |s| s.parse().unwrap());
            expect_retry(&status, &case, Duration::from_secs(delay));
            assert!(Harness::requests(rpc.store(&h)).await.is_empty(), "{case}");
        }
    }
}

#[tokio::test]
async fn token_endpoint_unreachable_maps_to_unavailable_with_retry_info() {
    let store = MockServer::start().await;
    let mut settings = Settings::for_upstream(&store.uri()).unwrap();
    settings.authority_host = closed_port_url().parse().unwrap();
    settings.credentials = Some(secret_credentials());
    let facade = Facade::start(settings).await;
    for rpc in BOTH {
        let case = format!("{rpc:?} token endpoint unreachable");
        let status = rpc.fail(&facade.channel).await;
        let info = expect(
            &status,
            &case,
            Code::Unavailable,
            "TOKEN_ENDPOINT_UNAVAILABLE",
            FACADE,
        );
        assert_eq!(meta(&info, "http_status"), None, "{case}");
        expect_retry(&status, &case, Duration::from_secs(1));
    }
    assert!(Harness::requests(&store).await.is_empty());
}

// ---------------------------------------------------------------------------------------------
// no credential at all -> UNAUTHENTICATED, SERVICE_TICKET_REQUIRED

#[tokio::test]
async fn no_credential_at_all_maps_to_unauthenticated_service_ticket_required() {
    let h = Harness::builder()
        .credential(Credential::None)
        .start()
        .await;
    for rpc in BOTH {
        let case = format!("{rpc:?} without any credential");
        let status = rpc.fail(&h.facade.channel).await;
        expect(
            &status,
            &case,
            Code::Unauthenticated,
            "SERVICE_TICKET_REQUIRED",
            FACADE,
        );
        expect_no_retry(&status, &case);
        assert!(Harness::requests(rpc.store(&h)).await.is_empty(), "{case}");
    }
    assert!(h.token_requests().await.is_empty());
}

// ---------------------------------------------------------------------------------------------
// request larger than the limit -> RESOURCE_EXHAUSTED (not tonic's OUT_OF_RANGE)

#[tokio::test]
async fn request_over_the_size_limit_maps_to_resource_exhausted_not_out_of_range() {
    let h = Harness::builder().max_request_bytes(1024).start().await;
    h.mount_token(3599).await;
    let big = "x".repeat(4096);

    let mut license = license_request();
    license.product_id = big.clone();
    let status = h
        .entitlements()
        .get_offline_license(license)
        .await
        .unwrap_err();
    let info = expect(
        &status,
        "GetOfflineLicense 4 KiB",
        Code::ResourceExhausted,
        "REQUEST_TOO_LARGE",
        FACADE,
    );
    assert_eq!(meta(&info, "limit_bytes"), Some("1024"));
    expect_no_bad_request(&status, "GetOfflineLicense 4 KiB");

    let status = renew(
        &h.facade.channel,
        pb::RenewKeyRequest {
            key: big,
            key_type: pb::KeyType::Collections as i32,
            service_ticket: CALLER_TICKET.into(),
        },
        None,
    )
    .await
    .unwrap_err();
    expect(
        &status,
        "RenewKey 4 KiB",
        Code::ResourceExhausted,
        "REQUEST_TOO_LARGE",
        FACADE,
    );

    // Under the limit, the same facade serves.
    h.mount_license(ResponseTemplate::new(200).set_body_json(license_body()))
        .await;
    h.entitlements()
        .get_offline_license(license_request())
        .await
        .unwrap();
    assert_eq!(Harness::requests(&h.business).await.len(), 1);
    assert!(Harness::requests(&h.collections).await.is_empty());
}

// ---------------------------------------------------------------------------------------------
// explicit key_type contradicts the key's aud -> INVALID_ARGUMENT, BadRequest on key_type

#[tokio::test]
async fn key_type_contradicting_the_keys_aud_maps_to_invalid_argument_on_key_type() {
    let h = Harness::start().await;
    let later = now() + 29 * 24 * 3600;
    let cases = [
        (
            "collections key declared PURCHASE",
            store_key(COLLECTIONS_AUD, now(), later),
            pb::KeyType::Purchase,
        ),
        (
            "purchase key declared COLLECTIONS",
            store_key(PURCHASE_AUD, now(), later),
            pb::KeyType::Collections,
        ),
        (
            "foreign aud declared COLLECTIONS",
            store_key("https://evil.example/v6.0/keys", now(), later),
            pb::KeyType::Collections,
        ),
    ];
    for (case, key, declared) in cases {
        let status = renew(
            &h.facade.channel,
            pb::RenewKeyRequest {
                key,
                key_type: declared as i32,
                service_ticket: String::new(),
            },
            None,
        )
        .await
        .unwrap_err();
        expect(
            &status,
            case,
            Code::InvalidArgument,
            "KEY_TYPE_MISMATCH",
            FACADE,
        );
        assert_eq!(bad_fields(&status), ["key_type"], "{case}");
        assert!(!status.message().contains("evil.example"), "{case}");
    }
    assert!(Harness::requests(&h.collections).await.is_empty());
    assert!(Harness::requests(&h.purchase).await.is_empty());
}

// ---------------------------------------------------------------------------------------------
// messages never carry tokens, keys or upstream URLs, whatever the Store echoes

#[tokio::test]
async fn store_messages_echoing_tokens_keys_and_urls_are_redacted() {
    for rpc in BOTH {
        for http in [400, 401, 403, 404, 409, 500, 503] {
            let case = format!("{rpc:?} HTTP {http} echoing body");
            let h = Harness::start().await;
            let body = json!({
                "code": "Failure",
                "message": "outer",
                "innererror": {
                    "code": "InvalidParameter",
                    "message": format!(
                        "key {} with serviceTicket {TOKEN_PREFIX}-1 rejected by \
                         http://127.0.0.1:1/v6.0/b2b/keys/renew",
                        collections_key()
                    ),
                    "data": [format!("skuId key serviceTicket : {TOKEN_PREFIX}-1")]
                }
            });
            rpc.mount(&h, ResponseTemplate::new(http).set_body_json(body))
                .await;
            let status = rpc.fail(&h.facade.channel).await;
            assert_eq!(status.code(), code_for(rpc, http), "{case}");
            assert_no_leaks(&status, &case);
        }
    }
}

/// The table's code for an HTTP status (for the redaction test).
fn code_for(rpc: Rpc, http: u16) -> Code {
    match http {
        400 => Code::InvalidArgument,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::NotFound,
        409 if rpc == Rpc::RenewKey => Code::Aborted,
        409 => Code::FailedPrecondition,
        503 => Code::Unavailable,
        _ => Code::Internal,
    }
}

// ---------------------------------------------------------------------------------------------
// a non-2xx answer maps on its status even when its body cannot be read in full

#[tokio::test]
async fn non_2xx_answers_map_on_their_status_even_when_the_body_is_too_large_or_cut() {
    let huge = "x".repeat(5 * 1024 * 1024);
    let cases = [
        (503, None, Code::Unavailable, Duration::from_secs(1)),
        (
            429,
            Some("30"),
            Code::ResourceExhausted,
            Duration::from_secs(30),
        ),
    ];
    for rpc in BOTH {
        for (http, retry_after, code, delay) in cases {
            let case = format!("{rpc:?} HTTP {http} with a 5 MiB body");
            let h = Harness::start().await;
            let mut template = with_ids(ResponseTemplate::new(http).set_body_string(huge.clone()));
            if let Some(value) = retry_after {
                template = template.insert_header("Retry-After", value);
            }
            rpc.mount(&h, template).await;
            let status = rpc.fail(&h.facade.channel).await;
            assert_eq!(status.code(), code, "{case}: {status:?}");
            let info = error_info(&status);
            assert_eq!(info.domain, STORE, "{case}");
            expect_http_status(&info, &case, http);
            expect_upstream_ids(&status, &info, &case);
            expect_retry(&status, &case, delay);
        }
    }

    let addr = broken_upstream(Breakage::CutMidErrorBody).await;
    let (_token, facade) = facade_with_store_at(&format!("http://{addr}")).await;
    for rpc in BOTH {
        let case = format!("{rpc:?} 429 with its body cut off");
        let status = rpc.fail(&facade.channel).await;
        let info = expect(
            &status,
            &case,
            Code::ResourceExhausted,
            "TOO_MANY_REQUESTS",
            STORE,
        );
        expect_http_status(&info, &case, 429);
        expect_retry(&status, &case, Duration::from_secs(30));
    }
}
