//! The collections query, `POST /collections/v9.0/collections/publisherQuery` (also spelled
//! `PublisherQuery`, as Microsoft's library does), over the [`catalog`](super::catalog) every
//! sandbox user owns (and the free products granted to the user, [`super::grant`]); and the
//! beneficiary it shares with consume ([`super::consume`]).
//!
//! Every request goes through [`super::b2b::admit`]: content type, body, magic ids in the
//! products, the bearer token, the beneficiary's UserCollectionsId key (a purchase key is 401
//! `AuthenticationTokenInvalid`), the rate limit.
//!
//! The query then lists the items of the requested products (a `skuId`, when given, must match
//! too; products outside the catalog are simply not owned, unless granted), `Valid` keeping `Active` items and
//! `Invalid` the others. A page holds at most `maxPageSize` items (default 100, at most 200);
//! `continuationToken` comes back only when more follow. The token is base64 of
//! `{"checkSatisfactionIndex": offset, "query": hash}`, the hash covering the user, the
//! application, the products and `validityType`: a token of another query is 400 naming
//! `continuationToken`. `excludeDuplicates` drops duplicates (same `productId` and `skuId`)
//! within one page only, keeping the documented priority; duplicates on other pages stay, as
//! the Store documents.
//!
//! Answer: `{"items": [item...], "continuationToken"?: string}`, each item with exactly
//! `acquiredDate, acquisitionType, endDate, id, modifiedDate, productId, productKind, quantity,
//! recurrenceData, satisfiedByProductIds, skuId, startDate, status, tags, transactionId,
//! trialData` (one item carries `recurrenceId` in place of `recurrenceData`).

use axum::extract::{ConnectInfo, State};
use axum::http::HeaderMap;
use axum::response::Response;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::Value;

use super::b2b::{
    admit, continuation_token, page_answer, page_offset, BadField, JsonBody, StoreRequest,
    StoreUser,
};
use super::catalog::{self, Grant, ProductKind, Status, GRANTS};
use super::clock::fnv1a;
use super::connection::ConnectionControl;
use super::{host_prefix, EmulatorState};
use crate::upstream::Host;

/// The most `productSkuIds` one query may name.
pub const MAX_PRODUCT_SKU_IDS: usize = 100;
/// `maxPageSize` when the request has none.
pub const DEFAULT_PAGE_SIZE: usize = 100;
/// The largest `maxPageSize`.
pub const MAX_PAGE_SIZE: usize = 200;

/// `POST /collections/v9.0/collections/publisherQuery` and its `PublisherQuery` spelling.
pub(super) fn routes() -> axum::Router<EmulatorState> {
    let prefix = host_prefix(Host::Collections);
    axum::Router::new()
        .route(
            &format!("{prefix}/v9.0/collections/publisherQuery"),
            axum::routing::post(publisher_query),
        )
        .route(
            &format!("{prefix}/v9.0/collections/PublisherQuery"),
            axum::routing::post(publisher_query),
        )
}

/// A `UserIdentity` (store-services-apis.md 1.3).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct UserIdentity {
    identity_type: Option<String>,
    identity_value: Option<String>,
}

/// The UserCollectionsId key of a beneficiary whose `identityType` is `b2b`.
pub(super) fn beneficiary_key(
    body: &JsonBody,
    field: &'static str,
    single: bool,
) -> Result<String, BadField> {
    let identity: UserIdentity = if single {
        body.required(field)?
    } else {
        let mut all: Vec<UserIdentity> = body.required(field)?;
        if all.len() != 1 {
            return Err(BadField::new(field, "Exactly one beneficiary is required."));
        }
        all.remove(0)
    };
    if !identity
        .identity_type
        .is_some_and(|t| t.eq_ignore_ascii_case("b2b"))
    {
        return Err(BadField::new(field, "identityType must be b2b."));
    }
    identity
        .identity_value
        .filter(|key| !key.trim().is_empty())
        .ok_or_else(|| BadField::new(field, "identityValue (a UserCollectionsId) is required."))
}

/// One entry of `productSkuIds`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ProductSkuId {
    product_id: String,
    sku_id: Option<String>,
}

/// `validityType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Validity {
    All,
    Valid,
    Invalid,
}

