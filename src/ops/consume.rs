//! `StoreCollections/ConsumeProduct` -> `POST {collections}/v8.0/collections/consume`
//! (`store-services-apis.md` 2.5): reports a consumable as fulfilled, exactly once per
//! tracking id.
//!
//! The Store makes a consume idempotent: the identical body with the same `trackingId` is
//! answered with the first outcome and deducts nothing more. So, unlike other operations, an
//! attempt whose answer was lost (a connection dropped after the request went out, an attempt
//! timeout) is retried too, with the very same body.

use serde::{Deserialize, Serialize};

use super::store_user::{user_fields, Beneficiary, StoreUser, SBX_FIELD, USER_KEY_FIELD};
use crate::api::validation::{Checks, Tenants};
use crate::api::{Credential, StoreOperation, Token};
use crate::auth::is_guid;
use crate::error::{ApiError, ErrorMapping, Retries};
use crate::proto::msstore::v1 as pb;
use crate::telemetry::otel::Route;
use crate::upstream::{Host, UpstreamRequest};

/// Reports a consumable as fulfilled.
#[derive(Debug)]
pub struct ConsumeProduct;

/// A validated consume (no `Debug`: it holds the user's key).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Consume {
    user: StoreUser,
    product_id: String,
    tracking_id: String,
    /// `None`: a developer-managed consumable, for which `removeQuantity` is omitted.
    remove_quantity: Option<u32>,
    include_order_ids: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ConsumeBody<'a> {
    beneficiary: Beneficiary<'a>,
    product_id: &'a str,
    tracking_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    remove_quantity: Option<u32>,
    include_order_ids: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    sbx: Option<&'a str>,
}

/// The consume answer; `trackingId` is required, the rest defaults.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConsumeAnswer {
    #[serde(default)]
    item_id: Option<String>,
    #[serde(default)]
    new_quantity: Option<i64>,
    tracking_id: String,
    #[serde(default)]
    product_id: Option<String>,
    #[serde(default)]
    order_transactions: Option<Vec<OrderTransaction>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct OrderTransaction {
    #[serde(default)]
    order_id: Option<String>,
    #[serde(default)]
    order_line_item_id: Option<String>,
    #[serde(default)]
    quantity_consumed: Option<i64>,
}

impl StoreOperation for ConsumeProduct {
    type Request = pb::ConsumeProductRequest;
    type Response = pb::ConsumeProductResponse;
    type Prepared = Consume;
    type Answer = ConsumeAnswer;

