//! Consume, `POST /collections/v8.0/collections/consume` (store-services-apis.md 2.5), over the
//! consumables of the [`catalog`](super::catalog), with the checks of the collections query
//! ([`super::collections`]; the beneficiary is a single `beneficiary` object here).
//!
//! Body: `beneficiary`, `productId` (required), `trackingId` (required, a GUID), `removeQuantity`,
//! `includeOrderIds`, `sbx`. Answer 200:
//! `{"itemId", "newQuantity", "trackingId", "productId", "orderTransactions"?: [{"$type":
//! "consumeOrderTransactionV9", "orderId", "orderLineItemId", "quantityConsumed"}]}`, the order
//! transactions only with `includeOrderIds: true`.
//!
//! - A store-managed `Consumable` needs `removeQuantity` from 1 to the balance. Balances start
//!   at 10 to 19 per user and product and live in the emulator's memory. More than the balance
//!   is **409 Conflict, inner code `InsufficientQuantity`** (Microsoft documents no code).
//! - A developer-managed `UnmanagedConsumable` must come without `removeQuantity` (any value is
//!   400 `InvalidParameter` naming it, as Microsoft's library warns) and answers `newQuantity` 0.
//!   With `sbx` set to anything but `RETAIL` it is **403 Forbidden, inner code
//!   `XstsAuthenticationRequired`** naming `sbx`: GDK26 says such consumables need XSTS
//!   authentication in a development sandbox.
//! - Any other product is 400 `InvalidParameter` naming `productId` (not a consumable, or not
//!   in the catalog and so not owned).
//! - Idempotency per user and `trackingId`: a replay does not deduct again and answers the kept
//!   result with the current balance; store-managed replays carry the same order ids,
//!   developer-managed ones none. A `trackingId` replayed with another `productId` or
//!   `removeQuantity` is **409 Conflict, inner code `TrackingIdConflict`** naming `trackingId`.
//! - [`MAGIC_RESET_AFTER_COMMIT`]: the first consume of a `trackingId` is committed, then the
//!   connection is reset; its replay answers normally.

use std::collections::HashMap;
use std::sync::Mutex;

use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use serde_json::{json, Value};

use super::b2b::{admit, BadField, JsonBody, StoreRequest, StoreUser};
use super::catalog::{self, ProductKind, MAGIC_RESET_AFTER_COMMIT};
use super::clock::guid_for;
use super::collections::beneficiary_key;
use super::connection::ConnectionControl;
use super::magic::Magic;
use super::{host_prefix, store_answer, EmulatorState};
use crate::auth::is_guid;
use crate::upstream::Host;

/// The `sbx` of the retail (production) sandbox; absent means the same.
const RETAIL: &str = "RETAIL";
/// Inner code of a consume of more than the balance.
const INSUFFICIENT_QUANTITY: &str = "InsufficientQuantity";
/// Inner code of a `trackingId` replayed with another body.
const TRACKING_ID_CONFLICT: &str = "TrackingIdConflict";
/// Inner code of a developer-managed consume in a development sandbox.
const XSTS_AUTHENTICATION_REQUIRED: &str = "XstsAuthenticationRequired";

/// `POST /collections/v8.0/collections/consume`.
pub(super) fn routes() -> axum::Router<EmulatorState> {
    axum::Router::new().route(
        &format!(
            "{}/v8.0/collections/consume",
            host_prefix(Host::Collections)
        ),
        axum::routing::post(consume),
    )
}

/// A consume body.
#[derive(Debug)]
struct ConsumeRequest {
    key: String,
    product_id: String,
    tracking_id: String,
    remove_quantity: Option<i64>,
    include_order_ids: bool,
    sbx: Option<String>,
}

