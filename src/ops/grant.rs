//! `StorePurchases/GrantFreeProduct` -> `POST {purchase}/v7.0/purchases/grant`
//! (`store-services-apis.md` 2.6): grants a free product. Idempotent on the order id, so a
//! lost answer is retried with the identical body like a consume.

use serde::{Deserialize, Serialize};

use super::store_json::{lenient, timestamp};
use super::store_user::{user_fields, StoreUser, SBX_FIELD, USER_KEY_FIELD};
use crate::api::validation::{Checks, Tenants};
use crate::api::{Credential, StoreOperation, Token};
use crate::auth::is_guid;
use crate::error::{ApiError, ErrorMapping, Retries};
use crate::proto::msstore::v1 as pb;
use crate::telemetry::otel::Route;
use crate::upstream::{Host, UpstreamRequest};

/// Grants a free product.
#[derive(Debug)]
pub struct GrantFreeProduct;

/// A validated grant (no `Debug`: it holds the user's key).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Grant {
    user: StoreUser,
    product_id: String,
    sku_id: String,
    availability_id: String,
    language: String,
    market: String,
    order_id: String,
    dev_offer_id: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct GrantBody<'a> {
    availability_id: &'a str,
    b2b_key: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    dev_offer_id: Option<&'a str>,
    language: &'a str,
    market: &'a str,
    order_id: &'a str,
    product_id: &'a str,
    sku_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    sbx: Option<&'a str>,
}

