//! Orders query ("Clawback v1"), `POST /purchase/v8.0/b2b/orders/query`
//! (store-services-apis.md 2.9), with the checks of [`super::b2b::admit`]: a `b2bKey`
//! UserPurchaseId whose `payload` claim may be a magic id (`MAGIC-400` names `b2bKey`), the
//! rate limit.
//!
//! Body: `b2bKey` (required), `lineItemStateFilter` (an array of `Purchased`, `Revoked`,
//! `Refunded`; absent, `null` or empty means **all three**: Microsoft's library defaults to
//! `["Revoked", "Refunded"]`, but the documented filter is optional and a sandbox should show
//! everything it has), `continuationToken`, `sbx`. Another state is 400 naming
//! `lineItemStateFilter`.
//!
//! Every user has [`SEED_ORDERS`] orders of the two consumables, purchased 2 to 88 days before
//! the current UTC day (so within the documented 90-day window, and the same all day), one in
//! three in each state: `Purchased`, `Revoked` (store-managed consumable,
//! `wasConsumableQuantityRevoked` true, `orderRefundedDate`) and `Refunded` (`orderRefundedDate`,
//! nothing revoked); plus every order granted to the user ([`super::grant`], `Purchased`).
//! A refund ([`super::refunds`]: `POST /emulator/refunds`, or a grant of `9NSANDBOXRVK`)
//! changes its order's line item as its event says: `Revoked` makes it `Revoked`, `Returned`
//! and `Refunded` make it `Refunded`, each setting `orderRefundedDate` to the refund's time;
//! `ChargebackReversal` makes it `Purchased` again and leaves `orderRefundedDate` as it was.
//! Orders are listed oldest first, so new grants only add to the end; a page holds
//! [`ORDERS_PAGE_SIZE`] orders (the API has no page size), `continuationToken` coming back only
//! when more follow, bound to the user, the application and the filter (else 400 naming
//! `continuationToken`).
//!
//! Answer: `{"items": [{"orderId", "shortOrderId", "orderLineItems": [{"lineItemId",
//! "lineItemState", "productId", "quantity", "skuId", "wasConsumableQuantityRevoked"}],
//! "orderPurchasedDate", "orderRefundedDate"?}], "continuationToken"?}`.

use std::collections::HashMap;
use std::sync::Mutex;

use axum::extract::{ConnectInfo, State};
use axum::http::HeaderMap;
use axum::response::Response;
use bytes::Bytes;
use serde_json::{json, Value};

use super::b2b::{admit, page, page_answer, BadField, JsonBody, PurchaseQuery, StoreUser};
use super::catalog::{SANDBOX_CONSUMABLE, SANDBOX_SKU, SANDBOX_UNMANAGED_CONSUMABLE};
use super::clock::{fnv1a, guid_for, now, store_timestamp};
use super::connection::ConnectionControl;
use super::grant::GrantedOrder;
use super::{host_prefix, EmulatorState};
use crate::upstream::Host;

/// How many orders one page of the orders query holds.
pub const ORDERS_PAGE_SIZE: usize = 10;
/// How many orders every user has before any grant.
pub const SEED_ORDERS: usize = 12;

/// `POST /purchase/v8.0/b2b/orders/query`.
pub(super) fn routes() -> axum::Router<EmulatorState> {
    axum::Router::new().route(
        &format!("{}/v8.0/b2b/orders/query", host_prefix(Host::Purchase)),
        axum::routing::post(orders_query),
    )
}

/// `lineItemState`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum LineItemState {
    Purchased,
    Revoked,
    Refunded,
}

const EVERY_STATE: [LineItemState; 3] = [
    LineItemState::Purchased,
    LineItemState::Revoked,
    LineItemState::Refunded,
];

impl LineItemState {
    fn parse(text: &str) -> Option<Self> {
        EVERY_STATE
            .into_iter()
            .find(|state| format!("{state:?}").eq_ignore_ascii_case(text))
    }
}

/// An orders query: the line item states it asks for (sorted, without duplicates, never
/// empty).
type OrdersQuery = PurchaseQuery<Vec<LineItemState>>;

/// `lineItemStateFilter`; absent, `null` or empty means every state.
fn state_filter(body: &JsonBody) -> Result<Vec<LineItemState>, BadField> {
    let filter: Vec<String> = body.optional("lineItemStateFilter")?.unwrap_or_default();
    let mut states = filter
        .iter()
        .map(|text| LineItemState::parse(text))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| {
            BadField::new(
                "lineItemStateFilter",
                "Use Purchased, Revoked and Refunded.",
            )
        })?;
    if states.is_empty() {
        states = EVERY_STATE.to_vec();
    }
    states.sort_unstable();
    states.dedup();
    Ok(states)
}

