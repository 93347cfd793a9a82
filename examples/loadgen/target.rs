//! What a call goes to: the facade over gRPC, or the upstream's OfflineLicense endpoint over
//! HTTP with the token acquired up front. Both get the same ids for call `n` of a phase.

use std::sync::Arc;
use std::time::Duration;

use msstore_facade::proto::msstore::v1::store_entitlements_client::StoreEntitlementsClient;
use msstore_facade::proto::msstore::v1::GetOfflineLicenseRequest;
use tonic::transport::Channel;

use super::upstream::Upstream;

/// A call that has not answered after this long counts as [`Outcome::Timeout`].
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// The ids of the calls: product and SKU fixed, the content id distinct per call.
#[derive(Debug, Clone)]
pub struct CallIds {
    product_id: Arc<str>,
    sku_id: Arc<str>,
    content_prefix: Arc<str>,
    phase: &'static str,
}

impl CallIds {
    /// Ids for `product_id`/`sku_id` and content ids `<content_prefix>-<phase>-<n>`.
    pub fn new(product_id: &str, sku_id: &str, content_prefix: &str) -> Self {
        Self {
            product_id: product_id.into(),
            sku_id: sku_id.into(),
            content_prefix: content_prefix.into(),
            phase: "first",
        }
    }

    /// The same ids for another phase (so no content id repeats across phases of a target).
    pub fn phase(&self, phase: &'static str) -> Self {
        Self {
            phase,
            ..self.clone()
        }
    }

    /// The same ids with another product id (e.g. one that makes the upstream slow).
    pub fn with_product(&self, product_id: &str) -> Self {
        Self {
            product_id: product_id.into(),
            ..self.clone()
        }
    }

    fn content_id(&self, n: u64) -> String {
        format!("{}-{}-{n}", self.content_prefix, self.phase)
    }

    /// The gRPC request of call `n`.
    pub fn request(&self, n: u64) -> GetOfflineLicenseRequest {
        GetOfflineLicenseRequest {
            product_id: self.product_id.to_string(),
            sku_id: self.sku_id.to_string(),
            content_id: self.content_id(n),
            tenant_id: String::new(),
        }
    }
}

/// How a call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The facade answered this gRPC code.
    Grpc(tonic::Code),
    /// The upstream answered this HTTP status (and its whole body arrived).
    Http(u16),
    /// No answer: connect error, reset, or the body broke off.
    Transport,
    /// No answer within [`CALL_TIMEOUT`].
    Timeout,
}

impl Outcome {
    /// Whether the call succeeded.
    pub fn is_ok(self) -> bool {
        match self {
            Self::Grpc(code) => code == tonic::Code::Ok,
            Self::Http(status) => (200..300).contains(&status),
            Self::Transport | Self::Timeout => false,
        }
    }

    /// The label in the report: the canonical gRPC code name, the HTTP status, or the failure.
    pub fn label(self) -> String {
        match self {
            Self::Grpc(code) => grpc_code_name(code).to_owned(),
            Self::Http(status) => format!("HTTP {status}"),
            Self::Transport => "transport error".to_owned(),
            Self::Timeout => format!("no answer within {}s", CALL_TIMEOUT.as_secs()),
        }
    }
}

/// Where calls go.
#[derive(Clone)]
pub enum Target {
    /// The facade's `GetOfflineLicense`.
    Facade(StoreEntitlementsClient<Channel>),
    /// The upstream's OfflineLicense endpoint.
    Direct(Arc<DirectTarget>),
}

/// The upstream called directly.
pub struct DirectTarget {
    http: reqwest::Client,
    upstream: Arc<Upstream>,
    authorization: reqwest::header::HeaderValue,
}

impl DirectTarget {
    /// Calls to `upstream` with `token` as the bearer.
    pub fn new(http: reqwest::Client, upstream: Arc<Upstream>, token: &str) -> Self {
        let mut authorization = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
            .expect("a token is header-safe");
        authorization.set_sensitive(true);
        Self {
            http,
            upstream,
            authorization,
        }
    }
}

impl Target {
    /// The facade at `channel`.
    pub fn facade(channel: Channel) -> Self {
        Self::Facade(StoreEntitlementsClient::new(channel))
    }

    /// Name in the report.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Facade(_) => "facade",
            Self::Direct(_) => "direct",
        }
    }

    /// Makes call `n` of `ids` and waits for its whole answer.
    pub async fn call(&self, ids: &CallIds, n: u64) -> Outcome {
        let call = async {
            match self {
                Self::Facade(client) => {
                    match client.clone().get_offline_license(ids.request(n)).await {
                        Ok(_) => Outcome::Grpc(tonic::Code::Ok),
                        Err(status) => Outcome::Grpc(status.code()),
                    }
                }
                Self::Direct(direct) => direct.call(ids, n).await,
            }
        };
        tokio::time::timeout(CALL_TIMEOUT, call)
            .await
            .unwrap_or(Outcome::Timeout)
    }
}

impl DirectTarget {
    async fn call(&self, ids: &CallIds, n: u64) -> Outcome {
        let request = ids.request(n);
        let url =
            self.upstream
                .license_url(&request.product_id, &request.sku_id, &request.content_id);
        let sent = self
            .http
            .post(url)
            .header(reqwest::header::AUTHORIZATION, self.authorization.clone())
            .header(reqwest::header::CONTENT_LENGTH, "0")
            .send()
            .await;
        match sent {
            Ok(response) => {
                let status = response.status().as_u16();
                match response.bytes().await {
                    Ok(_) => Outcome::Http(status),
                    Err(_) => Outcome::Transport,
                }
            }
            Err(_) => Outcome::Transport,
        }
    }
}

/// The canonical name of a gRPC code (`OK`, `UNAVAILABLE`, ...), as in the gRPC spec.
fn grpc_code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}