impl ConsumeRequest {
    fn parse_body(body: &[u8]) -> Result<Self, BadField> {
        let body = JsonBody::parse(body)?;
        let product_id: String = body.required("productId")?;
        if product_id.trim().is_empty() {
            return Err(BadField::new("productId", "The parameter is required."));
        }
        let tracking_id: String = body.required("trackingId")?;
        if !is_guid(&tracking_id) {
            return Err(BadField::new(
                "trackingId",
                "The trackingId must be a GUID.",
            ));
        }
        Ok(Self {
            key: beneficiary_key(&body, "beneficiary", true)?,
            product_id,
            tracking_id,
            remove_quantity: body.optional("removeQuantity")?,
            include_order_ids: body.optional("includeOrderIds")?.unwrap_or(false),
            sbx: body.optional("sbx")?,
        })
    }

    /// Whether `removeQuantity` fits a product of `kind`, and `kind` is a consumable.
    fn check_kind(&self, kind: ProductKind) -> Result<(), BadField> {
        match (kind, self.remove_quantity) {
            (ProductKind::Consumable, None) => Err(BadField::new(
                "removeQuantity",
                "A store-managed consumable needs removeQuantity.",
            )),
            (ProductKind::Consumable, Some(quantity)) if quantity < 1 => Err(BadField::new(
                "removeQuantity",
                "removeQuantity must be at least 1.",
            )),
            (ProductKind::UnmanagedConsumable, Some(_)) => Err(BadField::new(
                "removeQuantity",
                "A developer-managed consumable takes no removeQuantity.",
            )),
            (ProductKind::Consumable | ProductKind::UnmanagedConsumable, _) => Ok(()),
            _ => Err(BadField::new(
                "productId",
                "The product is not a consumable.",
            )),
        }
    }
}

/// `8-4-4-4-12` hexadecimal digits.
/// One order line a consume used.
#[derive(Debug, Clone, PartialEq, Eq)]
struct OrderTransaction {
    order_id: String,
    order_line_item_id: String,
    quantity_consumed: i64,
}

/// A committed consume, kept for replays of its `trackingId`.
#[derive(Debug, Clone)]
struct Consumed {
    product_id: &'static str,
    remove_quantity: Option<i64>,
    /// Store-managed consumes keep their order line; developer-managed replays show none.
    managed: bool,
    order: OrderTransaction,
}

/// What a consume answers.
#[derive(Debug, Clone)]
struct Outcome {
    new_quantity: i64,
    order: Option<OrderTransaction>,
    /// The first commit of its `trackingId` (not a replay).
    first: bool,
}

/// Why the ledger refuses a consume.
#[derive(Debug, Clone, PartialEq, Eq)]
enum LedgerRefusal {
    InsufficientQuantity { balance: i64 },
    TrackingIdConflict,
}

/// Consumable balances and committed consumes, per user, in the emulator's memory.
#[derive(Debug, Default)]
pub(super) struct Ledger {
    state: Mutex<LedgerState>,
}

#[derive(Debug, Default)]
struct LedgerState {
    /// Balances that moved from their start, per (userId, productId).
    balances: HashMap<(String, &'static str), i64>,
    /// Committed consumes per (userId, lower-case trackingId).
    consumed: HashMap<(String, String), Consumed>,
}

impl LedgerState {
    fn balance(&self, user: &str, product_id: &'static str) -> i64 {
        self.balances
            .get(&(user.to_owned(), product_id))
            .copied()
            .unwrap_or_else(|| catalog::starting_balance(user, product_id))
    }
}

impl Ledger {
    /// The balance of a store-managed consumable of `user`.
    pub(super) fn balance(&self, user: &str, product_id: &'static str) -> i64 {
        self.lock().balance(user, product_id)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LedgerState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Commits a consume of `product_id`, or answers the kept result of its `tracking_id`.
    fn consume(
        &self,
        user: &str,
        product_id: &'static str,
        managed: bool,
        request: &ConsumeRequest,
    ) -> Result<Outcome, LedgerRefusal> {
        let mut state = self.lock();
        let tracking = (user.to_owned(), request.tracking_id.to_ascii_lowercase());
        if let Some(kept) = state.consumed.get(&tracking) {
            if kept.product_id != product_id || kept.remove_quantity != request.remove_quantity {
                return Err(LedgerRefusal::TrackingIdConflict);
            }
            let kept = kept.clone();
            return Ok(Outcome {
                new_quantity: if managed {
                    state.balance(user, product_id)
                } else {
                    0
                },
                order: kept.managed.then_some(kept.order),
                first: false,
            });
        }
        let quantity = request.remove_quantity.unwrap_or(1);
        let new_quantity = if managed {
            let balance = state.balance(user, product_id);
            if quantity > balance {
                return Err(LedgerRefusal::InsufficientQuantity { balance });
            }
            state
                .balances
                .insert((user.to_owned(), product_id), balance - quantity);
            balance - quantity
        } else {
            0
        };
        let order = OrderTransaction {
            order_id: guid_for(&["order", user, product_id, &tracking.1]),
            order_line_item_id: guid_for(&["order line", user, product_id, &tracking.1]),
            quantity_consumed: quantity,
        };
        state.consumed.insert(
            tracking,
            Consumed {
                product_id,
                remove_quantity: request.remove_quantity,
                managed,
                order: order.clone(),
            },
        );
        Ok(Outcome {
            new_quantity,
            order: Some(order),
            first: true,
        })
    }
}

impl StoreRequest for ConsumeRequest {
    const HOST: Host = Host::Collections;
    const MAGIC_PARAMETER: &'static str = "productId";

