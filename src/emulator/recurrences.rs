//! Subscriptions: the recurrence query, `POST /purchase/v8.0/b2b/recurrences/query`, and the
//! recurrence change, `POST /purchase/v8.0/b2b/recurrences/{recurrenceId}/change`
//! (store-services-apis.md 2.7, 2.8), over the [`subscriptions`](super::catalog::SUBSCRIPTIONS)
//! every sandbox user has, with the checks of [`super::b2b::admit`] (a `b2bKey`
//! UserPurchaseId, the rate limit).
//!
//! Every user has seven recurrences, listed in this order, each with the id
//! `mdr:0:<32 hex digits>:<productId>` (stable per user and product; the pass's is the
//! `recurrenceData` of the collections query): `9NSANDBOXPAS` `Active` (auto-renew on, ends
//! five years after its purchase), `9NSANDBOXSDN` `InDunning` (expired 1 to 5 days ago,
//! `expirationTimeWithGrace` 14 days after `expirationTime`), `9NSANDBOXSCN` `Canceled` (with
//! `cancellationDate`), `9NSANDBOXSIN` `Inactive`, `9NSANDBOXSFL` `Failed`, `9NSANDBOXSNO`
//! `None`, and `9NSANDBOXSTR` `Active` in trial (`isTrial`, a 30-day trial started 0 to 6 days
//! ago). The dunning and trial dates follow the current UTC day; the others are fixed.
//!
//! Query body: `b2bKey` (required; its `payload` claim may be a magic id, `MAGIC-400` naming
//! `b2bKey`), `pageSize` (a number or a numeric string, 1 to 100, default 25),
//! `continuationToken`, `sbx`. Answer `{"items": [recurrence...], "continuationToken"?}`; the
//! token is bound to the user and the application. A recurrence has exactly `autoRenew,
//! beneficiary ("pub:<userId>"), expirationTime, expirationTimeWithGrace, id, isTrial,
//! lastModified, market, productId, recurrenceState, skuId, startTime`, and `cancellationDate`
//! when canceled.
//!
//! Change: the path's `recurrenceId` (raw or percent-encoded; a magic id there fails the
//! request, `MAGIC-400` naming `recurrenceId`, and `MAGIC-SLOW-*` changes the `Active` one);
//! body `b2bKey`, `changeType` (`Cancel`, `Extend`, `Refund` or `ToggleAutoRenew`),
//! `extensionTimeInDays` (a number or a numeric string, -3650 to 3650 but not 0; required for
//! `Extend`, ignored otherwise), `sbx`. Changes live in the emulator's memory, per user:
//! - `Cancel`: `Canceled`, `cancellationDate` now, auto-renew off;
//! - `Extend`: both expiration times move by the days;
//! - `Refund`: `Canceled`, `cancellationDate` and both expiration times now, auto-renew off;
//!   a `Returned` refund event (source `/Purchase/Refund`) with `recurrenceData` goes into
//!   the refund queue of the token's application ([`super::refunds`]);
//! - `ToggleAutoRenew`: auto-renew off (it never turns it on).
//!
//! A change other than `ToggleAutoRenew` of a terminal recurrence (`Inactive`, `Canceled`,
//! `Failed`) is **409 Conflict, inner code `RecurrenceTerminal`** naming `recurrenceId`; an id
//! that is not one of the user's is **404, inner code `RecurrenceNotFound`**. The answer is the
//! changed recurrence as a bare object, except for the trial one (`9NSANDBOXSTR`), which
//! answers `{"items": [recurrence]}`: Microsoft documents both shapes.

use std::collections::HashMap;
use std::sync::Mutex;

use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use serde_json::{json, Value};

