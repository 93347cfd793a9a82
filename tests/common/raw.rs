//! What wiremock cannot be: raw loopback HTTP/1.1 upstreams (resets, cut-off and lost
//! answers, answers held back) need to read requests off a socket themselves, and a facade
//! whose Store hosts all point at one of them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use msstore_facade::auth::{AllowedTenants, CredentialSource, Credentials, TenantId};
use msstore_facade::resilience::ResilienceConfig;
use msstore_facade::Settings;
use secrecy::SecretString;
use serde_json::json;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use wiremock::matchers::{method, path_regex};
use wiremock::{Mock, MockServer, ResponseTemplate};

use super::harness::Facade;
use super::{CLIENT_ID, CLIENT_SECRET, TENANT, TOKEN_PREFIX};

/// One HTTP/1.1 request as read off a socket.
#[derive(Debug, Clone)]
pub struct RawRequest {
    /// The request line and headers, as sent.
    pub head: String,
    /// The `Content-Length` bytes of body.
    pub body: Vec<u8>,
}

/// Reads one request (head, then `Content-Length` bytes of body), or `None` when the
/// connection ends first. What follows the request stays in `buf` for the next call.
pub async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<RawRequest> {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let body_len = header(&head, "content-length")
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + body_len {
                let body = buf[end + 4..end + 4 + body_len].to_vec();
                buf.drain(..end + 4 + body_len);
                return Some(RawRequest { head, body });
            }
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// The value of header `name` in a request head.
pub fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim()
            .eq_ignore_ascii_case(name)
            .then_some(value.trim())
    })
}

/// A token endpoint's answers: a new token per request, `<TOKEN_PREFIX>-1`, `-2`, ... in
/// order, each claiming to live `expires_in` (a JSON number or string, however absurd).
pub fn issued_tokens(expires_in: serde_json::Value) -> impl wiremock::Respond {
    let issued = Arc::new(AtomicU64::new(0));
    move |_: &wiremock::Request| {
        let n = issued.fetch_add(1, Ordering::SeqCst) + 1;
        ResponseTemplate::new(200).set_body_json(json!({
            "token_type": "Bearer",
            "expires_in": expires_in,
            "access_token": format!("{TOKEN_PREFIX}-{n}"),
        }))
    }
}

/// A token endpoint for any tenant, handing out tokens that live 3599 s ([`issued_tokens`]).
pub async fn token_server() -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path_regex(r"^/[^/]+/oauth2/v2\.0/token$"))
        .respond_with(issued_tokens(json!(3599)))
        .mount(&server)
        .await;
    server
}

/// A facade whose three Store hosts are `store_base`, with client-secret credentials, a token
/// endpoint serving any tenant, any tenant allowed, and resilience settings changed by `tweak`.
pub async fn facade_at(
    store_base: &str,
    tweak: impl FnOnce(&mut ResilienceConfig),
) -> (MockServer, Facade) {
    let token = token_server().await;
    let mut settings = Settings::for_upstream(store_base).expect("valid base URL");
    settings.authority_host = token.uri().parse().unwrap();
    settings.credentials = Some(Credentials {
        tenant_id: TenantId::parse(TENANT).unwrap(),
        client_id: CLIENT_ID.to_owned(),
        source: CredentialSource::ClientSecret(SecretString::from(CLIENT_SECRET)),
    });
    settings.allowed_tenants = AllowedTenants::Any;
    tweak(&mut settings.resilience);
    (token, Facade::start(settings).await)
}

/// `http://127.0.0.1:<port>` where nothing listens (a port just bound and released).
pub fn closed_port_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}")
}
