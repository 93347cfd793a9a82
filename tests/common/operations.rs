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
use msstore_facade::api::StoreOperation;
use msstore_facade::emulator::catalog::{
    SANDBOX_CONSUMABLE, SANDBOX_DURABLE, SANDBOX_FREE_DURABLE,
};
use msstore_facade::emulator::StoreKeySpec;
use msstore_facade::error::ErrorMapping;
use msstore_facade::ops;
use msstore_facade::proto::msstore::v1 as pb;
use msstore_facade::upstream::Host;
use pb::store_collections_client::StoreCollectionsClient;
use pb::store_entitlements_client::StoreEntitlementsClient;
use pb::store_keys_client::StoreKeysClient;
use pb::store_purchases_client::StorePurchasesClient;
use serde_json::{json, Value};
use tonic::transport::Channel;
use tonic::{Code, Status};
use wiremock::matchers::{method, path_regex};
use wiremock::{Mock, MockServer, ResponseTemplate};

use super::fixtures::{license_body, license_request, now, store_key};
use super::harness::Harness;
use super::{COLLECTIONS_AUD, PURCHASE_AUD};

/// A call's outcome, its answer dropped.
pub type Called = BoxFuture<'static, Result<(), Status>>;

/// A call's outcome with its answer.
pub type Answered = BoxFuture<'static, Result<Answer, Status>>;

/// A successful call's answer, as the all-operations suites compare it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The response message, protobuf-encoded: equal answers encode equally.
    pub encoded: Vec<u8>,
    /// What the answer carries as is from the upstream's 2xx body (see [`Op::echoed`]).
    pub echoed: String,
}

impl Answer {
    fn of<M: prost::Message>(message: &M, echoed: &str) -> Self {
        Self {
            encoded: message.encode_to_vec(),
            echoed: echoed.to_owned(),
        }
    }
}