use super::b2b::{
    admit, page, page_answer, BadField, JsonBody, PurchaseKey, PurchaseQuery, StoreRequest,
    StoreUser,
};
use super::catalog::{
    acquired_at, recurrence_id, RecurrenceState, Subscription, SANDBOX_PASS, SANDBOX_SKU,
    SANDBOX_SUB_TRIAL, SUBSCRIPTIONS, SUBSCRIPTION_DAYS,
};
use super::clock::{fnv1a, now, store_timestamp};
use super::connection::ConnectionControl;
use super::magic::MAGIC_SLOW_PREFIX;
use super::{host_prefix, refunds, store_answer, EmulatorState};
use crate::upstream::Host;

/// `pageSize` of a recurrence query that has none (UWP documents 25).
pub const DEFAULT_RECURRENCE_PAGE_SIZE: usize = 25;
/// The largest `pageSize`.
const MAX_RECURRENCE_PAGE_SIZE: i64 = 100;
/// The most days one `Extend` may move a recurrence, either way.
const MAX_EXTENSION_DAYS: i64 = 3650;
/// The market of every recurrence.
const MARKET: &str = "US";
/// How long past `expirationTime` a subscription in dunning stays entitled.
const GRACE_DAYS: i64 = 14;
/// How long the trial runs.
const TRIAL_DAYS: i64 = 30;
const DAY: i64 = 86_400;

/// Inner code of a change of a terminal recurrence.
const RECURRENCE_TERMINAL: &str = "RecurrenceTerminal";
/// Inner code of a recurrence id the user does not have.
const RECURRENCE_NOT_FOUND: &str = "RecurrenceNotFound";

/// `POST /purchase/v8.0/b2b/recurrences/query` and
/// `POST /purchase/v8.0/b2b/recurrences/{recurrenceId}/change`.
pub(super) fn routes() -> axum::Router<EmulatorState> {
    let prefix = host_prefix(Host::Purchase);
    axum::Router::new()
        .route(
            &format!("{prefix}/v8.0/b2b/recurrences/query"),
            axum::routing::post(recurrences_query),
        )
        .route(
            &format!("{prefix}/v8.0/b2b/recurrences/{{recurrence_id}}/change"),
            axum::routing::post(recurrence_change),
        )
}

/// One recurrence of one user, as the query shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Recurrence {
    product_id: &'static str,
    state: RecurrenceState,
    auto_renew: bool,
    is_trial: bool,
    start: i64,
    expiration: i64,
    expiration_with_grace: i64,
    last_modified: i64,
    cancellation: Option<i64>,
}

impl Recurrence {
    /// `subscription` of `user` as it starts, relative to the UTC day that starts at `today`.
    fn seed(user: &str, subscription: &Subscription, today: i64) -> Self {
        let product = subscription.product_id;
        let hash = |what: &str, modulo: u64| {
            i64::try_from(fnv1a(&[what, user, product], 0) % modulo).unwrap_or(0)
        };
        let purchased = acquired_at(user, product, "Direct");
        let (start, expiration) = match (subscription.state, subscription.is_trial) {
            (RecurrenceState::Active, true) => {
                let start = today - hash("trial start", 7) * DAY + hash("second", DAY as u64);
                (start, start + TRIAL_DAYS * DAY)
            }
            (RecurrenceState::Active, false) => (purchased, purchased + SUBSCRIPTION_DAYS * DAY),
            (RecurrenceState::InDunning, _) => {
                let expiration = today - (1 + hash("dunning", 5)) * DAY;
                (expiration - 30 * DAY, expiration)
            }
            (RecurrenceState::None, _) => (purchased, purchased),
            _ => (purchased, purchased + 30 * DAY),
        };
        let dunning = subscription.state == RecurrenceState::InDunning;
        let cancellation = (subscription.state == RecurrenceState::Canceled)
            .then(|| start + (1 + hash("canceled", 20)) * DAY);
        let last_modified = match subscription.state {
            RecurrenceState::Canceled => cancellation.unwrap_or(start),
            RecurrenceState::InDunning => expiration + 3600,
            RecurrenceState::Inactive | RecurrenceState::Failed => expiration,
            _ => start,
        };
        Self {
            product_id: product,
            state: subscription.state,
            auto_renew: matches!(
                subscription.state,
                RecurrenceState::Active | RecurrenceState::InDunning
            ),
            is_trial: subscription.is_trial,
            start,
            expiration,
            expiration_with_grace: expiration + if dunning { GRACE_DAYS * DAY } else { 0 },
            last_modified,
            cancellation,
        }
    }

