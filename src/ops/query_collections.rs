//! `StoreCollections/QueryCollections` -> `POST {collections}/v9.0/collections/publisherQuery`
//! (`store-services-apis.md` 2.3): what a user owns among up to 100 products, one page per
//! call or every page within the caller's deadline, duplicates dropped by Microsoft's
//! documented priority (2.2).

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::store_json::{lenient, timestamp};
use super::paging::{self, Fingerprint, Paged, Walked};
use super::store_user::{user_fields, Beneficiary, StoreUser, SBX_FIELD, USER_KEY_FIELD};
use crate::api::validation::{Checks, Tenants};
use crate::api::{Attempts, Backends, Credential, Outcome, StoreOperation, Token};
use crate::error::{ApiError, ErrorMapping, Retries};
use crate::proto::msstore::v1 as pb;
use crate::telemetry::otel::Route;
use crate::upstream::{Host, UpstreamRequest};

/// Most products one query may name (more: the Store answers 400).
pub const MAX_PRODUCTS: usize = 100;
/// Most items per page the Store serves.
pub const MAX_PAGE_SIZE: u32 = 200;
/// Items per page when the caller names no size (the Store's default).
pub const DEFAULT_PAGE_SIZE: u32 = 100;


/// Queries a user's collection.
#[derive(Debug)]
pub struct QueryCollections;

/// A validated query (no `Debug`: it holds the user's key).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Query {
    user: StoreUser,
    products: Vec<(String, Option<String>)>,
    validity: Option<&'static str>,
    page_size: u32,
    /// The Store's continuation token of the page to ask for.
    continuation: Option<String>,
    /// What a page token of this query is bound to ([`fingerprint`]).
    fingerprint: u64,
    all_pages: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct QueryBody<'a> {
    beneficiaries: [Beneficiary<'a>; 1],
    product_sku_ids: Vec<ProductSkuId<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    continuation_token: Option<&'a str>,
    max_page_size: u32,
    exclude_duplicates: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    validity_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sbx: Option<&'a str>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ProductSkuId<'a> {
    product_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    sku_id: Option<&'a str>,
}

/// One page of the Store's answer. `items` is required; an item's fields all default.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Page {
    items: Vec<Item>,
    #[serde(default)]
    continuation_token: Option<String>,
}

/// A `PublisherQueryItemContractV9`, leniently: a field of an unexpected type is dropped
/// rather than failing the page.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct Item {
    #[serde(deserialize_with = "lenient")]
    id: Option<String>,
    #[serde(deserialize_with = "lenient")]
    product_id: Option<String>,
    #[serde(deserialize_with = "lenient")]
    sku_id: Option<String>,
    #[serde(deserialize_with = "lenient")]
    product_kind: Option<String>,
    #[serde(deserialize_with = "lenient")]
    status: Option<String>,
    #[serde(deserialize_with = "lenient")]
    acquisition_type: Option<String>,
    #[serde(deserialize_with = "lenient")]
    acquired_date: Option<String>,
    #[serde(deserialize_with = "lenient")]
    start_date: Option<String>,
    #[serde(deserialize_with = "lenient")]
    end_date: Option<String>,
    #[serde(deserialize_with = "lenient")]
    modified_date: Option<String>,
    #[serde(deserialize_with = "lenient")]
    quantity: Option<i64>,
    #[serde(deserialize_with = "lenient")]
    satisfied_by_product_ids: Option<Vec<String>>,
    #[serde(deserialize_with = "lenient")]
    tags: Option<Vec<String>>,
    #[serde(deserialize_with = "lenient")]
    transaction_id: Option<String>,
    #[serde(deserialize_with = "lenient")]
    trial_data: Option<TrialData>,
    /// GDK26 and the Game Pass example: a string such as `mdr:0:...`; some answers nest it
    /// as an object with `recurrenceId`.
    recurrence_data: Option<serde_json::Value>,
    /// The GDK22 table and Microsoft's library: a string.
    #[serde(deserialize_with = "lenient")]
    recurrence_id: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct TrialData {
    #[serde(deserialize_with = "lenient")]
    is_trial: Option<bool>,
    #[serde(deserialize_with = "lenient")]
    is_in_trial_period: Option<bool>,
    #[serde(deserialize_with = "lenient")]
    trial_time_remaining: Option<String>,
}


impl StoreOperation for QueryCollections {
    type Request = pb::QueryCollectionsRequest;
    type Response = pb::QueryCollectionsResponse;
    type Prepared = Query;
    type Answer = Page;

