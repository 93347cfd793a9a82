//! The collections query, `POST /collections/v9.0/collections/publisherQuery` (also spelled
//! `PublisherQuery`, as Microsoft's library does), over the [`catalog`](super::catalog) every
//! sandbox user owns; and what it shares with consume ([`super::consume`]): the JSON body read
//! field by field, the beneficiary, the credentials and the rate limit.
//!
//! Every request goes through, in order: `Content-Type: application/json` (else 415); the body
//! (400 `InvalidParameter` naming the first bad field); magic ids in the products; the bearer
//! token (401 `PartnerAadTicketRequired` without one, `AuthenticationTokenInvalid` for a bad or
//! key-creation one); the beneficiary's UserCollectionsId key (401 `AuthenticationTokenInvalid`
//! when not an unexpired collections key of this emulator, `InconsistentClientId` when its
//! `clientId` is not the token's `appid`); the rate limit ([`super::fgrl`], 429).
//!
//! The query then lists the items of the requested products (a `skuId`, when given, must match
//! too; products outside the catalog are simply not owned), `Valid` keeping `Active` items and
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
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::catalog::{self, Grant, ProductKind, Status, GRANTS};
use super::clock::{fnv1a, now};
use super::connection::ConnectionControl;
use super::entra::bearer_ticket;
use super::keys::{check_key, key_claim};
use super::magic::Magic;
use super::{fgrl, host_prefix, store_answer, EmulatorState};
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

/// A request field that is missing or wrong: the 400 `InvalidParameter` naming it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct BadField {
    pub(super) field: &'static str,
    pub(super) detail: &'static str,
}

impl BadField {
    pub(super) fn new(field: &'static str, detail: &'static str) -> Self {
        Self { field, detail }
    }

    pub(super) fn answer(&self, request: &HeaderMap) -> Response {
        store_answer::invalid_parameter(request, self.field, self.detail)
    }
}

/// A JSON body read field by field, so that a refusal names the field and never echoes what
/// it holds (a key may sit anywhere).
pub(super) struct JsonBody(Map<String, Value>);

impl JsonBody {
    pub(super) fn parse(body: &[u8]) -> Result<Self, BadField> {
        match serde_json::from_slice(body) {
            Ok(Value::Object(fields)) => Ok(Self(fields)),
            _ => Err(BadField::new("body", "The body must be a JSON object.")),
        }
    }

    /// `name`, absent or `null` being `None`.
    pub(super) fn optional<T: DeserializeOwned>(
        &self,
        name: &'static str,
    ) -> Result<Option<T>, BadField> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(value) => T::deserialize(value)
                .map(Some)
                .map_err(|_| BadField::new(name, "The parameter has the wrong type.")),
        }
    }

    pub(super) fn required<T: DeserializeOwned>(&self, name: &'static str) -> Result<T, BadField> {
        self.optional(name)?
            .ok_or_else(|| BadField::new(name, "The parameter is required."))
    }
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

/// Who a request acts for: the key's `userId` and the application that holds the key.
#[derive(Debug, Clone)]
pub(super) struct StoreUser {
    pub(super) user_id: String,
    pub(super) client_id: String,
}

/// Checks the bearer token, the beneficiary's key and the rate limit; one operation is
/// counted when all pass.
fn authorize(
    state: &EmulatorState,
    request: &HeaderMap,
    key: &str,
) -> Result<StoreUser, Box<Response>> {
    let ticket = bearer_ticket(request)?;
    let claims = check_key(Host::Collections, key, &ticket.appid)
        .map_err(|(inner, detail)| Box::new(store_answer::unauthorized(request, inner, detail)))?;
    let user = StoreUser {
        user_id: key_claim(&claims, "userId").unwrap_or_default().to_owned(),
        client_id: ticket.appid,
    };
    state
        .rate_limiter
        .admit(&user.user_id, &user.client_id, now())
        .map_err(|retry_after| Box::new(fgrl::throttled(request, retry_after)))?;
    Ok(user)
}

