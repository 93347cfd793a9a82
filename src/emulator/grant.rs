//! Grant free product, `POST /purchase/v7.0/purchases/grant` (GDK) and `POST
//! /purchase/v6.0/purchases/grant` (UWP) (store-services-apis.md 2.6), with the checks of
//! [`super::b2b::admit`]: a `b2bKey` UserPurchaseId, a magic `productId`, the rate limit.
//!
//! Body: `availabilityId`, `b2bKey`, `language`, `market`, `orderId` (a GUID), `productId`,
//! `skuId` (all required), `devOfferId`, `quantity` (only 1), `sbx`. A missing or bad field is
//! 400 `InvalidParameter` naming it (`quantity` other than 1 included).
//!
//! - Only the free [`offers`](super::catalog::OFFERS) can be granted: a priced product (the
//!   priced offer and every other catalog product) is 400 `InvalidParameter` naming
//!   `productId` ("not free"); a product the catalog does not have is the same 400 with the
//!   Store's "Requested catalog product data wasn't found."; a `skuId` other than the
//!   catalog's is 400 naming `skuId`. `MAGIC-SLOW-*` grants the free durable.
//! - Idempotent per user and `orderId` (compared without regard to case): a replay with the
//!   same `productId` and `skuId` answers the kept order and grants nothing more; another
//!   product or SKU is **409 Conflict, inner code `OrderIdConflict`** naming `orderId`. Each
//!   new `orderId` is a new order, even of a product already granted.
//! - A granted product shows in the user's collections query ([`super::collections`]; one
//!   item per product, a consumable's `quantity` being how many times it was granted) and its
//!   order in the orders query ([`super::orders`], line item `Purchased`, made in the sandbox
//!   `sbx` names, `RETAIL` when none).
//! - [`SANDBOX_REVOKED_ON_GRANT`](catalog::SANDBOX_REVOKED_ON_GRANT) (`9NSANDBOXRVK`) is
//!   granted like the other free products, and then at once refunded: its order's line item
//!   turns `Revoked` (with `orderRefundedDate`) and a `Revoked` event (source
//!   `/Purchase/Refund`) goes into the refund queue of the token's application
//!   ([`super::refunds`]). A replay of its `orderId` refunds nothing more.
//!
//! Answer 200: the order, camelCase: `clientContext, createdTime, currencyCode, friendlyName,
//! isPIRequired, language, market, orderId, orderLineItems, orderState ("Purchased"),
//! orderValidityEndTime, orderValidityStartTime, purchaser, testScenarios, totalAmount,
//! totalAmountBeforeTax, totalChargedToCsvTopOffPI, totalTaxAmount`, with one line item
//! `agent, availabilityId, beneficiary {"identityType": "pub", "identityValue": userId},
//! billingState ("Charged"), campaignId, currencyCode, description, devofferId,
//! fulfillmentDate, fulfillmentState ("Fulfilled"), isPIRequired, isTaxIncluded,
//! legacyBillingOrderId, lineItemId, listPrice, payments, productId, productType, quantity,
//! retailPrice, revenueRecognitionState, skuId, taxAmount, taxType, title, totalAmount`; every
//! amount 0.

use std::collections::HashMap;
use std::sync::Mutex;

use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use serde_json::{json, Value};

use super::b2b::{admit, BadField, JsonBody, PurchaseKey, StoreRequest, StoreUser};
use super::catalog::{self, Offer, OFFER_CURRENCY, SANDBOX_SKU};
use super::clock::{guid_for, now, store_timestamp};
use super::connection::ConnectionControl;
use super::magic::MAGIC_SLOW_PREFIX;
use super::orders::RETAIL;
use super::{host_prefix, refunds, store_answer, EmulatorState};
use crate::auth::is_guid;
use crate::upstream::Host;

/// Inner code of an `orderId` replayed with another product or SKU.
const ORDER_ID_CONFLICT: &str = "OrderIdConflict";

/// `POST /purchase/v7.0/purchases/grant` and `POST /purchase/v6.0/purchases/grant`.
pub(super) fn routes() -> axum::Router<EmulatorState> {
    let prefix = host_prefix(Host::Purchase);
    axum::Router::new()
        .route(
            &format!("{prefix}/v7.0/purchases/grant"),
            axum::routing::post(grant),
        )
        .route(
            &format!("{prefix}/v6.0/purchases/grant"),
            axum::routing::post(grant),
        )
}