impl Validity {
    fn parse(text: Option<String>) -> Result<Self, BadField> {
        let Some(text) = text else {
            return Ok(Self::All);
        };
        [Self::All, Self::Valid, Self::Invalid]
            .into_iter()
            .find(|v| format!("{v:?}").eq_ignore_ascii_case(&text))
            .ok_or_else(|| BadField::new("validityType", "Use All, Valid or Invalid."))
    }

    fn admits(self, status: Status) -> bool {
        match self {
            Self::All => true,
            Self::Valid => status == Status::Active,
            Self::Invalid => status != Status::Active,
        }
    }
}

/// A publisherQuery body.
#[derive(Debug)]
struct PublisherQuery {
    key: String,
    products: Vec<ProductSkuId>,
    continuation_token: Option<String>,
    page_size: usize,
    exclude_duplicates: bool,
    validity: Validity,
}

impl PublisherQuery {
    fn parse_body(body: &[u8]) -> Result<Self, BadField> {
        let body = JsonBody::parse(body)?;
        let products: Vec<ProductSkuId> = body.required("productSkuIds")?;
        if products.is_empty() || products.len() > MAX_PRODUCT_SKU_IDS {
            return Err(BadField::new(
                "productSkuIds",
                "Between 1 and 100 productSkuIds are required.",
            ));
        }
        if products.iter().any(|p| p.product_id.trim().is_empty()) {
            return Err(BadField::new("productSkuIds", "A productId is empty."));
        }
        let page_size =
            body.optional::<i64>("maxPageSize")?
                .map_or(Ok(DEFAULT_PAGE_SIZE), |size| {
                    usize::try_from(size)
                        .ok()
                        .filter(|size| (1..=MAX_PAGE_SIZE).contains(size))
                        .ok_or_else(|| BadField::new("maxPageSize", "Use 1 to 200."))
                })?;
        body.optional::<String>("sbx")?;
        Ok(Self {
            key: beneficiary_key(&body, "beneficiaries", false)?,
            products,
            continuation_token: body.optional("continuationToken")?,
            page_size,
            exclude_duplicates: body.optional("excludeDuplicates")?.unwrap_or(false),
            validity: Validity::parse(body.optional("validityType")?)?,
        })
    }

    fn wants(&self, product_id: &str, status: Status) -> bool {
        self.products.iter().any(|wanted| {
            wanted.product_id.eq_ignore_ascii_case(product_id)
                && wanted
                    .sku_id
                    .as_deref()
                    .is_none_or(|sku| sku == catalog::SANDBOX_SKU)
        }) && self.validity.admits(status)
    }

    /// What a continuation token is bound to: the user, the application, the products and
    /// the validity (not the page size, which may change from page to page).
    fn fingerprint(&self, user: &StoreUser) -> String {
        let mut products: Vec<String> = self
            .products
            .iter()
            .map(|p| {
                let sku = p.sku_id.as_deref().unwrap_or("*");
                format!("{}/{sku}", p.product_id.to_ascii_uppercase())
            })
            .collect();
        products.sort();
        products.dedup();
        let validity = format!("{:?}", self.validity);
        let mut parts = vec![user.user_id.as_str(), &user.client_id, &validity];
        parts.extend(products.iter().map(String::as_str));
        format!("{:016x}", fnv1a(&parts, 5))
    }
}

/// Keeps, of each (productId, skuId) on the page, the copy the documented priority prefers.
fn without_duplicates<'g>(page: &[&'g Grant]) -> Vec<&'g Grant> {
    page.iter()
        .enumerate()
        .filter(|(index, grant)| {
            !page.iter().enumerate().any(|(other_index, other)| {
                other.product_id == grant.product_id
                    && (grant.outranked_by(other)
                        || (other_index < *index && !other.outranked_by(grant)))
            })
        })
        .map(|(_, grant)| *grant)
        .collect()
}

impl StoreRequest for PublisherQuery {
    const HOST: Host = Host::Collections;
    const MAGIC_PARAMETER: &'static str = "productSkuIds";

    fn magic_ids(&self) -> Vec<&str> {
        self.products
            .iter()
            .map(|p| p.product_id.as_str())
            .collect()
    }

    fn key(&self) -> &str {
        &self.key
    }
}

