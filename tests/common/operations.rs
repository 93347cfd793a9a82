//! The table of every Store operation the facade serves: one row per operation, and every
//! suite that is about all operations (error mapping, sandbox magic ids, resilience, health
//! and reflection) iterates [`OPERATIONS`]. A new operation is covered by all of them as soon
//! as its row exists.
//!
//! A row says how to call the operation and what the contract expects of it. Expectations are
//! written here from the contract, not read from the facade; only [`Op::errors`] is the
//! operation's own declaration, the input of the table-driven tests of the mapping function.

use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use msstore_facade::api::Operation;
use msstore_facade::emulator::StoreKeySpec;
use msstore_facade::error::ErrorMapping;
use msstore_facade::ops;
use msstore_facade::proto::msstore::v1 as pb;
use msstore_facade::upstream::Host;
use pb::store_entitlements_client::StoreEntitlementsClient;
use pb::store_keys_client::StoreKeysClient;
use serde_json::{json, Value};
use tonic::transport::Channel;
use tonic::{Code, Status};
use wiremock::matchers::{method, path_regex};
use wiremock::{Mock, MockServer, ResponseTemplate};

use super::fixtures::{license_body, license_request, now, store_key};
use super::harness::Harness;
use super::COLLECTIONS_AUD;

/// A call's outcome, its answer dropped.
pub type Called = BoxFuture<'static, Result<(), Status>>;

/// One Store operation, as the tests see it.
#[derive(Clone, Copy)]
pub struct Op {
    /// The gRPC service, e.g. `msstore.v1.StoreKeys`.
    pub service: &'static str,
    /// The gRPC method, e.g. `RenewKey`.
    pub method: &'static str,
    /// The Store host a valid call (as [`Op::call`] makes it) goes to.
    pub host: Host,
    /// The HTTP method of its upstream request.
    pub http_method: &'static str,
    /// The path of its upstream request, as a regex.
    pub upstream_path: &'static str,
    /// The operation's own error declaration (input of the mapping-function tests).
    pub errors: &'static ErrorMapping,
    /// Contract: the gRPC code of an upstream 409 on this operation.
    pub conflict: Code,
    /// Contract: an upstream parameter name of this operation and the proto field a 400 naming
    /// it carries in BadRequest.
    pub named_field: (&'static str, &'static str),
    /// Contract: the BadRequest field of the emulator's `MAGIC-400` answer on this operation.
    pub magic_400_field: &'static str,
    /// A well-formed 2xx upstream answer.
    pub ok_body: fn() -> Value,
    /// Calls the operation with a valid request made with the facade's own token, with an
    /// optional deadline; `variant` makes requests distinct (so they are never coalesced).
    pub call: fn(Channel, Option<Duration>, u32) -> Called,
    /// Calls the operation against the sandbox emulator with `magic` where the emulator
    /// reads magic ids for this operation (`None`: a call that succeeds).
    pub sandbox_call: fn(Channel, Option<&'static str>, Option<Duration>) -> Called,
}

impl Op {
    /// `service/method`.
    pub fn full_name(&self) -> String {
        format!("{}/{}", self.service, self.method)
    }

    /// The mock server of this operation's host in `harness`.
    pub fn store<'h>(&self, harness: &'h Harness) -> &'h MockServer {
        harness.store(self.host)
    }

    /// The operation's upstream answers every request with `template`.
    pub async fn mount(&self, harness: &Harness, template: ResponseTemplate) {
        Mock::given(method(self.http_method))
            .and(path_regex(self.upstream_path))
            .respond_with(template)
            .mount(self.store(harness))
            .await;
    }

    /// Calls the operation, which must fail.
    pub async fn fail(&self, channel: &Channel) -> Status {
        match (self.call)(channel.clone(), None, 0).await {
            Ok(()) => panic!("{} succeeded where it must fail", self.method),
            Err(status) => status,
        }
    }
}

impl std::fmt::Debug for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.method)
    }
}

/// Every operation the facade serves.
pub const OPERATIONS: &[Op] = &[GET_OFFLINE_LICENSE, RENEW_KEY];

/// The distinct gRPC services of [`OPERATIONS`], in table order.
pub fn services() -> Vec<&'static str> {
    let mut services: Vec<&'static str> = Vec::new();
    for op in OPERATIONS {
        if !services.contains(&op.service) {
            services.push(op.service);
        }
    }
    services
}

fn request<T>(message: T, timeout: Option<Duration>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(timeout) = timeout {
        request.set_timeout(timeout);
    }
    request
}

/// `StoreEntitlements/GetOfflineLicense`.
pub const GET_OFFLINE_LICENSE: Op = Op {
    service: "msstore.v1.StoreEntitlements",
    method: "GetOfflineLicense",
    host: Host::BusinessStore,
    http_method: "POST",
    upstream_path: r"^/V1/Products/[^/]+/[^/]+/OfflineLicense/[^/]+$",
    errors: <ops::GetOfflineLicense as Operation>::ERRORS,
    conflict: Code::FailedPrecondition,
    named_field: ("skuId", "sku_id"),
    magic_400_field: "product_id",
    ok_body: license_body,
    call: |channel, timeout, variant| {
        let message = pb::GetOfflineLicenseRequest {
            content_id: if variant == 0 {
                license_request().content_id
            } else {
                format!("c-{variant}")
            },
            ..license_request()
        };
        async move {
            StoreEntitlementsClient::new(channel)
                .get_offline_license(request(message, timeout))
                .await
                .map(drop)
        }
        .boxed()
    },
    sandbox_call: |channel, magic, timeout| {
        let message = pb::GetOfflineLicenseRequest {
            product_id: magic.unwrap_or("9NBLGGH4R2R6").to_owned(),
            ..license_request()
        };
        async move {
            StoreEntitlementsClient::new(channel)
                .get_offline_license(request(message, timeout))
                .await
                .map(drop)
        }
        .boxed()
    },
};

/// A live collections key (renewed on the collections host).
pub fn collections_key() -> String {
    store_key(COLLECTIONS_AUD, now() - 3600, now() + 29 * 24 * 3600)
}

/// `StoreKeys/RenewKey`, of a collections key, with the facade's own token.
pub const RENEW_KEY: Op = Op {
    service: "msstore.v1.StoreKeys",
    method: "RenewKey",
    host: Host::Collections,
    http_method: "POST",
    upstream_path: r"^/v6\.0/b2b/keys/renew$",
    errors: <ops::RenewKey as Operation>::ERRORS,
    conflict: Code::Aborted,
    named_field: ("serviceTicket", "service_ticket"),
    magic_400_field: "key",
    ok_body: || json!({ "key": collections_key() }),
    call: |channel, timeout, variant| {
        let message = pb::RenewKeyRequest {
            key: store_key(
                COLLECTIONS_AUD,
                now() - 3600 - i64::from(variant),
                now() + 29 * 24 * 3600,
            ),
            key_type: pb::KeyType::Unspecified as i32,
            service_ticket: String::new(),
        };
        async move {
            StoreKeysClient::new(channel)
                .renew_key(request(message, timeout))
                .await
                .map(drop)
        }
        .boxed()
    },
    sandbox_call: |channel, magic, timeout| {
        let message = pb::RenewKeyRequest {
            key: StoreKeySpec::new(Host::Collections)
                .payload(magic.unwrap_or("sandbox"))
                .mint(),
            ..Default::default()
        };
        async move {
            StoreKeysClient::new(channel)
                .renew_key(request(message, timeout))
                .await
                .map(drop)
        }
        .boxed()
    },
};