    const ROUTE: &'static Route = &Route {
        name: "POST /v9.0/collections/publisherQuery",
        method: http::Method::POST,
        template: "/v9.0/collections/publisherQuery",
    };
    const ERRORS: &'static ErrorMapping = &ErrorMapping {
        fields: &[
            ("productSkuIds", "products"),
            ("beneficiaries", USER_KEY_FIELD),
            ("continuationToken", "page_token"),
            ("maxPageSize", "page_size"),
            ("validityType", "validity"),
            SBX_FIELD,
        ],
        overrides: &[],
        retries: Retries::TransientAndLostAnswers,
    };
    const EXPECTED: &'static str = "a JSON object with an items array";

    fn validate(request: Self::Request, tenants: &Tenants) -> Result<Query, ApiError> {
        let mut checks = Checks::default();
        let fields = user_fields!(request);
        let tenant = StoreUser::check(&mut checks, &fields);
        match request.products.len() {
            0 => checks.violation("products", "is required: 1 to 100 products"),
            n if n > MAX_PRODUCTS => checks.violation(
                "products",
                format!("names {n} products; at most {MAX_PRODUCTS} per query"),
            ),
            _ => {}
        }
        for product in &request.products {
            checks.store_id("products.product_id", &product.product_id);
            if !product.sku_id.is_empty() {
                checks.store_id("products.sku_id", &product.sku_id);
            }
        }
        let validity = match pb::Validity::try_from(request.validity) {
            Ok(pb::Validity::Unspecified) => None,
            Ok(pb::Validity::All) => Some("All"),
            Ok(pb::Validity::Valid) => Some("Valid"),
            Ok(pb::Validity::Invalid) => Some("Invalid"),
            Err(_) => {
                checks.violation("validity", format!("{} is not a Validity", request.validity));
                None
            }
        };
        let page_size = match u32::try_from(request.page_size) {
            Ok(0) => DEFAULT_PAGE_SIZE,
            Ok(size) if size <= MAX_PAGE_SIZE => size,
            _ => {
                checks.violation("page_size", format!("must be 0 to {MAX_PAGE_SIZE}"));
                DEFAULT_PAGE_SIZE
            }
        };
        let products: Vec<(String, Option<String>)> = request
            .products
            .into_iter()
            .map(|p| (p.product_id, (!p.sku_id.is_empty()).then_some(p.sku_id)))
            .collect();
        let fingerprint = fingerprint(&products, validity, &request.sandbox_id);
        let continuation = paging::check_page_token(&mut checks, &request.page_token, fingerprint);
        checks.finish()?;
        Ok(Query {
            user: StoreUser::finish(fields, tenant, Host::Collections, tenants)?,
            products,
            validity,
            page_size,
            continuation,
            fingerprint,
            all_pages: request.all_pages,
        })
    }

    fn host(_: &Query) -> Host {
        Host::Collections
    }

    fn credential(query: &Query) -> Credential<'_> {
        query.user.credential()
    }

    fn request(query: &Query, token: &Token<'_>) -> Result<UpstreamRequest, ApiError> {
        let body = QueryBody {
            beneficiaries: [query.user.beneficiary()],
            product_sku_ids: query
                .products
                .iter()
                .map(|(product_id, sku_id)| ProductSkuId {
                    product_id,
                    sku_id: sku_id.as_deref(),
                })
                .collect(),
            continuation_token: query.continuation.as_deref(),
            max_page_size: query.page_size,
            exclude_duplicates: true,
            validity_type: query.validity,
            sbx: query.user.sbx(),
        };
        StoreUser::post(Self::ROUTE, token, &body)
    }

    /// The user's key.
    fn secrets(query: &Query) -> impl Iterator<Item = &str> {
        std::iter::once(query.user.key())
    }

    fn parse(body: &[u8]) -> Option<Page> {
        serde_json::from_slice(body).ok()
    }

    /// One page, as the Store answered it.
    fn respond(mut page: Page, query: &Query) -> pb::QueryCollectionsResponse {
        let walked = paging::page_walked::<Self>(query, Self::next_token(&mut page));
        response(page.items.into_iter().map(typed).collect(), &walked, 0)
    }

    async fn fetch(
        backends: Backends,
        query: Query,
        attempts: Arc<Attempts>,
    ) -> Outcome<Self::Response> {
        let all_pages = query.all_pages;
        let mut merged = Merged::default();
        let walked = paging::list::<Self>(&backends, query, &attempts, all_pages, |page| {
            // One page is answered as the Store sent it; duplicates across pages are dropped.
            if all_pages {
                merged.add(page.items);
            } else {
                merged.items.extend(page.items.into_iter().map(typed));
            }
        })
        .await?;
        Ok(walked.map(|walked| response(merged.items, &walked, merged.dropped)))
    }
}