/// What a continuation token of `query` is bound to: the user, the application and the
/// filter.
fn fingerprint(query: &OrdersQuery, user: &StoreUser) -> String {
    let states = format!("{:?}", query.asks);
    let parts = ["orders", user.user_id.as_str(), &user.client_id, &states];
    format!("{:016x}", fnv1a(&parts, 5))
}

/// The `sbx` of seed orders, and of grants that named none.
pub(super) const RETAIL: &str = "RETAIL";

/// One order of the listing (every order has one line item).
#[derive(Debug, Clone)]
pub(super) struct Order {
    pub(super) order_id: String,
    pub(super) line_item_id: String,
    state: LineItemState,
    pub(super) product_id: String,
    quantity: i64,
    pub(super) sku_id: String,
    /// Seconds since the Unix epoch, as every time here.
    pub(super) purchased: i64,
    refunded: Option<i64>,
    /// The sandbox the order was made in.
    pub(super) sandbox: String,
}

impl Order {
    /// The `n`th seed order of `user`, relative to the UTC day that starts at `today`.
    fn seed(user: &str, n: usize, today: i64) -> Self {
        let tag = n.to_string();
        let hash = |what: &str| fnv1a(&[what, user, &tag], 0);
        let days_ago = 2 + i64::try_from(hash("order age") % 87).unwrap_or(0);
        let second = i64::try_from(hash("order second") % 86_400).unwrap_or(0);
        let purchased = today - days_ago * 86_400 + second;
        let hours_to_refund = 1 + i64::try_from(hash("order refund") % 20).unwrap_or(0);
        let state = EVERY_STATE[n % 3];
        let managed = state == LineItemState::Revoked || n % 2 == 0;
        let (product_id, quantity) = if managed {
            (
                SANDBOX_CONSUMABLE,
                1 + i64::try_from(hash("order quantity") % 5).unwrap_or(0),
            )
        } else {
            (SANDBOX_UNMANAGED_CONSUMABLE, 1)
        };
        Self {
            order_id: guid_for(&["seed order", user, &tag]),
            line_item_id: guid_for(&["seed order line", user, &tag]),
            state,
            product_id: product_id.to_owned(),
            quantity,
            sku_id: SANDBOX_SKU.to_owned(),
            purchased,
            refunded: (state != LineItemState::Purchased)
                .then_some(purchased + hours_to_refund * 3600),
            sandbox: RETAIL.to_owned(),
        }
    }

    fn granted(order: &GrantedOrder) -> Self {
        Self {
            order_id: order.order_id.clone(),
            line_item_id: order.line_item_id.clone(),
            state: LineItemState::Purchased,
            product_id: order.offer.product_id.to_owned(),
            quantity: 1,
            sku_id: order.sku_id.clone(),
            purchased: order.created,
            refunded: None,
            sandbox: order.sandbox.clone(),
        }
    }

    fn item(&self) -> Value {
        let mut item = json!({
            "orderId": self.order_id,
            "shortOrderId": short_order_id(&self.order_id),
            "orderLineItems": [{
                "lineItemId": self.line_item_id,
                "lineItemState": format!("{:?}", self.state),
                "productId": self.product_id,
                "quantity": self.quantity,
                "skuId": self.sku_id,
                "wasConsumableQuantityRevoked": self.state == LineItemState::Revoked,
            }],
            "orderPurchasedDate": store_timestamp(self.purchased),
        });
        if let Some(refunded) = self.refunded {
            item["orderRefundedDate"] = store_timestamp(refunded).into();
        }
        item
    }
}

/// The user-visible order number: ten letters and digits derived from the order id.
fn short_order_id(order_id: &str) -> String {
    const DIGITS: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut hash = fnv1a(&["short order", &order_id.to_ascii_lowercase()], 0);
    (0..10)
        .map(|_| {
            let digit = DIGITS[usize::try_from(hash % 32).unwrap_or(0)];
            hash /= 32;
            char::from(digit)
        })
        .collect()
}

/// How a refund left an order's line item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct LineChange {
    pub(super) state: LineItemState,
    /// `orderRefundedDate`; `None` leaves it as it was.
    pub(super) refunded: Option<i64>,
}

/// The line items refunds changed, per user and order, in the emulator's memory.
#[derive(Debug, Default)]
pub(super) struct OrderChanges {
    /// Per (userId, orderId in lower case).
    lines: Mutex<HashMap<(String, String), LineChange>>,
}