/// The answer of the first magic id among `ids`, if one fails on purpose (`parameter` names
/// where it was; a 429 says the rate limiter's text).
async fn magic_answer<'a>(
    ids: impl IntoIterator<Item = &'a str>,
    parameter: &str,
    request: &HeaderMap,
    connection: &ConnectionControl,
) -> Option<Response> {
    let magic = ids.into_iter().find_map(Magic::parse)?;
    magic
        .apply_throttling_as(request, parameter, connection, &fgrl::message())
        .await
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

    fn wants(&self, grant: &Grant) -> bool {
        self.products.iter().any(|wanted| {
            wanted.product_id.eq_ignore_ascii_case(grant.product_id)
                && wanted
                    .sku_id
                    .as_deref()
                    .is_none_or(|sku| sku == catalog::SANDBOX_SKU)
        }) && self.validity.admits(grant.status)
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

/// The token of the page that starts at `offset`.
fn continuation_token(offset: usize, fingerprint: &str) -> String {
    let text = json!({"checkSatisfactionIndex": offset, "query": fingerprint}).to_string();
    STANDARD.encode(text)
}

/// Where the page of `token` starts, if the token belongs to this query.
fn page_offset(token: &str, fingerprint: &str, listed: usize) -> Result<usize, BadField> {
    let refused = || {
        BadField::new(
            "continuationToken",
            "The continuation token is invalid or belongs to another query.",
        )
    };
    let bytes = STANDARD.decode(token.trim()).map_err(|_| refused())?;
    let parsed: Value = serde_json::from_slice(&bytes).map_err(|_| refused())?;
    let offset = parsed["checkSatisfactionIndex"]
        .as_u64()
        .and_then(|o| usize::try_from(o).ok())
        .filter(|o| (1..listed).contains(o));
    match offset {
        Some(offset) if parsed["query"] == fingerprint => Ok(offset),
        _ => Err(refused()),
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

/// A request body of a collections operation.
pub(super) trait CollectionsRequest: Sized {
    /// The parameter a magic id is named by when it fails the request.
    const MAGIC_PARAMETER: &'static str;
    /// Reads the body, or names the first bad field.
    fn parse(body: &[u8]) -> Result<Self, BadField>;
    /// The product ids that may be magic.
    fn product_ids(&self) -> Vec<&str>;
    /// The beneficiary's UserCollectionsId.
    fn key(&self) -> &str;
}

/// What both operations check first, in order: the content type, the body, magic ids, then
/// [`authorize`]. The request and its user, or the answer that ends the exchange.
pub(super) async fn admit<R: CollectionsRequest>(
    state: &EmulatorState,
    connection: &ConnectionControl,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(R, StoreUser), Response> {
    store_answer::require_json(headers).map_err(|refusal| *refusal)?;
    let request = R::parse(body).map_err(|bad| bad.answer(headers))?;
    let ids = request.product_ids();
    if let Some(answer) = magic_answer(ids, R::MAGIC_PARAMETER, headers, connection).await {
        return Err(answer);
    }
    let user = authorize(state, headers, request.key()).map_err(|refusal| *refusal)?;
    Ok((request, user))
}

impl CollectionsRequest for PublisherQuery {
    const MAGIC_PARAMETER: &'static str = "productSkuIds";

    fn parse(body: &[u8]) -> Result<Self, BadField> {
        Self::parse_body(body)
    }

    fn product_ids(&self) -> Vec<&str> {
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
    match admit::<PublisherQuery>(&state, &connection, &headers, &body).await {
        Ok((query, user)) => {
            answer_query(&state, &headers, &query, &user).unwrap_or_else(|bad| bad.answer(&headers))
        }
        Err(refusal) => refusal,
    }
}

/// The page `query` asks for, or a bad continuation token.
fn answer_query(
    state: &EmulatorState,
    headers: &HeaderMap,
    query: &PublisherQuery,
    user: &StoreUser,
) -> Result<Response, BadField> {
    let listed: Vec<&Grant> = GRANTS.iter().filter(|g| query.wants(g)).collect();
    let fingerprint = query.fingerprint(user);
    let offset = match &query.continuation_token {
        Some(token) => page_offset(token, &fingerprint, listed.len())?,
        None => 0,
    };
    let end = listed.len().min(offset + query.page_size);
    let mut page = listed[offset..end].to_vec();
    if query.exclude_duplicates {
        page = without_duplicates(&page);
    }
    let items: Vec<Value> = page
        .iter()
        .map(|grant| {
            let quantity = match grant.kind {
                ProductKind::Consumable => state.ledger.balance(&user.user_id, grant.product_id),
                _ => 1,
            };
            grant.item(&user.user_id, quantity)
        })
        .collect();
    let mut answer = json!({ "items": items });
    if end < listed.len() {
        answer["continuationToken"] = continuation_token(end, &fingerprint).into();
    }
    Ok(store_answer::json_answer(StatusCode::OK, headers, &answer))
}

#[cfg(test)]
mod tests {
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
    fn continuation_tokens_belong_to_one_query() {
        let token = continuation_token(2, "abc");
        assert_eq!(page_offset(&token, "abc", 5), Ok(2));
        for (token, fingerprint, listed) in [
            (token.as_str(), "abd", 5),
            (token.as_str(), "abc", 2),
            ("not base64!", "abc", 5),
            ("e30=", "abc", 5),
        ] {
            let refused = page_offset(token, fingerprint, listed).unwrap_err();
            assert_eq!(refused.field, "continuationToken");
        }
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