/// `POST /collections/v9.0/collections/publisherQuery`.
async fn publisher_query(
    State(state): State<EmulatorState>,
    ConnectInfo(connection): ConnectInfo<ConnectionControl>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let parsed = PublisherQuery::parse_body(&body);
    match admit(&state, &connection, &headers, parsed).await {
        Ok((query, user)) => {
            answer_query(&state, &headers, &query, &user).unwrap_or_else(|bad| bad.answer(&headers))
        }
        Err(refusal) => refusal,
    }
}

/// The page `query` asks for, or a bad continuation token. The catalog's items come first,
/// then the products granted to the user, which are never duplicates of catalog items.
fn answer_query(
    state: &EmulatorState,
    headers: &HeaderMap,
    query: &PublisherQuery,
    user: &StoreUser,
) -> Result<Response, BadField> {
    let listed: Vec<&Grant> = GRANTS
        .iter()
        .filter(|g| query.wants(g.product_id, g.status))
        .collect();
    let granted: Vec<Value> = state
        .grants
        .owned_by(&user.user_id)
        .iter()
        .filter(|owned| query.wants(owned.product_id(), Status::Active))
        .map(|owned| owned.item(&user.user_id))
        .collect();
    let total = listed.len() + granted.len();
    let fingerprint = query.fingerprint(user);
    let offset = match &query.continuation_token {
        Some(token) => page_offset(token, &fingerprint, total)?,
        None => 0,
    };
    let end = total.min(offset + query.page_size);
    let mut page = listed[offset.min(listed.len())..end.min(listed.len())].to_vec();
    if query.exclude_duplicates {
        page = without_duplicates(&page);
    }
    let mut items: Vec<Value> = page
        .iter()
        .map(|grant| {
            let quantity = match grant.kind {
                ProductKind::Consumable => state.ledger.balance(&user.user_id, grant.product_id),
                _ => 1,
            };
            grant.item(&user.user_id, quantity)
        })
        .collect();
    let catalog_items = listed.len();
    items.extend_from_slice(
        &granted[offset.saturating_sub(catalog_items)..end.saturating_sub(catalog_items)],
    );
    let next = (end < total).then(|| continuation_token(end, &fingerprint));
    Ok(page_answer(headers, items, next))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn duplicates_on_one_page_keep_the_documented_priority() {
        let all: Vec<&Grant> = GRANTS.iter().collect();
        let kept = without_duplicates(&all);
        assert_eq!(kept.len(), GRANTS.len() - 2);
        let game = kept
            .iter()
            .find(|g| g.product_id == catalog::SANDBOX_GAME)
            .unwrap();
        // A direct purchase outranks a subscription, even revoked (GDK22).
        assert_eq!(game.status, Status::Revoked);
    }

    #[test]
    fn bodies_name_the_bad_field_without_echoing_it() {
        let refused =
            |body: Value| PublisherQuery::parse_body(body.to_string().as_bytes()).unwrap_err();
        let key = "eyJhbGciOi.secret.key";
        let one = json!([{"identityType": "b2b", "identityValue": key}]);
        let products = json!([{"productId": "9NSANDBOXGME"}]);
        let too_many: Vec<Value> = (0..101)
            .map(|i| json!({"productId": format!("P{i}")}))
            .collect();
        for (body, field) in [
            (json!([]), "body"),
            (json!({"beneficiaries": one}), "productSkuIds"),
            (
                json!({"beneficiaries": one, "productSkuIds": too_many}),
                "productSkuIds",
            ),
            (
                json!({"beneficiaries": one, "productSkuIds": products, "maxPageSize": 201}),
                "maxPageSize",
            ),
            (
                json!({"beneficiaries": one, "productSkuIds": products, "maxPageSize": 0}),
                "maxPageSize",
            ),
            (
                json!({"beneficiaries": key, "productSkuIds": products}),
                "beneficiaries",
            ),
            (
                json!({"beneficiaries": [], "productSkuIds": products}),
                "beneficiaries",
            ),
            (
                json!({"beneficiaries": one, "productSkuIds": products, "validityType": "Some"}),
                "validityType",
            ),
        ] {
            let bad = refused(body.clone());
            assert_eq!(bad.field, field, "{body}");
            assert!(!bad.detail.contains(key));
        }
    }
}