/// A grant body.
#[derive(Debug)]
struct GrantRequest {
    key: PurchaseKey,
    availability_id: String,
    dev_offer_id: Option<String>,
    language: String,
    market: String,
    order_id: String,
    product_id: String,
    sku_id: String,
    sbx: Option<String>,
}

impl GrantRequest {
    fn parse_body(body: &[u8]) -> Result<Self, BadField> {
        let body = JsonBody::parse(body)?;
        let key = PurchaseKey::read(&body)?;
        let request = Self {
            availability_id: body.required_text("availabilityId")?,
            dev_offer_id: body.optional("devOfferId")?,
            language: body.required_text("language")?,
            market: body.required_text("market")?,
            order_id: body.required_text("orderId")?,
            product_id: body.required_text("productId")?,
            sku_id: body.required_text("skuId")?,
            sbx: body.optional("sbx")?,
            key,
        };
        if !is_guid(&request.order_id) {
            return Err(BadField::new("orderId", "The orderId must be a GUID."));
        }
        if body.optional::<i64>("quantity")?.is_some_and(|q| q != 1) {
            return Err(BadField::new(
                "quantity",
                "The only supported quantity is 1.",
            ));
        }
        Ok(request)
    }
}

impl StoreRequest for GrantRequest {
    const HOST: Host = Host::Purchase;
    const MAGIC_PARAMETER: &'static str = "productId";

    fn magic_ids(&self) -> Vec<&str> {
        vec![&self.product_id]
    }

    fn key(&self) -> &str {
        &self.key.key
    }
}

/// An order a grant created.
#[derive(Debug, Clone)]
pub(super) struct GrantedOrder {
    pub(super) order_id: String,
    pub(super) line_item_id: String,
    pub(super) offer: &'static Offer,
    pub(super) sku_id: String,
    /// When it was granted, in seconds since the Unix epoch.
    pub(super) created: i64,
    /// The grant's `sbx`, `RETAIL` when it had none.
    pub(super) sandbox: String,
    /// The grant's answer, replayed as is.
    order: Value,
}

/// What the grants gave one user of one product, for the collections query.
#[derive(Debug, Clone)]
pub(super) struct Owned {
    offer: &'static Offer,
    first_order_id: String,
    first_granted: i64,
    grants: i64,
}

impl Owned {
    pub(super) fn product_id(&self) -> &'static str {
        self.offer.product_id
    }

    /// The collections item of this product for `user`.
    pub(super) fn item(&self, user: &str) -> Value {
        catalog::granted_item(
            user,
            self.offer,
            &self.first_order_id,
            self.first_granted,
            self.grants,
        )
    }
}

/// The orders grants created, per user, in the emulator's memory.
#[derive(Debug, Default)]
pub(super) struct GrantBook {
    /// Per userId, oldest first.
    orders: Mutex<HashMap<String, Vec<GrantedOrder>>>,
}

impl GrantBook {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<GrantedOrder>>> {
        self.orders
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Every order granted to `user`, oldest first.
    pub(super) fn orders_of(&self, user: &str) -> Vec<GrantedOrder> {
        self.lock().get(user).cloned().unwrap_or_default()
    }

    /// The products granted to `user`, in the order first granted.
    pub(super) fn owned_by(&self, user: &str) -> Vec<Owned> {
        let mut owned: Vec<Owned> = Vec::new();
        for order in self.orders_of(user) {
            match owned
                .iter_mut()
                .find(|o| o.offer.product_id == order.offer.product_id)
            {
                Some(product) => product.grants += 1,
                None => owned.push(Owned {
                    offer: order.offer,
                    first_order_id: order.order_id.clone(),
                    first_granted: order.created,
                    grants: 1,
                }),
            }
        }
        owned
    }