impl OrderChanges {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), LineChange>> {
        self.lines
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records `change` of `user`'s order `order_id`.
    pub(super) fn set(&self, user: &str, order_id: &str, change: LineChange) {
        let key = (user.to_owned(), order_id.to_ascii_lowercase());
        let mut lines = self.lock();
        let refunded = change
            .refunded
            .or_else(|| lines.get(&key).and_then(|c| c.refunded));
        lines.insert(
            key,
            LineChange {
                state: change.state,
                refunded,
            },
        );
    }

    /// `order` as the refunds of `user` left it.
    fn apply(&self, user: &str, mut order: Order) -> Order {
        let key = (user.to_owned(), order.order_id.to_ascii_lowercase());
        if let Some(change) = self.lock().get(&key) {
            order.state = change.state;
            order.refunded = change.refunded.or(order.refunded);
        }
        order
    }
}

/// Every order of `user` in `states`, oldest first.
fn listing(state: &EmulatorState, user: &str, states: &[LineItemState]) -> Vec<Order> {
    let today = now().div_euclid(86_400) * 86_400;
    let mut orders: Vec<Order> = (0..SEED_ORDERS)
        .map(|n| Order::seed(user, n, today))
        .collect();
    orders.sort_by_key(|order| order.purchased);
    orders.extend(state.grants.orders_of(user).iter().map(Order::granted));
    orders
        .into_iter()
        .map(|order| state.order_changes.apply(user, order))
        .filter(|order| states.contains(&order.state))
        .collect()
}

/// `user`'s order `order_id` (compared without regard to case), as the orders query lists it.
pub(super) fn find_order(state: &EmulatorState, user: &str, order_id: &str) -> Option<Order> {
    listing(state, user, &EVERY_STATE)
        .into_iter()
        .find(|order| order.order_id.eq_ignore_ascii_case(order_id))
}

/// `POST /purchase/v8.0/b2b/orders/query`.
async fn orders_query(
    State(state): State<EmulatorState>,
    ConnectInfo(connection): ConnectInfo<ConnectionControl>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let parsed = OrdersQuery::read(&body, state_filter);
    let (query, user) = match admit(&state, &connection, &headers, parsed).await {
        Ok(admitted) => admitted,
        Err(refusal) => return refusal,
    };
    let listed = listing(&state, &user.user_id, &query.asks);
    let fingerprint = fingerprint(&query, &user);
    let token = query.continuation_token.as_deref();
    match page(&listed, token, &fingerprint, ORDERS_PAGE_SIZE) {
        Ok((orders, next)) => page_answer(&headers, orders.iter().map(Order::item).collect(), next),
        Err(bad) => bad.answer(&headers),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_orders_fall_in_the_90_day_window_in_every_state() {
        let today = now().div_euclid(86_400) * 86_400;
        let orders: Vec<Order> = (0..SEED_ORDERS)
            .map(|n| Order::seed("u", n, today))
            .collect();
        for (n, order) in orders.iter().enumerate() {
            assert!(order.purchased > today - 90 * 86_400 && order.purchased < today);
            assert!(order
                .refunded
                .is_none_or(|r| r > order.purchased && r < today));
            assert_eq!(order.item(), Order::seed("u", n, today).item(), "stable");
            assert_eq!(short_order_id(&order.order_id).len(), 10);
        }
        for state in EVERY_STATE {
            assert_eq!(orders.iter().filter(|o| o.state == state).count(), 4);
        }
        assert_ne!(orders[0].order_id, Order::seed("v", 0, today).order_id);
    }

    #[test]
    fn refunds_change_the_line_and_a_reversal_keeps_the_refunded_date() {
        let changes = OrderChanges::default();
        let today = now().div_euclid(86_400) * 86_400;
        let order = Order::seed("u", 0, today);
        assert_eq!(order.state, LineItemState::Purchased);
        let revoked = LineChange {
            state: LineItemState::Revoked,
            refunded: Some(today),
        };
        changes.set("u", &order.order_id.to_uppercase(), revoked);
        let changed = changes.apply("u", order.clone());
        assert_eq!(
            (changed.state, changed.refunded),
            (revoked.state, Some(today))
        );
        assert_eq!(
            changed.item()["orderLineItems"][0]["wasConsumableQuantityRevoked"],
            true
        );
        let reversal = LineChange {
            state: LineItemState::Purchased,
            refunded: None,
        };
        changes.set("u", &order.order_id, reversal);
        let reversed = changes.apply("u", order.clone());
        assert_eq!(
            (reversed.state, reversed.refunded),
            (LineItemState::Purchased, Some(today))
        );
        assert_eq!(
            changes.apply("v", order.clone()).state,
            LineItemState::Purchased
        );
    }
}