    fn item(&self, user: &str) -> Value {
        let mut item = json!({
            "autoRenew": self.auto_renew,
            "beneficiary": format!("pub:{user}"),
            "expirationTime": store_timestamp(self.expiration),
            "expirationTimeWithGrace": store_timestamp(self.expiration_with_grace),
            "id": recurrence_id(user, self.product_id),
            "isTrial": self.is_trial,
            "lastModified": store_timestamp(self.last_modified),
            "market": MARKET,
            "productId": self.product_id,
            "recurrenceState": self.state.as_str(),
            "skuId": SANDBOX_SKU,
            "startTime": store_timestamp(self.start),
        });
        if let Some(canceled) = self.cancellation {
            item["cancellationDate"] = store_timestamp(canceled).into();
        }
        item
    }

    /// This recurrence after `change` at `at`, or why it cannot change.
    fn changed(&self, change: Change, at: i64) -> Result<Self, ChangeRefusal> {
        if self.state.is_terminal() && change != Change::ToggleAutoRenew {
            return Err(ChangeRefusal::Terminal(self.state));
        }
        let mut next = self.clone();
        next.last_modified = at;
        match change {
            Change::Cancel => {
                next.state = RecurrenceState::Canceled;
                next.cancellation = Some(at);
                next.auto_renew = false;
            }
            Change::Extend(days) => {
                next.expiration += days * DAY;
                next.expiration_with_grace += days * DAY;
            }
            Change::Refund => {
                next.state = RecurrenceState::Canceled;
                next.cancellation = Some(at);
                next.auto_renew = false;
                next.expiration = at;
                next.expiration_with_grace = at;
            }
            Change::ToggleAutoRenew => next.auto_renew = false,
        }
        Ok(next)
    }
}

/// A `changeType`, with the days of `Extend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    Cancel,
    Extend(i64),
    Refund,
    ToggleAutoRenew,
}

/// Why a recurrence cannot change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChangeRefusal {
    NotFound,
    Terminal(RecurrenceState),
}

/// A refunded recurrence, for its refund event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Refund {
    pub(super) user_id: String,
    pub(super) recurrence_id: String,
    pub(super) product_id: &'static str,
    /// When the refunded interval started (the recurrence's `startTime`), in seconds since
    /// the Unix epoch, as every time here.
    pub(super) interval_start: i64,
    /// How long the interval was to run, in whole days (until `expirationTime` before the
    /// refund).
    pub(super) duration_days: i64,
    /// When it was refunded.
    pub(super) refunded_at: i64,
}

impl Refund {
    /// The whole days of the interval used before the refund (0 to `duration_days`).
    pub(super) fn consumed_days(&self) -> i64 {
        ((self.refunded_at - self.interval_start) / DAY).clamp(0, self.duration_days.max(0))
    }
}

/// The recurrences that changed, per user, and the refunds, in the emulator's memory.
#[derive(Debug, Default)]
pub(super) struct RecurrenceBook {
    state: Mutex<BookState>,
}

#[derive(Debug, Default)]
struct BookState {
    /// Per (userId, productId): the recurrence as last changed.
    changed: HashMap<(String, &'static str), Recurrence>,
}

impl RecurrenceBook {
    fn lock(&self) -> std::sync::MutexGuard<'_, BookState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Every recurrence of `user`, in listing order, as last changed.
    fn recurrences(&self, user: &str, today: i64) -> Vec<Recurrence> {
        let book = self.lock();
        SUBSCRIPTIONS
            .iter()
            .map(|subscription| {
                book.changed
                    .get(&(user.to_owned(), subscription.product_id))
                    .cloned()
                    .unwrap_or_else(|| Recurrence::seed(user, subscription, today))
            })
            .collect()
    }