    /// Grants `offer` to `user` as `request.order_id` asks (the order and `true`), or answers
    /// the order that `order_id` already made (and `false`); `None` when that order was of
    /// another product or SKU.
    fn grant(
        &self,
        user: &StoreUser,
        offer: &'static Offer,
        request: &GrantRequest,
    ) -> Option<(Value, bool)> {
        let mut orders = self.lock();
        let kept = orders.entry(user.user_id.clone()).or_default();
        if let Some(order) = kept
            .iter()
            .find(|o| o.order_id.eq_ignore_ascii_case(&request.order_id))
        {
            let same = order.offer.product_id == offer.product_id && order.sku_id == request.sku_id;
            return same.then(|| (order.order.clone(), false));
        }
        let created = now();
        let line_item_id = guid_for(&[
            "grant line",
            &user.user_id,
            &request.order_id.to_ascii_lowercase(),
        ]);
        let order = order_json(user, offer, request, &line_item_id, created);
        kept.push(GrantedOrder {
            order_id: request.order_id.clone(),
            line_item_id,
            offer,
            sku_id: request.sku_id.clone(),
            created,
            sandbox: request.sbx.clone().unwrap_or_else(|| RETAIL.to_owned()),
            order: order.clone(),
        });
        Some((order, true))
    }
}

/// The order of a grant (store-services-apis.md 2.6), every amount 0.
fn order_json(
    user: &StoreUser,
    offer: &Offer,
    request: &GrantRequest,
    line_item_id: &str,
    created: i64,
) -> Value {
    let when = store_timestamp(created);
    let pub_user = json!({"identityType": "pub", "identityValue": user.user_id});
    let line = json!({
        "agent": pub_user,
        "availabilityId": request.availability_id,
        "beneficiary": pub_user,
        "billingState": "Charged",
        "campaignId": null,
        "currencyCode": OFFER_CURRENCY,
        "description": offer.title,
        "devofferId": request.dev_offer_id,
        "fulfillmentDate": when,
        "fulfillmentState": "Fulfilled",
        "isPIRequired": false,
        "isTaxIncluded": false,
        "legacyBillingOrderId": null,
        "lineItemId": line_item_id,
        "listPrice": offer.list_price,
        "payments": [],
        "productId": offer.product_id,
        "productType": offer.kind.as_str(),
        "quantity": 1,
        "retailPrice": offer.list_price,
        "revenueRecognitionState": "None",
        "skuId": request.sku_id,
        "taxAmount": 0.0,
        "taxType": "TaxesNotIncluded",
        "title": offer.title,
        "totalAmount": offer.list_price,
    });
    json!({
        "clientContext": {"client": user.client_id},
        "createdTime": when,
        "currencyCode": OFFER_CURRENCY,
        "friendlyName": null,
        "isPIRequired": false,
        "language": request.language,
        "market": request.market,
        "orderId": request.order_id,
        "orderLineItems": [line],
        "orderState": "Purchased",
        "orderValidityEndTime": when,
        "orderValidityStartTime": when,
        "purchaser": pub_user,
        "testScenarios": "None",
        "totalAmount": offer.list_price,
        "totalAmountBeforeTax": offer.list_price,
        "totalChargedToCsvTopOffPI": 0.0,
        "totalTaxAmount": 0.0,
    })
}

/// The free offer `request` names, or the 400 that says why it cannot be granted.
fn free_offer(request: &GrantRequest) -> Result<&'static Offer, BadField> {
    // A slow magic id waits (already done), then grants as usual: the free durable.
    let product = if request.product_id.starts_with(MAGIC_SLOW_PREFIX) {
        catalog::SANDBOX_FREE_DURABLE
    } else {
        &request.product_id
    };
    let not_free = || {
        BadField::new(
            "productId",
            "Only free products can be granted; this product is not free.",
        )
    };
    let offer = match catalog::offer(product) {
        Some(offer) => offer,
        None if catalog::product(product).is_some() => return Err(not_free()),
        None => {
            return Err(BadField::new(
                "productId",
                "Requested catalog product data wasn't found.",
            ))
        }
    };
    if offer.list_price > 0.0 {
        return Err(not_free());
    }
    if request.sku_id != SANDBOX_SKU {
        return Err(BadField::new("skuId", "The product has no such SKU."));
    }
    Ok(offer)
}

