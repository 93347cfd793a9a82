//! `StorePurchases/QueryOrders` -> `POST {purchase}/v8.0/b2b/orders/query` ("clawback v1",
//! `store-services-apis.md` 2.9): a user's consumable orders of the last 90 days by line-item
//! state, to reconcile refunded value.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::paging::{self, Fingerprint, Paged, Walked};
use super::store_json::{lenient, timestamp};
use super::store_user::{user_fields, StoreUser, SBX_FIELD, USER_KEY_FIELD};
use crate::api::validation::{Checks, Tenants};
use crate::api::{Attempts, Backends, Credential, Outcome, StoreOperation, Token};
use crate::error::{ApiError, ErrorMapping, Retries};
use crate::proto::msstore::v1 as pb;
use crate::telemetry::otel::Route;
use crate::upstream::{Host, UpstreamRequest};

/// The filter sent when the caller names none: what Microsoft's library sends.
const DEFAULT_STATES: [&str; 2] = ["Revoked", "Refunded"];

/// Lists a user's orders by line-item state.
#[derive(Debug)]
pub struct QueryOrders;

/// A validated orders query (no `Debug`: it holds the user's key).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct OrdersQuery {
    user: StoreUser,
    states: Vec<&'static str>,
    continuation: Option<String>,
    all_pages: bool,
    fingerprint: u64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct QueryBody<'a> {
    b2b_key: &'a str,
    line_item_state_filter: &'a [&'static str],
    #[serde(skip_serializing_if = "Option::is_none")]
    continuation_token: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sbx: Option<&'a str>,
}

/// One page of orders; `items` is required.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrdersPage {
    items: Vec<OrderItem>,
    #[serde(default)]
    continuation_token: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct OrderItem {
    #[serde(deserialize_with = "lenient")]
    order_id: Option<String>,
    #[serde(deserialize_with = "lenient")]
    short_order_id: Option<String>,
    #[serde(deserialize_with = "lenient")]
    order_line_items: Option<Vec<OrderLine>>,
    #[serde(deserialize_with = "lenient")]
    order_purchased_date: Option<String>,
    #[serde(deserialize_with = "lenient")]
    order_refunded_date: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct OrderLine {
    #[serde(deserialize_with = "lenient")]
    line_item_id: Option<String>,
    #[serde(deserialize_with = "lenient")]
    line_item_state: Option<String>,
    #[serde(deserialize_with = "lenient")]
    product_id: Option<String>,
    #[serde(deserialize_with = "lenient")]
    sku_id: Option<String>,
    #[serde(deserialize_with = "lenient")]
    quantity: Option<i64>,
    #[serde(deserialize_with = "lenient")]
    was_consumable_quantity_revoked: Option<bool>,
}

impl StoreOperation for QueryOrders {
    type Request = pb::QueryOrdersRequest;
    type Response = pb::QueryOrdersResponse;
    type Prepared = OrdersQuery;
    type Answer = OrdersPage;

    const ROUTE: &'static Route = &Route {
        name: "POST /v8.0/b2b/orders/query",
        method: http::Method::POST,
        template: "/v8.0/b2b/orders/query",
    };
    const ERRORS: &'static ErrorMapping = &ErrorMapping {
        fields: &[
            ("b2bKey", USER_KEY_FIELD),
            ("lineItemStateFilter", "line_item_states"),
            ("continuationToken", "page_token"),
            SBX_FIELD,
        ],
        overrides: &[],
        retries: Retries::TransientAndLostAnswers,
    };
    const EXPECTED: &'static str = "a JSON object with an items array";

    fn validate(request: Self::Request, tenants: &Tenants) -> Result<OrdersQuery, ApiError> {
        let mut checks = Checks::default();
        let fields = user_fields!(request);
        let tenant = StoreUser::check(&mut checks, &fields);
        let mut states = Vec::new();
        for state in &request.line_item_states {
            let name = match pb::LineItemState::try_from(*state) {
                Ok(pb::LineItemState::Purchased) => "Purchased",
                Ok(pb::LineItemState::Revoked) => "Revoked",
                Ok(pb::LineItemState::Refunded) => "Refunded",
                _ => {
                    checks.violation(
                        "line_item_states",
                        format!("{state} is not PURCHASED, REVOKED or REFUNDED"),
                    );
                    continue;
                }
            };
            if !states.contains(&name) {
                states.push(name);
            }
        }
        if request.line_item_states.is_empty() {
            states.extend(DEFAULT_STATES);
        }
        states.sort_unstable();
        let fingerprint = states
            .iter()
            .fold(Fingerprint::default(), |hash, state| hash.field(state))
            .field(&request.sandbox_id)
            .finish();
        let continuation = paging::check_page_token(&mut checks, &request.page_token, fingerprint);
        checks.finish()?;
        Ok(OrdersQuery {
            user: StoreUser::finish(fields, tenant, Host::Purchase, tenants)?,
            states,
            continuation,
            all_pages: request.all_pages,
            fingerprint,
        })
    }

    fn host(_: &OrdersQuery) -> Host {
        Host::Purchase
    }

    fn credential(query: &OrdersQuery) -> Credential<'_> {
        query.user.credential()
    }

    fn request(query: &OrdersQuery, token: &Token<'_>) -> Result<UpstreamRequest, ApiError> {
        let body = QueryBody {
            b2b_key: query.user.key(),
            line_item_state_filter: &query.states,
            continuation_token: query.continuation.as_deref(),
            sbx: query.user.sbx(),
        };
        StoreUser::post(Self::ROUTE, token, &body)
    }

    /// The user's key.
    fn secrets(query: &OrdersQuery) -> impl Iterator<Item = &str> {
        std::iter::once(query.user.key())
    }

    fn parse(body: &[u8]) -> Option<OrdersPage> {
        serde_json::from_slice(body).ok()
    }

    fn respond(mut page: OrdersPage, query: &OrdersQuery) -> pb::QueryOrdersResponse {
        let walked = paging::page_walked::<Self>(query, Self::next_token(&mut page));
        response(typed(page.items), &walked)
    }

    async fn fetch(
        backends: Backends,
        query: OrdersQuery,
        attempts: Arc<Attempts>,
    ) -> Outcome<Self::Response> {
        let all_pages = query.all_pages;
        let mut items = Vec::new();
        let walked = paging::list::<Self>(&backends, query, &attempts, all_pages, |page| {
            items.extend(typed(page.items));
        })
        .await?;
        Ok(walked.map(|walked| response(items, &walked)))
    }
}