    const ROUTE: &'static Route = &Route {
        name: "POST /v8.0/collections/consume",
        method: http::Method::POST,
        template: "/v8.0/collections/consume",
    };
    const ERRORS: &'static ErrorMapping = &ErrorMapping {
        fields: &[
            ("productId", "product_id"),
            ("trackingId", "tracking_id"),
            ("removeQuantity", "remove_quantity"),
            ("beneficiary", USER_KEY_FIELD),
            ("includeOrderIds", "include_order_ids"),
            SBX_FIELD,
        ],
        overrides: &[],
        retries: Retries::TransientAndLostAnswers,
    };
    const EXPECTED: &'static str = "a consume answer with a trackingId";

    fn validate(request: Self::Request, tenants: &Tenants) -> Result<Consume, ApiError> {
        let mut checks = Checks::default();
        let fields = user_fields!(request);
        let tenant = StoreUser::check(&mut checks, &fields);
        checks.store_id("product_id", &request.product_id);
        if request.tracking_id.is_empty() {
            checks.violation(
                "tracking_id",
                "is required: a GUID you store before calling and replay after an unknown outcome",
            );
        } else if !is_guid(&request.tracking_id) {
            checks.violation(
                "tracking_id",
                "is not a GUID such as 0d3f7d9c-2a3b-4c5d-8e9f-0123456789ab",
            );
        }
        let remove_quantity = match u32::try_from(request.remove_quantity) {
            Ok(0) => None,
            Ok(quantity) => Some(quantity),
            Err(_) => {
                checks.violation(
                    "remove_quantity",
                    "must not be negative (0 for a developer-managed consumable)",
                );
                None
            }
        };
        checks.finish()?;
        Ok(Consume {
            user: StoreUser::finish(fields, tenant, Host::Collections, tenants)?,
            product_id: request.product_id,
            tracking_id: request.tracking_id,
            remove_quantity,
            include_order_ids: request.include_order_ids,
        })
    }

    fn host(_: &Consume) -> Host {
        Host::Collections
    }

    fn credential(consume: &Consume) -> Credential<'_> {
        consume.user.credential()
    }

    fn request(consume: &Consume, token: &Token<'_>) -> Result<UpstreamRequest, ApiError> {
        let body = ConsumeBody {
            beneficiary: consume.user.beneficiary(),
            product_id: &consume.product_id,
            tracking_id: &consume.tracking_id,
            remove_quantity: consume.remove_quantity,
            include_order_ids: consume.include_order_ids,
            sbx: consume.user.sbx(),
        };
        StoreUser::post(Self::ROUTE, token, &body)
    }

    /// The user's key.
    fn secrets(consume: &Consume) -> impl Iterator<Item = &str> {
        std::iter::once(consume.user.key())
    }

    fn parse(body: &[u8]) -> Option<ConsumeAnswer> {
        serde_json::from_slice::<ConsumeAnswer>(body)
            .ok()
            .filter(|answer| !answer.tracking_id.is_empty())
    }

    fn respond(answer: ConsumeAnswer, consume: &Consume) -> pb::ConsumeProductResponse {
        pb::ConsumeProductResponse {
            item_id: answer.item_id.unwrap_or_default(),
            new_quantity: answer.new_quantity.unwrap_or_default(),
            tracking_id: answer.tracking_id,
            product_id: answer
                .product_id
                .unwrap_or_else(|| consume.product_id.clone()),
            order_transactions: answer
                .order_transactions
                .unwrap_or_default()
                .into_iter()
                .map(|line| pb::OrderTransaction {
                    order_id: line.order_id.unwrap_or_default(),
                    order_line_item_id: line.order_line_item_id.unwrap_or_default(),
                    quantity_consumed: line.quantity_consumed.unwrap_or_default(),
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracking_ids_must_be_guids() {
        assert!(is_guid("0d3f7d9c-2a3b-4c5d-8e9f-0123456789ab"));
        assert!(is_guid("0D3F7D9C-2A3B-4C5D-8E9F-0123456789AB"));
        for bad in [
            "",
            "0d3f7d9c2a3b4c5d8e9f0123456789ab",
            "{0d3f7d9c-2a3b-4c5d-8e9f-0123456789ab}",
            "0d3f7d9c-2a3b-4c5d-8e9f-0123456789ag",
            "0d3f7d9c-2a3b-4c5d-8e9f-0123456789abc",
            "0d3f7d9c-2a3b-4c5d-8e9f",
        ] {
            assert!(!is_guid(bad), "{bad}");
        }
    }

    #[test]
    fn answers_need_a_tracking_id() {
        let answer = ConsumeProduct::parse(
            br#"{"itemId":"i","newQuantity":3,"trackingId":"t","productId":"p",
                "orderTransactions":[{"$type":"consumeOrderTransactionV9","orderId":"o",
                "orderLineItemId":"l","quantityConsumed":2}]}"#,
        )
        .expect("a consume answer");
        assert_eq!(answer.new_quantity, Some(3));
        assert_eq!(answer.order_transactions.as_ref().map(Vec::len), Some(1));
        for bad in [&b"{}"[..], br#"{"trackingId":""}"#, b"<html>", b""] {
            assert!(ConsumeProduct::parse(bad).is_none());
        }
    }
}