impl Paged for QueryCollections {
    fn continuation(query: &Query) -> Option<&str> {
        query.continuation.as_deref()
    }

    fn continue_from(query: &mut Query, token: Option<String>) {
        query.continuation = token;
    }

    fn next_token(page: &mut Page) -> Option<String> {
        page.continuation_token.take()
    }

    fn fingerprint(query: &Query) -> u64 {
        query.fingerprint
    }
}

/// The answer of a listing of `items` that ended as `walked`.
fn response(
    items: Vec<pb::CollectionItem>,
    walked: &Walked,
    duplicates_dropped: i32,
) -> pb::QueryCollectionsResponse {
    pb::QueryCollectionsResponse {
        items,
        complete: walked.complete(),
        next_page_token: walked.next_page_token.clone(),
        pages: walked.pages,
        duplicates_dropped,
    }
}

/// Items of several pages, one per product and SKU.
#[derive(Default)]
struct Merged {
    items: Vec<pb::CollectionItem>,
    /// (product id, SKU id) -> position in `items`.
    seen: HashMap<(String, String), usize>,
    dropped: i32,
}

impl Merged {
    fn add(&mut self, items: Vec<Item>) {
        for item in items {
            let item = typed(item);
            let key = (item.product_id.clone(), item.sku_id.clone());
            match self.seen.get(&key) {
                Some(&at) => {
                    self.dropped += 1;
                    if priority(&item) < priority(&self.items[at]) {
                        self.items[at] = item;
                    }
                }
                None => {
                    self.seen.insert(key, self.items.len());
                    self.items.push(item);
                }
            }
        }
    }
}

/// The rank of an item among duplicates, lowest kept (`store-services-apis.md` 2.2, from
/// GDK's "query user entitlements"): by source, a direct purchase, then a bundle, then a
/// subscription, then a promotion; from the same source, active, then invalid (expired,
/// banned, suspended, unknown), then revoked.
fn priority(item: &pb::CollectionItem) -> (u8, u8) {
    use pb::AcquisitionType as A;
    use pb::ItemStatus as S;
    let source = match item.acquisition_type() {
        A::Recurring => 2,
        A::Conditional => 3,
        // A source this version does not know ranks below every documented one.
        A::Other => 4,
        _ if !item.satisfied_by_product_ids.is_empty() => 1,
        _ => 0,
    };
    let status = match item.status() {
        S::Active => 0,
        S::Revoked => 2,
        _ => 1,
    };
    (source, status)
}

/// The proto item of a Store item: enums typed, the Store's text kept beside them.
fn typed(item: Item) -> pb::CollectionItem {
    let subscription_id = item
        .recurrence_id
        .filter(|id| !id.is_empty())
        .or_else(|| match item.recurrence_data {
            Some(serde_json::Value::String(id)) => Some(id),
            Some(serde_json::Value::Object(data)) => data
                .get("recurrenceId")
                .and_then(|id| id.as_str())
                .map(str::to_owned),
            _ => None,
        })
        .unwrap_or_default();
    let mut typed = pb::CollectionItem {
        id: item.id.unwrap_or_default(),
        product_id: item.product_id.unwrap_or_default(),
        sku_id: item.sku_id.unwrap_or_default(),
        acquired_date: item.acquired_date.as_deref().and_then(timestamp),
        start_date: item.start_date.as_deref().and_then(timestamp),
        end_date: item.end_date.as_deref().and_then(timestamp),
        modified_date: item.modified_date.as_deref().and_then(timestamp),
        quantity: item.quantity.unwrap_or_default(),
        satisfied_by_product_ids: item.satisfied_by_product_ids.unwrap_or_default(),
        tags: item.tags.unwrap_or_default(),
        transaction_id: item.transaction_id.unwrap_or_default(),
        trial_data: item.trial_data.map(|trial| pb::TrialData {
            is_trial: trial.is_trial.unwrap_or_default(),
            is_in_trial_period: trial.is_in_trial_period.unwrap_or_default(),
            trial_time_remaining: trial.trial_time_remaining.as_deref().and_then(time_span),
        }),
        subscription_id,
        ..Default::default()
    };
    if let Some(kind) = item.product_kind {
        typed.set_product_kind(match kind.to_ascii_lowercase().as_str() {
            "game" => pb::ProductKind::Game,
            "application" => pb::ProductKind::Application,
            "pass" => pb::ProductKind::Pass,
            "durable" => pb::ProductKind::Durable,
            "consumable" => pb::ProductKind::Consumable,
            "unmanagedconsumable" => pb::ProductKind::UnmanagedConsumable,
            _ => pb::ProductKind::Other,
        });
        typed.product_kind_text = kind;
    }
    if let Some(status) = item.status {
        typed.set_status(match status.to_ascii_lowercase().as_str() {
            "active" => pb::ItemStatus::Active,
            "expired" => pb::ItemStatus::Expired,
            "revoked" => pb::ItemStatus::Revoked,
            "banned" => pb::ItemStatus::Banned,
            "suspended" => pb::ItemStatus::Suspended,
            _ => pb::ItemStatus::Other,
        });
        typed.status_text = status;
    }
    if let Some(acquisition) = item.acquisition_type {
        typed.set_acquisition_type(match acquisition.to_ascii_lowercase().as_str() {
            "single" => pb::AcquisitionType::Single,
            "recurring" => pb::AcquisitionType::Recurring,
            "conditional" => pb::AcquisitionType::Conditional,
            _ => pb::AcquisitionType::Other,
        });
        typed.acquisition_type_text = acquisition;
    }
    typed
}