impl Paged for QueryOrders {
    fn continuation(query: &OrdersQuery) -> Option<&str> {
        query.continuation.as_deref()
    }

    fn continue_from(query: &mut OrdersQuery, token: Option<String>) {
        query.continuation = token;
    }

    fn next_token(page: &mut OrdersPage) -> Option<String> {
        page.continuation_token.take()
    }

    fn fingerprint(query: &OrdersQuery) -> u64 {
        query.fingerprint
    }
}

fn typed(items: Vec<OrderItem>) -> Vec<pb::OrderSummary> {
    items.into_iter().map(order).collect()
}

fn order(item: OrderItem) -> pb::OrderSummary {
    pb::OrderSummary {
        order_id: item.order_id.unwrap_or_default(),
        short_order_id: item.short_order_id.unwrap_or_default(),
        order_line_items: item
            .order_line_items
            .unwrap_or_default()
            .into_iter()
            .map(|line| {
                let mut typed = pb::OrderLineState {
                    line_item_id: line.line_item_id.unwrap_or_default(),
                    product_id: line.product_id.unwrap_or_default(),
                    sku_id: line.sku_id.unwrap_or_default(),
                    quantity: line.quantity.unwrap_or_default(),
                    was_consumable_quantity_revoked: line
                        .was_consumable_quantity_revoked
                        .unwrap_or_default(),
                    ..Default::default()
                };
                if let Some(state) = line.line_item_state {
                    typed.set_line_item_state(match state.to_ascii_lowercase().as_str() {
                        "purchased" => pb::LineItemState::Purchased,
                        "revoked" => pb::LineItemState::Revoked,
                        "refunded" => pb::LineItemState::Refunded,
                        _ => pb::LineItemState::Other,
                    });
                    typed.line_item_state_text = state;
                }
                typed
            })
            .collect(),
        order_purchased_date: item.order_purchased_date.as_deref().and_then(timestamp),
        order_refunded_date: item.order_refunded_date.as_deref().and_then(timestamp),
    }
}

fn response(items: Vec<pb::OrderSummary>, walked: &Walked) -> pb::QueryOrdersResponse {
    pb::QueryOrdersResponse {
        items,
        complete: walked.complete(),
        next_page_token: walked.next_page_token.clone(),
        pages: walked.pages,
    }
}