/// The transient upstream statuses (contract, section 5).
pub const TRANSIENT_STATUSES: [u16; 4] = [408, 502, 503, 504];

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
    /// Contract: every upstream parameter name of this operation with the proto field a 400
    /// naming it carries in BadRequest (the first is [`Op::named_field`]).
    pub named_fields: &'static [(&'static str, &'static str)],
    /// 2xx answers that are not what the operation expects, each with a name and the HTTP
    /// status it is sent with: each must map to `UPSTREAM_MALFORMED_RESPONSE`.
    pub malformed: fn() -> Vec<(&'static str, ResponseTemplate, u16)>,
    /// Contract: the BadRequest field of the emulator's `MAGIC-400` answer on this operation.
    pub magic_400_field: &'static str,
    /// A well-formed 2xx upstream answer.
    pub ok_body: fn() -> Value,
    /// Contract: what of a 2xx body (as [`Op::ok_body`] makes it) the answer carries as is.
    pub echoed: fn(&Value) -> String,
    /// Contract: the transient upstream statuses (of [`TRANSIENT_STATUSES`]) after which a
    /// call is retried; an operation that is not idempotent is retried after fewer (section 7).
    pub retried: &'static [u16],
    /// README, "Coalescing": whether identical concurrent calls share one upstream request.
    pub coalesces: bool,
    /// Calls the operation with a valid request made with the facade's own token, with an
    /// optional deadline; `variant` makes requests distinct (so they are never coalesced).
    pub call: fn(Channel, Option<Duration>, u32) -> Called,
    /// Makes the call [`Op::call`] makes and returns its answer.
    pub answer: fn(Channel, Option<Duration>, u32) -> Answered,
    /// Makes the call [`Op::call`] makes with variant 0, for the Entra tenant `tenant` the
    /// caller names; `None` when the operation's request names no tenant.
    pub call_for_tenant: Option<fn(Channel, &'static str) -> Called>,
    /// Calls the operation with a request that fails local validation (INVALID_ARGUMENT
    /// before any upstream call): a required field left empty, where the request has one.
    pub call_invalid: fn(Channel) -> Called,
    /// Calls the operation against the sandbox emulator with `magic` where the emulator
    /// reads magic ids for this operation (`None`: a call that succeeds).
    pub sandbox_call: fn(Channel, Option<&'static str>, Option<Duration>) -> Called,
    /// Contract, section 6: the fields of the upstream JSON body that carry a secret (keys,
    /// tickets, tokens), as JSON pointers; the `Authorization` header always does.
    pub secret_fields: &'static [&'static str],
    /// Makes the call [`Op::call`] makes with variant 0, but with the caller's own service
    /// ticket `ticket`; `None` when the operation takes none.
    pub call_with_ticket: Option<fn(Channel, &'static str) -> Called>,
}

impl Op {
    /// The first of [`Op::named_fields`].
    pub fn named_field(&self) -> (&'static str, &'static str) {
        self.named_fields[0]
    }

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

    /// The operation's upstream answers its next request with `template`, before any other
    /// mock.
    pub async fn mount_once(&self, harness: &Harness, template: ResponseTemplate) {
        Mock::given(method(self.http_method))
            .and(path_regex(self.upstream_path))
            .respond_with(template)
            .up_to_n_times(1)
            .with_priority(1)
            .mount(self.store(harness))
            .await;
    }

    /// A 200 carrying [`Op::ok_body`].
    pub fn ok(&self) -> ResponseTemplate {
        ResponseTemplate::new(200).set_body_json((self.ok_body)())
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
pub const OPERATIONS: &[Op] = &[
    GET_OFFLINE_LICENSE,
    RENEW_KEY,
    QUERY_COLLECTIONS,
    CONSUME_PRODUCT,
    GRANT_FREE_PRODUCT,
    QUERY_RECURRENCES,
    CHANGE_RECURRENCE,
    QUERY_ORDERS,
];

/// Runs `check` for every operation of `ops` at once (in the calling task) and waits for all
/// of them. A check that starts upstreams and a facade of its own shares no circuit, retry
/// budget or request count with the others, even with an operation on the same host.
pub async fn for_each_at_once<Fut>(
    ops: impl IntoIterator<Item = &'static Op>,
    check: impl FnMut(&'static Op) -> Fut,
) where
    Fut: std::future::Future<Output = ()>,
{
    // Unconstrained: all the checks share one task, so its cooperative budget can run out
    // mid-poll. A Harness dropped then deadlocks: wiremock's `MockServer::drop` blocks the
    // thread on a tokio lock, whose wake-up tokio defers to the scheduler it is blocking.
    let mut check = check;
    futures_util::future::join_all(
        ops.into_iter()
            .map(|op| tokio::task::unconstrained(check(op))),
    )
    .await;
}

/// [`for_each_at_once`] over every operation of [`OPERATIONS`].
pub async fn for_every_operation<Fut>(check: impl FnMut(&'static Op) -> Fut)
where
    Fut: std::future::Future<Output = ()>,
{
    for_each_at_once(OPERATIONS, check).await;
}

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

fn answer_dropped(answered: Answered) -> Called {
    answered.map(|outcome| outcome.map(drop)).boxed()
}

/// The request [`GET_OFFLINE_LICENSE`] makes of `variant`.
fn license_variant(variant: u32) -> pb::GetOfflineLicenseRequest {
    pb::GetOfflineLicenseRequest {
        content_id: if variant == 0 {
            license_request().content_id
        } else {
            format!("variant-{variant}")
        },
        ..license_request()
    }
}

fn get_offline_license(
    channel: Channel,
    message: pb::GetOfflineLicenseRequest,
    timeout: Option<Duration>,
) -> Answered {
    async move {
        let license = StoreEntitlementsClient::new(channel)
            .get_offline_license(request(message, timeout))
            .await?
            .into_inner();
        Ok(Answer::of(&license, &license.license_blob))
    }
    .boxed()
}

/// `StoreEntitlements/GetOfflineLicense`.
pub const GET_OFFLINE_LICENSE: Op = Op {
    service: "msstore.v1.StoreEntitlements",
    method: "GetOfflineLicense",
    host: Host::BusinessStore,
    http_method: "POST",
    upstream_path: r"^/V1/Products/[^/]+/[^/]+/OfflineLicense/[^/]+$",
    errors: <ops::GetOfflineLicense as StoreOperation>::ERRORS,
    conflict: Code::FailedPrecondition,
    named_fields: &[
        ("skuId", "sku_id"),
        ("productId", "product_id"),
        ("contentId", "content_id"),
    ],
    malformed: || {
        vec![
            (
                "not JSON",
                ResponseTemplate::new(200).set_body_string("<html>hello</html>"),
                200,
            ),
            ("empty", ResponseTemplate::new(200), 200),
            (
                "JSON without licenseBlob",
                ResponseTemplate::new(200).set_body_json(json!({
                    "productKey": {"productId": "9NBLGGH4R2R6", "skuId": "0016"},
                    "contentId": "c-1"
                })),
                200,
            ),
            (
                "licenseBlob not a string",
                ResponseTemplate::new(201).set_body_json(json!({"licenseBlob": 42})),
                201,
            ),
        ]
    },
    magic_400_field: "product_id",
    ok_body: license_body,
    echoed: |body| {
        body["licenseBlob"]
            .as_str()
            .expect("a license blob")
            .to_owned()
    },
    retried: &TRANSIENT_STATUSES,
    coalesces: true,
    call: |channel, timeout, variant| {
        answer_dropped(get_offline_license(
            channel,
            license_variant(variant),
            timeout,
        ))
    },
    answer: |channel, timeout, variant| {
        get_offline_license(channel, license_variant(variant), timeout)
    },
    call_for_tenant: Some(|channel, tenant| {
        let message = pb::GetOfflineLicenseRequest {
            tenant_id: tenant.to_owned(),
            ..license_variant(0)
        };
        answer_dropped(get_offline_license(channel, message, None))
    }),
    // Contract, section 1: every id is required.
    call_invalid: |channel| answer_dropped(get_offline_license(channel, Default::default(), None)),
    secret_fields: &[],
    call_with_ticket: None,
    sandbox_call: |channel, magic, timeout| {
        let message = pb::GetOfflineLicenseRequest {
            product_id: magic.unwrap_or("9NBLGGH4R2R6").to_owned(),
            ..license_request()
        };
        answer_dropped(get_offline_license(channel, message, timeout))
    },
};

/// A live collections key (renewed on the collections host).
pub fn collections_key() -> String {
    store_key(COLLECTIONS_AUD, now() - 3600, now() + 29 * 24 * 3600)
}

/// The request [`RENEW_KEY`] makes of `variant`: a live collections key, issued `variant`
/// seconds earlier than variant 0.
fn renew_variant(variant: u32) -> pb::RenewKeyRequest {
    pb::RenewKeyRequest {
        key: store_key(
            COLLECTIONS_AUD,
            now() - 3600 - i64::from(variant),
            now() + 29 * 24 * 3600,
        ),
        key_type: pb::KeyType::Unspecified as i32,
        service_ticket: String::new(),
    }
}

fn renew_key(
    channel: Channel,
    message: pb::RenewKeyRequest,
    timeout: Option<Duration>,
) -> Answered {
    async move {
        let renewed = StoreKeysClient::new(channel)
            .renew_key(request(message, timeout))
            .await?
            .into_inner();
        Ok(Answer::of(&renewed, &renewed.key))
    }
    .boxed()
}

/// `StoreKeys/RenewKey`, of a collections key, with the facade's own token.
pub const RENEW_KEY: Op = Op {
    service: "msstore.v1.StoreKeys",
    method: "RenewKey",
    host: Host::Collections,
    http_method: "POST",
    upstream_path: r"^/v6\.0/b2b/keys/renew$",
    errors: <ops::RenewKey as StoreOperation>::ERRORS,
    conflict: Code::Aborted,
    named_fields: &[("serviceTicket", "service_ticket"), ("key", "key")],
    malformed: || {
        let key = collections_key();
        vec![
            (
                "not JSON",
                ResponseTemplate::new(200).set_body_string("<html>hello</html>"),
                200,
            ),
            (
                "the key, not JSON",
                ResponseTemplate::new(200).set_body_string(format!("key={key}")),
                200,
            ),
            (
                "JSON without key",
                ResponseTemplate::new(200).set_body_json(json!({ "newKey": key })),
                200,
            ),
            (
                "empty key",
                ResponseTemplate::new(200).set_body_json(json!({"key": ""})),
                200,
            ),
        ]
    },
    magic_400_field: "key",
    ok_body: || json!({ "key": collections_key() }),
    echoed: |body| body["key"].as_str().expect("a key").to_owned(),
    retried: &TRANSIENT_STATUSES,
    coalesces: false,
    call: |channel, timeout, variant| {
        answer_dropped(renew_key(channel, renew_variant(variant), timeout))
    },
    answer: |channel, timeout, variant| renew_key(channel, renew_variant(variant), timeout),
    call_for_tenant: None,
    // Contract, section 1: `key` is required.
    call_invalid: |channel| answer_dropped(renew_key(channel, Default::default(), None)),
    secret_fields: &["/serviceTicket", "/key"],
    call_with_ticket: Some(|channel, ticket| {
        let message = pb::RenewKeyRequest {
            service_ticket: ticket.to_owned(),
            ..renew_variant(0)
        };
        answer_dropped(renew_key(channel, message, None))
    }),
    sandbox_call: |channel, magic, timeout| {
        let message = pb::RenewKeyRequest {
            key: StoreKeySpec::new(Host::Collections)
                .payload(magic.unwrap_or("sandbox"))
                .mint(),
            ..Default::default()
        };
        answer_dropped(renew_key(channel, message, timeout))
    },
};

/// A live collections key of the harness's client id, issued `variant` seconds earlier than
/// variant 0 (so that variants differ).
fn collections_key_variant(variant: u32) -> String {
    store_key(
        COLLECTIONS_AUD,
        now() - 3600 - i64::from(variant),
        now() + 29 * 24 * 3600,
    )
}

/// A collections key the sandbox emulator accepts.
fn sandbox_collections_key() -> String {
    StoreKeySpec::new(Host::Collections).mint()
}

/// The GUID tracking id of variant `variant`.
pub fn tracking_id(variant: u32) -> String {
    format!("7a1c0e52-9d3b-4f7e-8a21-{variant:012x}")
}

/// A well-formed publisherQuery page (one item, no continuation).
pub fn collections_page() -> Value {
    json!({
        "items": [{
            "acquiredDate": "2026-01-02T03:04:05.0000000+00:00",
            "acquisitionType": "Single",
            "endDate": "9999-12-31T23:59:59.9999999+00:00",
            "id": "item-1",
            "modifiedDate": "2026-01-02T03:04:05.0000000+00:00",
            "productId": "9NBLGGH4R2R6",
            "productKind": "Durable",
            "quantity": 1,
            "satisfiedByProductIds": [],
            "skuId": "0010",
            "startDate": "2026-01-02T03:04:05.0000000+00:00",
            "status": "Active",
            "tags": [],
            "transactionId": "0f8fad5b-d9cb-469f-a165-70867728950e",
            "futureField": {"ignored": true}
        }]
    })
}

fn query_variant(variant: u32) -> pb::QueryCollectionsRequest {
    pb::QueryCollectionsRequest {
        user_key: collections_key_variant(variant),
        products: vec![pb::ProductSku {
            product_id: "9NBLGGH4R2R6".into(),
            sku_id: String::new(),
        }],
        ..Default::default()
    }
}

fn query_collections(
    channel: Channel,
    message: pb::QueryCollectionsRequest,
    timeout: Option<Duration>,
) -> Answered {
    async move {
        let page = StoreCollectionsClient::new(channel)
            .query_collections(request(message, timeout))
            .await?
            .into_inner();
        let echoed = page.items.first().map(|i| i.id.clone()).unwrap_or_default();
        Ok(Answer::of(&page, &echoed))
    }
    .boxed()
}

/// `StoreCollections/QueryCollections`, one page, with the facade's own token.
pub const QUERY_COLLECTIONS: Op = Op {
    service: "msstore.v1.StoreCollections",
    method: "QueryCollections",
    host: Host::Collections,
    http_method: "POST",
    upstream_path: r"^/v9\.0/collections/publisherQuery$",
    errors: <ops::QueryCollections as StoreOperation>::ERRORS,
    conflict: Code::FailedPrecondition,
    named_fields: &[
        ("productSkuIds", "products"),
        ("beneficiaries", "user_key"),
        ("continuationToken", "page_token"),
        ("maxPageSize", "page_size"),
        ("validityType", "validity"),
        ("sbx", "sandbox_id"),
    ],
    malformed: || {
        vec![
            (
                "not JSON",
                ResponseTemplate::new(200).set_body_string("<html>hello</html>"),
                200,
            ),
            ("empty", ResponseTemplate::new(200), 200),
            (
                "JSON without items",
                ResponseTemplate::new(200).set_body_json(json!({"continuationToken": "x"})),
                200,
            ),
            (
                "items not an array",
                ResponseTemplate::new(200).set_body_json(json!({"items": {"id": "x"}})),
                200,
            ),
        ]
    },
    magic_400_field: "products",
    ok_body: collections_page,
    echoed: |body| {
        body["items"][0]["id"]
            .as_str()
            .expect("an item id")
            .to_owned()
    },
    retried: &TRANSIENT_STATUSES,
    coalesces: false,
    call: |channel, timeout, variant| {
        answer_dropped(query_collections(channel, query_variant(variant), timeout))
    },
    answer: |channel, timeout, variant| query_collections(channel, query_variant(variant), timeout),
    call_for_tenant: Some(|channel, tenant| {
        let message = pb::QueryCollectionsRequest {
            tenant_id: tenant.to_owned(),
            ..query_variant(0)
        };
        answer_dropped(query_collections(channel, message, None))
    }),
    // Contract, section 7: the user's key and 1 to 100 products are required.
    call_invalid: |channel| answer_dropped(query_collections(channel, Default::default(), None)),
    secret_fields: &["/beneficiaries/0/identityValue"],
    call_with_ticket: None,
    sandbox_call: |channel, magic, timeout| {
        let message = pb::QueryCollectionsRequest {
            user_key: sandbox_collections_key(),
            products: vec![pb::ProductSku {
                product_id: magic.unwrap_or(SANDBOX_DURABLE).to_owned(),
                sku_id: String::new(),
            }],
            ..Default::default()
        };
        answer_dropped(query_collections(channel, message, timeout))
    },
};

/// A well-formed consume answer for the tracking id of variant 0.
pub fn consume_answer() -> Value {
    json!({
        "itemId": "item-7",
        "newQuantity": 7,
        "trackingId": tracking_id(0),
        "productId": "9NCONSUMABLE",
        "orderTransactions": [{
            "$type": "consumeOrderTransactionV9",
            "orderId": "1d5e3f0a-0000-4000-8000-000000000001",
            "orderLineItemId": "1d5e3f0a-0000-4000-8000-000000000002",
            "quantityConsumed": 3
        }]
    })
}

fn consume_variant(variant: u32) -> pb::ConsumeProductRequest {
    pb::ConsumeProductRequest {
        user_key: collections_key_variant(0),
        product_id: "9NCONSUMABLE".into(),
        tracking_id: tracking_id(variant),
        remove_quantity: 3,
        include_order_ids: true,
        ..Default::default()
    }
}

fn consume_product(
    channel: Channel,
    message: pb::ConsumeProductRequest,
    timeout: Option<Duration>,
) -> Answered {
    async move {
        let consumed = StoreCollectionsClient::new(channel)
            .consume_product(request(message, timeout))
            .await?
            .into_inner();
        Ok(Answer::of(&consumed, &consumed.item_id))
    }
    .boxed()
}

/// `StoreCollections/ConsumeProduct` of a store-managed consumable, with the facade's own
/// token.
pub const CONSUME_PRODUCT: Op = Op {
    service: "msstore.v1.StoreCollections",
    method: "ConsumeProduct",
    host: Host::Collections,
    http_method: "POST",
    upstream_path: r"^/v8\.0/collections/consume$",
    errors: <ops::ConsumeProduct as StoreOperation>::ERRORS,
    conflict: Code::FailedPrecondition,
    named_fields: &[
        ("productId", "product_id"),
        ("trackingId", "tracking_id"),
        ("removeQuantity", "remove_quantity"),
        ("beneficiary", "user_key"),
        ("includeOrderIds", "include_order_ids"),
        ("sbx", "sandbox_id"),
    ],
    malformed: || {
        vec![
            (
                "not JSON",
                ResponseTemplate::new(200).set_body_string("<html>hello</html>"),
                200,
            ),
            ("empty", ResponseTemplate::new(200), 200),
            (
                "JSON without trackingId",
                ResponseTemplate::new(200).set_body_json(json!({"itemId": "i", "newQuantity": 1})),
                200,
            ),
            (
                "trackingId not a string",
                ResponseTemplate::new(200).set_body_json(json!({"trackingId": 42})),
                200,
            ),
        ]
    },
    magic_400_field: "product_id",
    ok_body: consume_answer,
    echoed: |body| body["itemId"].as_str().expect("an item id").to_owned(),
    retried: &TRANSIENT_STATUSES,
    coalesces: false,
    call: |channel, timeout, variant| {
        answer_dropped(consume_product(channel, consume_variant(variant), timeout))
    },
    answer: |channel, timeout, variant| consume_product(channel, consume_variant(variant), timeout),
    call_for_tenant: Some(|channel, tenant| {
        let message = pb::ConsumeProductRequest {
            tenant_id: tenant.to_owned(),
            ..consume_variant(0)
        };
        answer_dropped(consume_product(channel, message, None))
    }),
    // Contract, section 7: the user's key, the product and the tracking id are required.
    call_invalid: |channel| answer_dropped(consume_product(channel, Default::default(), None)),
    secret_fields: &["/beneficiary/identityValue"],
    call_with_ticket: None,
    sandbox_call: |channel, magic, timeout| {
        let message = pb::ConsumeProductRequest {
            user_key: sandbox_collections_key(),
            product_id: magic.unwrap_or(SANDBOX_CONSUMABLE).to_owned(),
            tracking_id: tracking_id(u32::from(fastrand::u16(..))),
            remove_quantity: 1,
            ..Default::default()
        };
        answer_dropped(consume_product(channel, message, timeout))
    },
};

/// The availability id the sandbox grants are made with (the emulator takes any).
const SANDBOX_FREE_AVAILABILITY: &str = "9PSANDBOXAVL";

/// A live purchase key of the harness's client id, issued `variant` seconds earlier than
/// variant 0 (so that variants differ).
fn purchase_key_variant(variant: u32) -> String {
    store_key(
        PURCHASE_AUD,
        now() - 3600 - i64::from(variant),
        now() + 29 * 24 * 3600,
    )
}

/// A purchase key the sandbox emulator accepts, carrying `magic` in its payload if any.
fn sandbox_purchase_key(magic: Option<&str>) -> String {
    let spec = StoreKeySpec::new(Host::Purchase);
    match magic {
        Some(magic) => spec.payload(magic).mint(),
        None => spec.mint(),
    }
}

/// The malformed 2xx answers every listing operation must refuse.
fn malformed_listing() -> Vec<(&'static str, ResponseTemplate, u16)> {
    vec![
        (
            "not JSON",
            ResponseTemplate::new(200).set_body_string("<html>hello</html>"),
            200,
        ),
        ("empty", ResponseTemplate::new(200), 200),
        (
            "JSON without items",
            ResponseTemplate::new(200).set_body_json(json!({"continuationToken": "x"})),
            200,
        ),
        (
            "items not an array",
            ResponseTemplate::new(200).set_body_json(json!({"items": {"id": "x"}})),
            200,
        ),
    ]
}

/// A well-formed grant answer (an order) for the order id of variant 0.
pub fn order_answer() -> Value {
    json!({
        "orderId": tracking_id(0),
        "orderState": "Purchased",
        "createdTime": "2026-01-02T03:04:05.0000000+00:00",
        "currencyCode": "USD",
        "language": "en-us",
        "market": "us",
        "orderLineItems": [{
            "lineItemId": "1d5e3f0a-0000-4000-8000-000000000003",
            "productId": "9NFREEPRODUCT",
            "skuId": "0010",
            "availabilityId": "9PAVAILABLE0",
            "billingState": "Charged",
            "fulfillmentState": "Fulfilled",
            "quantity": 1,
            "listPrice": 0.0,
            "totalAmount": 0.0,
            "beneficiary": {"identityType": "pub", "identityValue": "user-1"}
        }],
        "totalAmount": 0.0,
        "futureField": {"ignored": true}
    })
}

fn grant_variant(variant: u32) -> pb::GrantFreeProductRequest {
    pb::GrantFreeProductRequest {
        user_key: purchase_key_variant(0),
        product_id: "9NFREEPRODUCT".into(),
        sku_id: "0010".into(),
        availability_id: "9PAVAILABLE0".into(),
        language: "en-us".into(),
        market: "us".into(),
        order_id: tracking_id(variant),
        ..Default::default()
    }
}

fn grant_free_product(
    channel: Channel,
    message: pb::GrantFreeProductRequest,
    timeout: Option<Duration>,
) -> Answered {
    async move {
        let order = StorePurchasesClient::new(channel)
            .grant_free_product(request(message, timeout))
            .await?
            .into_inner();
        Ok(Answer::of(&order, &order.order_id))
    }
    .boxed()
}

/// `StorePurchases/GrantFreeProduct`, with the facade's own token.
pub const GRANT_FREE_PRODUCT: Op = Op {
    service: "msstore.v1.StorePurchases",
    method: "GrantFreeProduct",
    host: Host::Purchase,
    http_method: "POST",
    upstream_path: r"^/v7\.0/purchases/grant$",
    errors: <ops::GrantFreeProduct as StoreOperation>::ERRORS,
    conflict: Code::FailedPrecondition,
    named_fields: &[
        ("productId", "product_id"),
        ("skuId", "sku_id"),
        ("availabilityId", "availability_id"),
        ("orderId", "order_id"),
        ("language", "language"),
        ("market", "market"),
        ("devOfferId", "dev_offer_id"),
        ("b2bKey", "user_key"),
        ("sbx", "sandbox_id"),
    ],
    malformed: || {
        vec![
            (
                "not JSON",
                ResponseTemplate::new(200).set_body_string("<html>hello</html>"),
                200,
            ),
            ("empty", ResponseTemplate::new(200), 200),
            (
                "JSON without orderId",
                ResponseTemplate::new(200).set_body_json(json!({"orderState": "Purchased"})),
                200,
            ),
            (
                "orderId not a string",
                ResponseTemplate::new(201).set_body_json(json!({"orderId": 7})),
                201,
            ),
        ]
    },
    magic_400_field: "product_id",
    ok_body: order_answer,
    echoed: |body| body["orderId"].as_str().expect("an order id").to_owned(),
    retried: &TRANSIENT_STATUSES,
    coalesces: false,
    call: |channel, timeout, variant| {
        answer_dropped(grant_free_product(channel, grant_variant(variant), timeout))
    },
    answer: |channel, timeout, variant| {
        grant_free_product(channel, grant_variant(variant), timeout)
    },
    call_for_tenant: Some(|channel, tenant| {
        let message = pb::GrantFreeProductRequest {
            tenant_id: tenant.to_owned(),
            ..grant_variant(0)
        };
        answer_dropped(grant_free_product(channel, message, None))
    }),
    // Contract, section 7: the user's key, the ids, language, market and order id are required.
    call_invalid: |channel| answer_dropped(grant_free_product(channel, Default::default(), None)),
    secret_fields: &["/b2bKey"],
    call_with_ticket: None,
    sandbox_call: |channel, magic, timeout| {
        let message = pb::GrantFreeProductRequest {
            user_key: sandbox_purchase_key(None),
            product_id: magic.unwrap_or(SANDBOX_FREE_DURABLE).to_owned(),
            sku_id: "0010".into(),
            availability_id: SANDBOX_FREE_AVAILABILITY.into(),
            language: "en-us".into(),
            market: "us".into(),
            order_id: tracking_id(u32::from(fastrand::u16(..))),
            ..Default::default()
        };
        answer_dropped(grant_free_product(channel, message, timeout))
    },
};

/// A well-formed recurrence (the answer of a change).
pub fn recurrence() -> Value {
    json!({
        "id": "mdr:0:0123456789abcdef0123456789abcdef:9NSUBSCRIPTN",
        "productId": "9NSUBSCRIPTN",
        "skuId": "0010",
        "recurrenceState": "Active",
        "autoRenew": true,
        "isTrial": false,
        "beneficiary": "pub:user-1",
        "market": "us",
        "startTime": "2026-01-02T03:04:05.0000000+00:00",
        "expirationTime": "2026-02-02T03:04:05.0000000+00:00",
        "expirationTimeWithGrace": "2026-02-05T03:04:05.0000000+00:00",
        "lastModified": "2026-01-02T03:04:05.0000000+00:00",
        "futureField": {"ignored": true}
    })
}

fn recurrences_variant(variant: u32) -> pb::QueryRecurrencesRequest {
    pb::QueryRecurrencesRequest {
        user_key: purchase_key_variant(variant),
        ..Default::default()
    }
}

fn query_recurrences(
    channel: Channel,
    message: pb::QueryRecurrencesRequest,
    timeout: Option<Duration>,
) -> Answered {
    async move {
        let page = StorePurchasesClient::new(channel)
            .query_recurrences(request(message, timeout))
            .await?
            .into_inner();
        let echoed = page.items.first().map(|i| i.id.clone()).unwrap_or_default();
        Ok(Answer::of(&page, &echoed))
    }
    .boxed()
}

/// `StorePurchases/QueryRecurrences`, one page, with the facade's own token.
pub const QUERY_RECURRENCES: Op = Op {
    service: "msstore.v1.StorePurchases",
    method: "QueryRecurrences",
    host: Host::Purchase,
    http_method: "POST",
    upstream_path: r"^/v8\.0/b2b/recurrences/query$",
    errors: <ops::QueryRecurrences as StoreOperation>::ERRORS,
    conflict: Code::FailedPrecondition,
    named_fields: &[
        ("b2bKey", "user_key"),
        ("continuationToken", "page_token"),
        ("pageSize", "page_size"),
        ("sbx", "sandbox_id"),
    ],
    malformed: malformed_listing,
    magic_400_field: "user_key",
    ok_body: || json!({ "items": [recurrence()] }),
    echoed: |body| {
        body["items"][0]["id"]
            .as_str()
            .expect("a recurrence id")
            .to_owned()
    },
    retried: &TRANSIENT_STATUSES,
    coalesces: false,
    call: |channel, timeout, variant| {
        answer_dropped(query_recurrences(
            channel,
            recurrences_variant(variant),
            timeout,
        ))
    },
    answer: |channel, timeout, variant| {
        query_recurrences(channel, recurrences_variant(variant), timeout)
    },
    call_for_tenant: Some(|channel, tenant| {
        let message = pb::QueryRecurrencesRequest {
            tenant_id: tenant.to_owned(),
            ..recurrences_variant(0)
        };
        answer_dropped(query_recurrences(channel, message, None))
    }),
    // Contract, section 7: the user's key is required.
    call_invalid: |channel| answer_dropped(query_recurrences(channel, Default::default(), None)),
    secret_fields: &["/b2bKey"],
    call_with_ticket: None,
    sandbox_call: |channel, magic, timeout| {
        let message = pb::QueryRecurrencesRequest {
            user_key: sandbox_purchase_key(magic),
            ..Default::default()
        };
        answer_dropped(query_recurrences(channel, message, timeout))
    },
};

fn change_variant(variant: u32) -> pb::ChangeRecurrenceRequest {
    pb::ChangeRecurrenceRequest {
        user_key: purchase_key_variant(variant),
        recurrence_id: "mdr:0:0123456789abcdef0123456789abcdef:9NSUBSCRIPTN".into(),
        change_type: pb::ChangeType::Extend as i32,
        extension_days: 5,
        ..Default::default()
    }
}

fn change_recurrence(
    channel: Channel,
    message: pb::ChangeRecurrenceRequest,
    timeout: Option<Duration>,
) -> Answered {
    async move {
        let changed = StorePurchasesClient::new(channel)
            .change_recurrence(request(message, timeout))
            .await?
            .into_inner();
        Ok(Answer::of(&changed, &changed.id))
    }
    .boxed()
}

/// `StorePurchases/ChangeRecurrence` (an extension), with the facade's own token.
pub const CHANGE_RECURRENCE: Op = Op {
    service: "msstore.v1.StorePurchases",
    method: "ChangeRecurrence",
    host: Host::Purchase,
    http_method: "POST",
    upstream_path: r"^/v8\.0/b2b/recurrences/[^/]+/change$",
    errors: <ops::ChangeRecurrence as StoreOperation>::ERRORS,
    conflict: Code::FailedPrecondition,
    named_fields: &[
        ("recurrenceId", "recurrence_id"),
        ("changeType", "change_type"),
        ("extensionTimeInDays", "extension_days"),
        ("b2bKey", "user_key"),
        ("sbx", "sandbox_id"),
    ],
    malformed: || {
        vec![
            (
                "not JSON",
                ResponseTemplate::new(200).set_body_string("<html>hello</html>"),
                200,
            ),
            ("empty", ResponseTemplate::new(200), 200),
            (
                "a recurrence without an id",
                ResponseTemplate::new(200).set_body_json(json!({"recurrenceState": "Active"})),
                200,
            ),
            (
                "items with two recurrences",
                ResponseTemplate::new(200)
                    .set_body_json(json!({"items": [recurrence(), recurrence()]})),
                200,
            ),
        ]
    },
    magic_400_field: "recurrence_id",
    ok_body: recurrence,
    echoed: |body| body["id"].as_str().expect("a recurrence id").to_owned(),
    // Contract, section 7: not idempotent, retried only where the Store certainly did not act.
    retried: &[503],
    coalesces: false,
    call: |channel, timeout, variant| {
        answer_dropped(change_recurrence(channel, change_variant(variant), timeout))
    },
    answer: |channel, timeout, variant| {
        change_recurrence(channel, change_variant(variant), timeout)
    },
    call_for_tenant: Some(|channel, tenant| {
        let message = pb::ChangeRecurrenceRequest {
            tenant_id: tenant.to_owned(),
            ..change_variant(0)
        };
        answer_dropped(change_recurrence(channel, message, None))
    }),
    // Contract, section 7: the user's key, the recurrence and the change type are required.
    call_invalid: |channel| answer_dropped(change_recurrence(channel, Default::default(), None)),
    secret_fields: &["/b2bKey"],
    call_with_ticket: None,
    sandbox_call: |channel, magic, timeout| {
        async move {
            let key = sandbox_purchase_key(None);
            let recurrence_id = match magic {
                Some(magic) => magic.to_owned(),
                None => sandbox_active_recurrence(&channel, &key).await?,
            };
            let message = pb::ChangeRecurrenceRequest {
                user_key: key,
                recurrence_id,
                change_type: pb::ChangeType::ToggleAutoRenew as i32,
                ..Default::default()
            };
            change_recurrence(channel, message, timeout).await.map(drop)
        }
        .boxed()
    },
};

/// The id of an active recurrence of the sandbox user of `key`.
async fn sandbox_active_recurrence(channel: &Channel, key: &str) -> Result<String, Status> {
    let page = StorePurchasesClient::new(channel.clone())
        .query_recurrences(pb::QueryRecurrencesRequest {
            user_key: key.to_owned(),
            all_pages: true,
            ..Default::default()
        })
        .await?
        .into_inner();
    Ok(page
        .items
        .into_iter()
        .find(|r| r.recurrence_state() == pb::RecurrenceState::Active)
        .expect("every sandbox user has an active subscription")
        .id)
}

/// A well-formed orders page (one refunded consumable order).
pub fn orders_page() -> Value {
    json!({
        "items": [{
            "orderId": "2e5f3a0b-0000-4000-8000-000000000001",
            "shortOrderId": "ABC123",
            "orderPurchasedDate": "2026-01-02T03:04:05.0000000+00:00",
            "orderRefundedDate": "2026-01-05T03:04:05.0000000+00:00",
            "orderLineItems": [{
                "lineItemId": "2e5f3a0b-0000-4000-8000-000000000002",
                "lineItemState": "Revoked",
                "productId": "9NCONSUMABLE",
                "skuId": "0010",
                "quantity": 5,
                "wasConsumableQuantityRevoked": true
            }],
            "futureField": {"ignored": true}
        }]
    })
}

fn orders_variant(variant: u32) -> pb::QueryOrdersRequest {
    pb::QueryOrdersRequest {
        user_key: purchase_key_variant(variant),
        ..Default::default()
    }
}

fn query_orders(
    channel: Channel,
    message: pb::QueryOrdersRequest,
    timeout: Option<Duration>,
) -> Answered {
    async move {
        let page = StorePurchasesClient::new(channel)
            .query_orders(request(message, timeout))
            .await?
            .into_inner();
        let echoed = page
            .items
            .first()
            .map(|i| i.order_id.clone())
            .unwrap_or_default();
        Ok(Answer::of(&page, &echoed))
    }
    .boxed()
}

/// `StorePurchases/QueryOrders`, one page, with the facade's own token.
pub const QUERY_ORDERS: Op = Op {
    service: "msstore.v1.StorePurchases",
    method: "QueryOrders",
    host: Host::Purchase,
    http_method: "POST",
    upstream_path: r"^/v8\.0/b2b/orders/query$",
    errors: <ops::QueryOrders as StoreOperation>::ERRORS,
    conflict: Code::FailedPrecondition,
    named_fields: &[
        ("b2bKey", "user_key"),
        ("lineItemStateFilter", "line_item_states"),
        ("continuationToken", "page_token"),
        ("sbx", "sandbox_id"),
    ],
    malformed: malformed_listing,
    magic_400_field: "user_key",
    ok_body: orders_page,
    echoed: |body| {
        body["items"][0]["orderId"]
            .as_str()
            .expect("an order id")
            .to_owned()
    },
    retried: &TRANSIENT_STATUSES,
    coalesces: false,
    call: |channel, timeout, variant| {
        answer_dropped(query_orders(channel, orders_variant(variant), timeout))
    },
    answer: |channel, timeout, variant| query_orders(channel, orders_variant(variant), timeout),
    call_for_tenant: Some(|channel, tenant| {
        let message = pb::QueryOrdersRequest {
            tenant_id: tenant.to_owned(),
            ..orders_variant(0)
        };
        answer_dropped(query_orders(channel, message, None))
    }),
    // Contract, section 7: the user's key is required.
    call_invalid: |channel| answer_dropped(query_orders(channel, Default::default(), None)),
    secret_fields: &["/b2bKey"],
    call_with_ticket: None,
    sandbox_call: |channel, magic, timeout| {
        let message = pb::QueryOrdersRequest {
            user_key: sandbox_purchase_key(magic),
            ..Default::default()
        };
        answer_dropped(query_orders(channel, message, timeout))
    },
};