/// The longest `google.protobuf.Duration`, in seconds.
const MAX_DURATION_SECONDS: i64 = 315_576_000_000;

/// A .NET `TimeSpan` as the Store writes it: `[-][d.]hh:mm:ss[.fffffff]`; `None` if
/// unreadable.
fn time_span(text: &str) -> Option<prost_types::Duration> {
    let (negative, text) = match text.trim().strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.trim()),
    };
    let mut parts = text.split(':');
    let (Some(first), Some(minutes), Some(seconds), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    let (days, hours) = match first.split_once('.') {
        Some((days, hours)) => (number(days)?, number(hours)?),
        None => (0, number(first)?),
    };
    let (whole, fraction) = match seconds.split_once('.') {
        Some((whole, fraction)) => (number(whole)?, fraction),
        None => (number(seconds)?, ""),
    };
    let minutes = number(minutes)?;
    if hours > 23 || minutes > 59 || whole > 59 || fraction.len() > 9 {
        return None;
    }
    let nanos = if fraction.is_empty() {
        0
    } else {
        number(fraction)? * 10_i64.pow(9 - fraction.len() as u32)
    };
    let seconds = days
        .checked_mul(86_400)?
        .checked_add(hours * 3600 + minutes * 60 + whole)?;
    // Beyond the range of a Duration (about 10,000 years), which other languages refuse.
    if seconds > MAX_DURATION_SECONDS {
        return None;
    }
    let sign = if negative { -1 } else { 1 };
    Some(prost_types::Duration {
        seconds: sign * seconds,
        nanos: (sign * nanos) as i32,
    })
}