/// The order the Store answers; `orderId` is required, the rest defaults.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderAnswer {
    order_id: String,
    #[serde(default, deserialize_with = "lenient")]
    order_state: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    created_time: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    currency_code: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    language: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    market: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    order_line_items: Option<Vec<LineItem>>,
    #[serde(default, deserialize_with = "lenient")]
    total_amount: Option<f64>,
    #[serde(default, deserialize_with = "lenient")]
    total_amount_before_tax: Option<f64>,
    #[serde(default, deserialize_with = "lenient")]
    total_tax_amount: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct LineItem {
    #[serde(deserialize_with = "lenient")]
    line_item_id: Option<String>,
    #[serde(deserialize_with = "lenient")]
    product_id: Option<String>,
    #[serde(deserialize_with = "lenient")]
    sku_id: Option<String>,
    #[serde(deserialize_with = "lenient")]
    availability_id: Option<String>,
    #[serde(deserialize_with = "lenient")]
    product_type: Option<String>,
    #[serde(deserialize_with = "lenient")]
    quantity: Option<i64>,
    #[serde(deserialize_with = "lenient")]
    billing_state: Option<String>,
    #[serde(deserialize_with = "lenient")]
    fulfillment_state: Option<String>,
    #[serde(deserialize_with = "lenient")]
    fulfillment_date: Option<String>,
    #[serde(deserialize_with = "lenient")]
    title: Option<String>,
    #[serde(deserialize_with = "lenient")]
    list_price: Option<f64>,
    #[serde(deserialize_with = "lenient")]
    total_amount: Option<f64>,
    #[serde(deserialize_with = "lenient")]
    currency_code: Option<String>,
    #[serde(deserialize_with = "lenient")]
    beneficiary: Option<Beneficiary>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct Beneficiary {
    #[serde(deserialize_with = "lenient")]
    identity_value: Option<String>,
}

impl StoreOperation for GrantFreeProduct {
    type Request = pb::GrantFreeProductRequest;
    type Response = pb::Order;
    type Prepared = Grant;
    type Answer = OrderAnswer;

    const ROUTE: &'static Route = &Route {
        name: "POST /v7.0/purchases/grant",
        method: http::Method::POST,
        template: "/v7.0/purchases/grant",
    };
    const ERRORS: &'static ErrorMapping = &ErrorMapping {
        fields: &[
            ("productId", "product_id"),
            ("skuId", "sku_id"),
            ("availabilityId", "availability_id"),
            ("orderId", "order_id"),
            ("language", "language"),
            ("market", "market"),
            ("devOfferId", "dev_offer_id"),
            ("b2bKey", USER_KEY_FIELD),
            SBX_FIELD,
        ],
        overrides: &[],
        retries: Retries::TransientAndLostAnswers,
    };
    const EXPECTED: &'static str = "an order with an orderId";

    fn validate(request: Self::Request, tenants: &Tenants) -> Result<Grant, ApiError> {
        let mut checks = Checks::default();
        let fields = user_fields!(request);
        let tenant = StoreUser::check(&mut checks, &fields);
        checks.store_id("product_id", &request.product_id);
        checks.store_id("sku_id", &request.sku_id);
        checks.store_id("availability_id", &request.availability_id);
        if !is_language(&request.language) {
            checks.violation("language", "is required: a language tag such as en-us");
        }
        if !(request.market.len() == 2 && request.market.bytes().all(|b| b.is_ascii_alphabetic())) {
            checks.violation("market", "is required: a two-letter market such as us");
        }
        if !is_guid(&request.order_id) {
            checks.violation(
                "order_id",
                "is required: a GUID you store before calling and replay after an unknown outcome",
            );
        }
        if !request.dev_offer_id.is_empty() {
            checks.store_id("dev_offer_id", &request.dev_offer_id);
        }
        checks.finish()?;
        Ok(Grant {
            user: StoreUser::finish(fields, tenant, Host::Purchase, tenants)?,
            product_id: request.product_id,
            sku_id: request.sku_id,
            availability_id: request.availability_id,
            language: request.language,
            market: request.market,
            order_id: request.order_id,
            dev_offer_id: (!request.dev_offer_id.is_empty()).then_some(request.dev_offer_id),
        })
    }

    fn host(_: &Grant) -> Host {
        Host::Purchase
    }

    fn credential(grant: &Grant) -> Credential<'_> {
        grant.user.credential()
    }

    fn request(grant: &Grant, token: &Token<'_>) -> Result<UpstreamRequest, ApiError> {
        let body = GrantBody {
            availability_id: &grant.availability_id,
            b2b_key: grant.user.key(),
            dev_offer_id: grant.dev_offer_id.as_deref(),
            language: &grant.language,
            market: &grant.market,
            order_id: &grant.order_id,
            product_id: &grant.product_id,
            sku_id: &grant.sku_id,
            sbx: grant.user.sbx(),
        };
        StoreUser::post(Self::ROUTE, token, &body)
    }

    /// The user's key.
    fn secrets(grant: &Grant) -> impl Iterator<Item = &str> {
        std::iter::once(grant.user.key())
    }

    fn parse(body: &[u8]) -> Option<OrderAnswer> {
        serde_json::from_slice::<OrderAnswer>(body)
            .ok()
            .filter(|order| !order.order_id.is_empty())
    }

    fn respond(order: OrderAnswer, _: &Grant) -> pb::Order {
        let mut typed = pb::Order {
            order_id: order.order_id,
            created_time: order.created_time.as_deref().and_then(timestamp),
            currency_code: order.currency_code.unwrap_or_default(),
            language: order.language.unwrap_or_default(),
            market: order.market.unwrap_or_default(),
            order_line_items: order
                .order_line_items
                .unwrap_or_default()
                .into_iter()
                .map(line_item)
                .collect(),
            total_amount: order.total_amount.unwrap_or_default(),
            total_amount_before_tax: order.total_amount_before_tax.unwrap_or_default(),
            total_tax_amount: order.total_tax_amount.unwrap_or_default(),
            ..Default::default()
        };
        if let Some(state) = order.order_state {
            typed.set_order_state(match state.to_ascii_lowercase().as_str() {
                "editing" => pb::OrderState::Editing,
                "checkingout" => pb::OrderState::CheckingOut,
                "pending" => pb::OrderState::Pending,
                "purchased" => pb::OrderState::Purchased,
                "refunded" => pb::OrderState::Refunded,
                "chargedback" => pb::OrderState::ChargedBack,
                "cancelled" | "canceled" => pb::OrderState::Cancelled,
                _ => pb::OrderState::Other,
            });
            typed.order_state_text = state;
        }
        typed
    }
}

fn line_item(line: LineItem) -> pb::OrderLineItem {
    pb::OrderLineItem {
        line_item_id: line.line_item_id.unwrap_or_default(),
        product_id: line.product_id.unwrap_or_default(),
        sku_id: line.sku_id.unwrap_or_default(),
        availability_id: line.availability_id.unwrap_or_default(),
        product_type: line.product_type.unwrap_or_default(),
        quantity: line.quantity.unwrap_or_default(),
        billing_state: line.billing_state.unwrap_or_default(),
        fulfillment_state: line.fulfillment_state.unwrap_or_default(),
        fulfillment_date: line.fulfillment_date.as_deref().and_then(timestamp),
        title: line.title.unwrap_or_default(),
        list_price: line.list_price.unwrap_or_default(),
        total_amount: line.total_amount.unwrap_or_default(),
        currency_code: line.currency_code.unwrap_or_default(),
        beneficiary_id: line
            .beneficiary
            .and_then(|b| b.identity_value)
            .unwrap_or_default(),
    }
}

/// A language tag such as `en-us`: letters, digits and `-`, 2 to 35 characters.
fn is_language(text: &str) -> bool {
    (2..=35).contains(&text.len())
        && text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && text.bytes().next().is_some_and(|b| b.is_ascii_alphabetic())
}