    /// Applies `change` to `user`'s recurrence `id` at `at`: the changed recurrence, and
    /// the refund it was, if it was one.
    fn change(
        &self,
        user: &str,
        id: &str,
        change: Change,
        at: i64,
    ) -> Result<(Recurrence, Option<Refund>), ChangeRefusal> {
        let subscription = SUBSCRIPTIONS
            .iter()
            .find(|s| recurrence_id(user, s.product_id) == id)
            .ok_or(ChangeRefusal::NotFound)?;
        let key = (user.to_owned(), subscription.product_id);
        let mut book = self.lock();
        let current = book
            .changed
            .get(&key)
            .cloned()
            .unwrap_or_else(|| Recurrence::seed(user, subscription, today(at)));
        let next = current.changed(change, at)?;
        let refund = (change == Change::Refund).then(|| Refund {
            user_id: user.to_owned(),
            recurrence_id: id.to_owned(),
            product_id: subscription.product_id,
            interval_start: current.start,
            duration_days: (current.expiration - current.start) / DAY,
            refunded_at: at,
        });
        book.changed.insert(key, next.clone());
        Ok((next, refund))
    }
}

/// The start of the UTC day of `at`.
fn today(at: i64) -> i64 {
    at.div_euclid(DAY) * DAY
}

/// A recurrence query: its page size.
type RecurrenceQuery = PurchaseQuery<usize>;

/// `pageSize`: a number or a numeric string, 1 to 100, default 25.
fn page_size(body: &JsonBody) -> Result<usize, BadField> {
    match body.lenient_integer("pageSize")? {
        None => Ok(DEFAULT_RECURRENCE_PAGE_SIZE),
        Some(size) => usize::try_from(size)
            .ok()
            .filter(|_| (1..=MAX_RECURRENCE_PAGE_SIZE).contains(&size))
            .ok_or_else(|| BadField::new("pageSize", "Use 1 to 100.")),
    }
}

/// A recurrence change: the path's id and the body.
#[derive(Debug)]
struct ChangeRequest {
    key: PurchaseKey,
    recurrence_id: String,
    change: Change,
    sbx: Option<String>,
}

impl ChangeRequest {
    fn parse_body(recurrence_id: String, body: &[u8]) -> Result<Self, BadField> {
        let body = JsonBody::parse(body)?;
        let key = PurchaseKey::read(&body)?;
        let change_type = body.required_text("changeType")?;
        let days = body.lenient_integer("extensionTimeInDays")?;
        let change = match change_type.to_ascii_lowercase().as_str() {
            "cancel" => Change::Cancel,
            "refund" => Change::Refund,
            "toggleautorenew" => Change::ToggleAutoRenew,
            "extend" => Change::Extend(extension_days(days)?),
            _ => {
                return Err(BadField::new(
                    "changeType",
                    "Use Cancel, Extend, Refund or ToggleAutoRenew.",
                ))
            }
        };
        Ok(Self {
            key,
            recurrence_id,
            change,
            sbx: body.optional("sbx")?,
        })
    }
}

/// The days of an `Extend`.
fn extension_days(days: Option<i64>) -> Result<i64, BadField> {
    let days = days.ok_or_else(|| {
        BadField::new(
            "extensionTimeInDays",
            "extensionTimeInDays is required for Extend.",
        )
    })?;
    if days == 0 || days.abs() > MAX_EXTENSION_DAYS {
        return Err(BadField::new(
            "extensionTimeInDays",
            "Use -3650 to 3650 days, not 0.",
        ));
    }
    Ok(days)
}

impl StoreRequest for ChangeRequest {
    const HOST: Host = Host::Purchase;
    const MAGIC_PARAMETER: &'static str = "recurrenceId";