/// Digits only, as a number.
fn number(text: &str) -> Option<i64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// What a page token is bound to: the products (in any order), the validity and the sandbox.
/// The page size may change between pages.
fn fingerprint(products: &[(String, Option<String>)], validity: Option<&str>, sbx: &str) -> u64 {
    let mut sorted: Vec<&(String, Option<String>)> = products.iter().collect();
    sorted.sort();
    sorted
        .into_iter()
        .fold(Fingerprint::default(), |hash, (product, sku)| {
            hash.field(product).field(sku.as_deref().unwrap_or(""))
        })
        .field(validity.unwrap_or(""))
        .field(sbx)
        .finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_read_as_the_store_writes_them() {
        let at = |text| timestamp(text).map(|t| (t.seconds, t.nanos));
        assert_eq!(
            at("2026-01-02T03:04:05.1234567+00:00"),
            Some((1_767_323_045, 123_456_700))
        );
        assert_eq!(at("2026-01-02T03:04:05Z"), Some((1_767_323_045, 0)));
        assert_eq!(at("2026-01-02T03:04:05"), Some((1_767_323_045, 0)));
        assert_eq!(at("2026-01-02T04:04:05+01:00"), Some((1_767_323_045, 0)));
        assert!(at("9999-12-31T23:59:59.9999999+00:00").is_some());
        assert!(at("0001-01-01T00:00:00+00:00").is_some());
        assert_eq!(at("yesterday"), None);
        // Outside a Timestamp's years 1 to 9999: left unset, not answered out of range.
        assert_eq!(at("+10000-01-01T00:00:00Z"), None);
        assert_eq!(at("10000-01-01T00:00:00Z"), None);
    }

    #[test]
    fn trial_time_is_a_dotnet_time_span() {
        let span = |text| time_span(text).map(|d| (d.seconds, d.nanos));
        assert_eq!(span("09:43:52.8580690"), Some((35_032, 858_069_000)));
        assert_eq!(span("6.23:59:59"), Some((604_799, 0)));
        assert_eq!(span("-00:00:01.5"), Some((-1, -500_000_000)));
        assert_eq!(span("3652424.23:59:59"), Some((315_569_519_999, 0)));
        for bad in [
            "",
            "1:2",
            "24:00:00",
            "00:60:00",
            "a.00:00:00",
            "00:00:00.1234567890",
            // Beyond a Duration's range, and beyond i64.
            "99999999999.00:00:00",
            "99999999999999999999.00:00:00",
        ] {
            assert_eq!(span(bad), None, "{bad}");
        }
    }

    #[test]
    fn unknown_values_are_kept_as_text() {
        let page: Page = serde_json::from_str(
            r#"{"items":[{"productId":"p","skuId":"s","productKind":"Hologram",
                "status":"Frozen","acquisitionType":"Gifted","quantity":"many",
                "recurrenceData":"mdr:0:abc"}]}"#,
        )
        .unwrap();
        let item = typed(page.items.into_iter().next().unwrap());
        assert_eq!(item.product_kind(), pb::ProductKind::Other);
        assert_eq!(item.product_kind_text, "Hologram");
        assert_eq!(item.status(), pb::ItemStatus::Other);
        assert_eq!(item.status_text, "Frozen");
        assert_eq!(item.acquisition_type(), pb::AcquisitionType::Other);
        assert_eq!(item.acquisition_type_text, "Gifted");
        assert_eq!(item.quantity, 0);
        assert_eq!(item.subscription_id, "mdr:0:abc");
    }

    #[test]
    fn the_subscription_id_comes_from_either_field() {
        for body in [
            r#"{"recurrenceId":"r-1"}"#,
            r#"{"recurrenceData":"r-1"}"#,
            r#"{"recurrenceData":{"recurrenceId":"r-1"}}"#,
        ] {
            let item: Item = serde_json::from_str(body).unwrap();
            assert_eq!(typed(item).subscription_id, "r-1", "{body}");
        }
    }

    fn item(product: &str, acquisition: &str, bundle: bool, status: &str, id: &str) -> Item {
        Item {
            id: Some(id.into()),
            product_id: Some(product.into()),
            sku_id: Some("0010".into()),
            acquisition_type: Some(acquisition.into()),
            satisfied_by_product_ids: Some(if bundle { vec!["BUNDLE".into()] } else { vec![] }),
            status: Some(status.into()),
            ..Default::default()
        }
    }

    #[test]
    fn duplicates_keep_the_documented_priority_in_the_first_ones_place() {
        let mut merged = Merged::default();
        merged.add(vec![
            item("A", "Recurring", false, "Active", "a-pass"),
            item("B", "Single", false, "Revoked", "b-revoked"),
            item("C", "Conditional", false, "Active", "c-promo"),
        ]);
        merged.add(vec![
            item("A", "Single", true, "Active", "a-bundle"),
            item("B", "Single", false, "Expired", "b-expired"),
            item("C", "Recurring", false, "Revoked", "c-pass"),
            item("A", "Single", false, "Revoked", "a-direct-revoked"),
            item("B", "Recurring", false, "Active", "b-pass"),
        ]);
        let ids: Vec<&str> = merged.items.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(ids, ["a-direct-revoked", "b-expired", "c-pass"]);
        assert_eq!(merged.dropped, 5);

        // A source this version does not know ranks below every documented one.
        let mut merged = Merged::default();
        merged.add(vec![
            item("D", "Gifted", false, "Active", "d-unknown"),
            item("D", "Conditional", false, "Revoked", "d-promo"),
        ]);
        assert_eq!(merged.items[0].id, "d-promo");
    }

    #[test]
    fn page_tokens_are_bound_to_the_products_validity_and_sandbox() {
        let products = vec![("A".to_owned(), None), ("B".to_owned(), Some("0010".to_owned()))];
        let query = fingerprint(&products, Some("Valid"), "");
        // The same products in another order make the same query.
        let reordered: Vec<_> = products.iter().rev().cloned().collect();
        assert_eq!(fingerprint(&reordered, Some("Valid"), ""), query);
        for other in [
            fingerprint(&products, None, ""),
            fingerprint(&products, Some("Valid"), "XDKS.1"),
            fingerprint(&products[..1], Some("Valid"), ""),
        ] {
            assert_ne!(other, query);
        }
    }
}