/// `POST /purchase/v7.0/purchases/grant`.
async fn grant(
    State(state): State<EmulatorState>,
    ConnectInfo(connection): ConnectInfo<ConnectionControl>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let parsed = GrantRequest::parse_body(&body);
    let (request, user) = match admit(&state, &connection, &headers, parsed).await {
        Ok(admitted) => admitted,
        Err(refusal) => return refusal,
    };
    let offer = match free_offer(&request) {
        Ok(offer) => offer,
        Err(bad) => return bad.answer(&headers),
    };
    match state.grants.grant(&user, offer, &request) {
        Some((order, fresh)) => {
            if fresh && offer.product_id == catalog::SANDBOX_REVOKED_ON_GRANT {
                refunds::revoke_on_grant(&state, &user, &request.order_id);
            }
            store_answer::json_answer(StatusCode::OK, &headers, &order)
        }
        None => store_answer::refused(
            &headers,
            StatusCode::CONFLICT,
            ORDER_ID_CONFLICT,
            "orderId",
            "This orderId was used for a grant of another productId or skuId; use a new orderId.",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORDER: &str = "6a0d1a3c-6a30-4c2e-9a0b-0c5f1f5bbd9e";

    fn body(product_id: &str, extra: Value) -> Vec<u8> {
        let mut body = json!({
            "availabilityId": "9RSANDBOXAVL", "b2bKey": "k", "language": "en-us",
            "market": "us", "orderId": ORDER, "productId": product_id, "skuId": SANDBOX_SKU,
        });
        for (name, value) in extra.as_object().into_iter().flatten() {
            body[name] = value.clone();
        }
        body.to_string().into_bytes()
    }

    #[test]
    fn bodies_name_the_bad_field() {
        let free = catalog::SANDBOX_FREE_DURABLE;
        for (extra, field) in [
            (json!({"quantity": 2}), "quantity"),
            (json!({"orderId": "order-1"}), "orderId"),
            (json!({"orderId": null}), "orderId"),
            (json!({"market": ""}), "market"),
            (json!({"b2bKey": 5}), "b2bKey"),
        ] {
            let bad = GrantRequest::parse_body(&body(free, extra.clone())).unwrap_err();
            assert_eq!(bad.field, field, "{extra}");
        }
        assert!(GrantRequest::parse_body(&body(free, json!({"quantity": 1}))).is_ok());
    }

    #[test]
    fn only_free_catalog_products_are_granted() {
        let offer_of = |product: &str, extra: Value| {
            free_offer(&GrantRequest::parse_body(&body(product, extra)).unwrap())
        };
        assert!(offer_of(catalog::SANDBOX_FREE_CONSUMABLE, json!({})).is_ok());
        assert!(offer_of(catalog::SANDBOX_REVOKED_ON_GRANT, json!({})).is_ok());
        assert!(offer_of("MAGIC-SLOW-10", json!({})).is_ok());
        for product in [
            catalog::SANDBOX_PRICED_DURABLE,
            catalog::SANDBOX_GAME,
            "9NOTINCATALOG",
        ] {
            assert_eq!(offer_of(product, json!({})).unwrap_err().field, "productId");
        }
        let other_sku = offer_of(catalog::SANDBOX_FREE_DURABLE, json!({"skuId": "0099"}));
        assert_eq!(other_sku.unwrap_err().field, "skuId");
    }

    #[test]
    fn an_order_id_grants_once_and_conflicts_with_another_product() {
        let book = GrantBook::default();
        let user = StoreUser {
            user_id: "u".into(),
            client_id: "c".into(),
        };
        let request = |product: &str| GrantRequest::parse_body(&body(product, json!({}))).unwrap();
        let durable = catalog::offer(catalog::SANDBOX_FREE_DURABLE).unwrap();
        let consumable = catalog::offer(catalog::SANDBOX_FREE_CONSUMABLE).unwrap();
        let first = book.grant(&user, durable, &request(durable.product_id));
        assert_eq!(first.as_ref().map(|(_, fresh)| *fresh), Some(true));
        let first = first.map(|(order, _)| (order, false));
        assert_eq!(
            book.grant(&user, durable, &request(durable.product_id)),
            first
        );
        assert_eq!(book.orders_of("u").len(), 1);
        assert_eq!(
            book.grant(&user, consumable, &request(consumable.product_id)),
            None
        );
        assert!(book.orders_of("v").is_empty());
    }
}