    fn magic_ids(&self) -> Vec<&str> {
        vec![&self.recurrence_id]
    }

    fn key(&self) -> &str {
        &self.key.key
    }
}

/// `POST /purchase/v8.0/b2b/recurrences/query`.
async fn recurrences_query(
    State(state): State<EmulatorState>,
    ConnectInfo(connection): ConnectInfo<ConnectionControl>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let parsed = RecurrenceQuery::read(&body, page_size);
    let (query, user) = match admit(&state, &connection, &headers, parsed).await {
        Ok(admitted) => admitted,
        Err(refusal) => return refusal,
    };
    let listed = state.recurrences.recurrences(&user.user_id, today(now()));
    let fingerprint = fingerprint(&user);
    let token = query.continuation_token.as_deref();
    match page(&listed, token, &fingerprint, query.asks) {
        Ok((recurrences, next)) => {
            let items = recurrences.iter().map(|r| r.item(&user.user_id)).collect();
            page_answer(&headers, items, next)
        }
        Err(bad) => bad.answer(&headers),
    }
}

/// What a recurrence query's continuation token is bound to: the user and the application.
fn fingerprint(user: &StoreUser) -> String {
    let parts = ["recurrences", user.user_id.as_str(), &user.client_id];
    format!("{:016x}", fnv1a(&parts, 5))
}

/// `POST /purchase/v8.0/b2b/recurrences/{recurrenceId}/change`.
async fn recurrence_change(
    State(state): State<EmulatorState>,
    ConnectInfo(connection): ConnectInfo<ConnectionControl>,
    Path(path_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let parsed = ChangeRequest::parse_body(path_id, &body);
    let (request, user) = match admit(&state, &connection, &headers, parsed).await {
        Ok(admitted) => admitted,
        Err(refusal) => return refusal,
    };
    // A slow magic id waits (already done), then changes the Active recurrence.
    let id = if request.recurrence_id.starts_with(MAGIC_SLOW_PREFIX) {
        recurrence_id(&user.user_id, SANDBOX_PASS)
    } else {
        request.recurrence_id.clone()
    };
    let changed = state
        .recurrences
        .change(&user.user_id, &id, request.change, now());
    match changed {
        Ok((recurrence, refund)) => {
            if let Some(refund) = refund {
                refunds::subscription_refunded(
                    &state,
                    &user.client_id,
                    &refund,
                    request.sbx.as_deref(),
                );
            }
            let item = recurrence.item(&user.user_id);
            let answer = if recurrence.product_id == SANDBOX_SUB_TRIAL {
                json!({ "items": [item] })
            } else {
                item
            };
            store_answer::json_answer(StatusCode::OK, &headers, &answer)
        }
        Err(ChangeRefusal::NotFound) => store_answer::refused(
            &headers,
            StatusCode::NOT_FOUND,
            RECURRENCE_NOT_FOUND,
            "recurrenceId",
            "The user has no recurrence with this id.",
        ),
        Err(ChangeRefusal::Terminal(_)) => store_answer::refused(
            &headers,
            StatusCode::CONFLICT,
            RECURRENCE_TERMINAL,
            "recurrenceId",
            "The recurrence is Inactive, Canceled or Failed; only ToggleAutoRenew applies.",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AT: i64 = 1_790_000_000;

    #[test]
    fn every_user_has_every_state_and_one_trial_consistent_with_now() {
        let book = RecurrenceBook::default();
        let listed = book.recurrences("u", today(AT));
        let states: Vec<&str> = listed.iter().map(|r| r.state.as_str()).collect();
        assert_eq!(
            states,
            [
                "Active",
                "InDunning",
                "Canceled",
                "Inactive",
                "Failed",
                "None",
                "Active"
            ]
        );
        assert_eq!(listed.iter().filter(|r| r.is_trial).count(), 1);
        let dunning = &listed[1];
        assert!(dunning.expiration < AT && dunning.expiration_with_grace > AT);
        assert!(listed[6].expiration > AT && listed[6].start <= AT + DAY);
        assert!(listed[0].expiration > AT, "the pass is active for years");
        assert!(listed[2].cancellation.is_some() && listed[3].cancellation.is_none());
        assert_eq!(listed, book.recurrences("u", today(AT)));
    }

    #[test]
    fn changes_stick_per_user_and_terminal_recurrences_refuse_them() {
        let book = RecurrenceBook::default();
        let id = |product| recurrence_id("u", product);
        let (pass, refund) = book
            .change("u", &id(SANDBOX_PASS), Change::Extend(-3), AT)
            .unwrap();
        assert_eq!(refund, None);
        let before = Recurrence::seed("u", &SUBSCRIPTIONS[0], today(AT));
        assert_eq!(pass.expiration, before.expiration - 3 * DAY);
        let (canceled, _) = book
            .change("u", &id(SANDBOX_PASS), Change::Cancel, AT)
            .unwrap();
        assert_eq!(
            (canceled.state, canceled.auto_renew),
            (RecurrenceState::Canceled, false)
        );
        assert_eq!(
            book.change("u", &id(SANDBOX_PASS), Change::Refund, AT),
            Err(ChangeRefusal::Terminal(RecurrenceState::Canceled))
        );
        assert!(book
            .change("u", &id(SANDBOX_PASS), Change::ToggleAutoRenew, AT)
            .is_ok());
        assert_eq!(
            book.change("v", &id(SANDBOX_PASS), Change::Cancel, AT),
            Err(ChangeRefusal::NotFound)
        );
        assert_eq!(
            book.recurrences("v", today(AT))[0].state,
            RecurrenceState::Active
        );
        let before = book.recurrences("u", today(AT))[6].clone();
        let (trial, refund) = book
            .change("u", &id(SANDBOX_SUB_TRIAL), Change::Refund, AT)
            .unwrap();
        assert_eq!(trial.expiration, AT);
        let refund = refund.expect("a refund");
        assert_eq!(refund.product_id, SANDBOX_SUB_TRIAL);
        assert_eq!(refund.recurrence_id, id(SANDBOX_SUB_TRIAL));
        assert_eq!(refund.interval_start, before.start);
        assert_eq!(refund.duration_days, TRIAL_DAYS);
        assert_eq!(refund.consumed_days(), (AT - before.start) / DAY);
        assert!(refund.consumed_days() <= 6);
    }

    #[test]
    fn change_bodies_name_the_bad_field() {
        let parse =
            |body: Value| ChangeRequest::parse_body("id".into(), body.to_string().as_bytes());
        for (body, field) in [
            (json!({"b2bKey": "k", "changeType": "Pause"}), "changeType"),
            (
                json!({"b2bKey": "k", "changeType": "Extend"}),
                "extensionTimeInDays",
            ),
            (
                json!({"b2bKey": "k", "changeType": "Extend", "extensionTimeInDays": "x"}),
                "extensionTimeInDays",
            ),
            (
                json!({"b2bKey": "k", "changeType": "Extend", "extensionTimeInDays": 0}),
                "extensionTimeInDays",
            ),
            (json!({"changeType": "Cancel"}), "b2bKey"),
        ] {
            assert_eq!(parse(body.clone()).unwrap_err().field, field, "{body}");
        }
        let extend =
            parse(json!({"b2bKey": "k", "changeType": "Extend", "extensionTimeInDays": "-5"}));
        assert_eq!(extend.unwrap().change, Change::Extend(-5));
        let cancel =
            parse(json!({"b2bKey": "k", "changeType": "Cancel", "extensionTimeInDays": 0}));
        assert_eq!(cancel.unwrap().change, Change::Cancel);
    }
}