    fn magic_ids(&self) -> Vec<&str> {
        vec![&self.product_id]
    }

    fn key(&self) -> &str {
        &self.key
    }
}

/// `POST /collections/v8.0/collections/consume`.
async fn consume(
    State(state): State<EmulatorState>,
    ConnectInfo(connection): ConnectInfo<ConnectionControl>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let parsed = ConsumeRequest::parse_body(&body);
    match admit(&state, &connection, &headers, parsed).await {
        Ok((request, user)) => answer_consume(&state, &connection, &headers, &request, &user)
            .await
            .unwrap_or_else(|refusal| refusal),
        Err(refusal) => refusal,
    }
}

/// Commits (or replays) the consume `request` of `user`.
async fn answer_consume(
    state: &EmulatorState,
    connection: &ConnectionControl,
    headers: &HeaderMap,
    request: &ConsumeRequest,
    user: &StoreUser,
) -> Result<Response, Response> {
    // A slow magic id waits (already done), then answers as usual: as a consume of the
    // sandbox's store-managed consumable, since the magic id itself is no product.
    let product = if request
        .product_id
        .starts_with(super::magic::MAGIC_SLOW_PREFIX)
    {
        catalog::SANDBOX_CONSUMABLE
    } else {
        &request.product_id
    };
    let (product_id, kind) = catalog::product(product).ok_or_else(|| {
        BadField::new(
            "productId",
            "The user owns no consumable with this productId.",
        )
        .answer(headers)
    })?;
    request
        .check_kind(kind)
        .map_err(|bad| bad.answer(headers))?;
    let managed = kind == ProductKind::Consumable;
    if !managed
        && request
            .sbx
            .as_deref()
            .is_some_and(|sbx| !sbx.eq_ignore_ascii_case(RETAIL))
    {
        return Err(store_answer::refused(
            headers,
            StatusCode::FORBIDDEN,
            XSTS_AUTHENTICATION_REQUIRED,
            "sbx",
            "Developer-managed consumables cannot be consumed with a UserStoreId outside the RETAIL sandbox; use XSTS authentication.",
        ));
    }
    let outcome = state
        .ledger
        .consume(&user.user_id, product_id, managed, request)
        .map_err(|refusal| ledger_refusal(headers, &refusal))?;
    let answer = consumed_answer(headers, user, product_id, request, &outcome);
    if outcome.first && product_id == MAGIC_RESET_AFTER_COMMIT {
        return Err(lose_answer(headers, connection).await);
    }
    Ok(answer)
}

/// The 200 answer of `outcome`.
fn consumed_answer(
    headers: &HeaderMap,
    user: &StoreUser,
    product_id: &'static str,
    request: &ConsumeRequest,
    outcome: &Outcome,
) -> Response {
    let mut answer = json!({
        "itemId": catalog::item_id(&user.user_id, product_id),
        "newQuantity": outcome.new_quantity,
        "trackingId": request.tracking_id,
        "productId": product_id,
    });
    if request.include_order_ids {
        let transactions: Vec<Value> = outcome
            .order
            .iter()
            .map(|order| {
                json!({
                    "$type": "consumeOrderTransactionV9",
                    "orderId": order.order_id,
                    "orderLineItemId": order.order_line_item_id,
                    "quantityConsumed": order.quantity_consumed,
                })
            })
            .collect();
        answer["orderTransactions"] = transactions.into();
    }
    store_answer::json_answer(StatusCode::OK, headers, &answer)
}

fn ledger_refusal(headers: &HeaderMap, refusal: &LedgerRefusal) -> Response {
    match refusal {
        LedgerRefusal::InsufficientQuantity { balance } => store_answer::refused(
            headers,
            StatusCode::CONFLICT,
            INSUFFICIENT_QUANTITY,
            "removeQuantity",
            &format!("removeQuantity is more than the balance of {balance}."),
        ),
        LedgerRefusal::TrackingIdConflict => store_answer::refused(
            headers,
            StatusCode::CONFLICT,
            TRACKING_ID_CONFLICT,
            "trackingId",
            "This trackingId was used for a consume with another productId or removeQuantity; use a new trackingId.",
        ),
    }
}

/// The committed consume's answer is lost: the connection is reset as `MAGIC-RESET` does.
async fn lose_answer(headers: &HeaderMap, connection: &ConnectionControl) -> Response {
    match Magic::Reset.apply(headers, "productId", connection).await {
        Some(never_sent) => never_sent,
        None => store_answer::failure(
            headers,
            StatusCode::INTERNAL_SERVER_ERROR,
            "the connection is reset",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(
        product_id: &str,
        tracking_id: &str,
        remove_quantity: Option<i64>,
    ) -> ConsumeRequest {
        ConsumeRequest {
            key: String::new(),
            product_id: product_id.to_owned(),
            tracking_id: tracking_id.to_owned(),
            remove_quantity,
            include_order_ids: true,
            sbx: None,
        }
    }

    const TRACKING: &str = "1b0d1a3c-6a30-4c2e-9a0b-0c5f1f5bbd9e";
    const OTHER_TRACKING: &str = "2b0d1a3c-6a30-4c2e-9a0b-0c5f1f5bbd9e";

    #[test]
    fn a_replay_answers_the_kept_result_without_deducting_again() {
        let ledger = Ledger::default();
        let product = catalog::SANDBOX_CONSUMABLE;
        let start = ledger.balance("u", product);
        let first = ledger
            .consume("u", product, true, &request(product, TRACKING, Some(2)))
            .unwrap();
        assert_eq!(first.new_quantity, start - 2);
        let upper = TRACKING.to_ascii_uppercase();
        let replay = ledger
            .consume("u", product, true, &request(product, &upper, Some(2)))
            .unwrap();
        assert_eq!((replay.new_quantity, replay.first), (start - 2, false));
        assert_eq!(replay.order, first.order);
        assert_eq!(
            ledger
                .consume("u", product, true, &request(product, TRACKING, Some(3)))
                .unwrap_err(),
            LedgerRefusal::TrackingIdConflict
        );
        assert_eq!(
            ledger
                .consume(
                    "u",
                    product,
                    true,
                    &request(product, OTHER_TRACKING, Some(99))
                )
                .unwrap_err(),
            LedgerRefusal::InsufficientQuantity { balance: start - 2 }
        );
        assert_eq!(
            ledger.balance("v", product),
            catalog::starting_balance("v", product)
        );
    }

    #[test]
    fn developer_managed_replays_carry_no_order() {
        let ledger = Ledger::default();
        let product = catalog::SANDBOX_UNMANAGED_CONSUMABLE;
        let first = ledger
            .consume("u", product, false, &request(product, TRACKING, None))
            .unwrap();
        assert_eq!(first.new_quantity, 0);
        assert!(first.order.is_some());
        let replay = ledger
            .consume("u", product, false, &request(product, TRACKING, None))
            .unwrap();
        assert!(replay.order.is_none());
    }
}
