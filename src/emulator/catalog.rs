//! The sandbox catalog: the products every sandbox user owns, as the collections query lists
//! them and consume uses them. Every user owns the whole catalog; what differs between users
//! (item ids, transaction ids, dates, consumable balances) is derived from a hash of the key's
//! `userId` claim and the product, so two users get different answers and one user always the
//! same one.
//!
//! | product id | constant | kind | how the user owns it |
//! |---|---|---|---|
//! | `9NSANDBOXGME` | [`SANDBOX_GAME`] | `Game` | twice: a direct purchase, `Revoked`; and through [`SANDBOX_PASS`] (`Recurring`, `recurrenceId`), `Active` |
//! | `9NSANDBOXDUR` | [`SANDBOX_DURABLE`] | `Durable` | twice, both `Active`: a direct purchase; and through [`SANDBOX_BUNDLE`] |
//! | `9NSANDBOXCNS` | [`SANDBOX_CONSUMABLE`] | `Consumable` (store-managed) | a direct purchase; `quantity` is the balance |
//! | `9NSANDBOXPAS` | [`SANDBOX_PASS`] | `Pass` | a subscription (`Recurring`, `recurrenceData` `"mdr:0:…"`) |
//! | `9NSANDBOXUCN` | [`SANDBOX_UNMANAGED_CONSUMABLE`] | `UnmanagedConsumable` (developer-managed) | a direct purchase, `quantity` 1 |
//! | `9NSANDBOXAPP` | [`SANDBOX_APP_TRIAL`] | `Application` | in trial (`trialData.isInTrialPeriod`) |
//! | `9NSANDBOXBDL` | [`SANDBOX_BUNDLE`] | `Durable` | a direct purchase of an add-on bundle that includes [`SANDBOX_DURABLE`] |
//! | `9NSANDBOXPRM` | [`SANDBOX_PROMO`] | `Durable` | a promotion (`Conditional`) |
//! | `MAGIC-RESET-AFTER-COMMIT` | [`MAGIC_RESET_AFTER_COMMIT`] | `Consumable` (store-managed) | a direct purchase; consume loses its first answer on purpose |
//!
//! Every SKU is [`SANDBOX_SKU`]. A collection lists its 11 items in this order: the game
//! (direct, revoked), the durable (direct), the consumable, the pass, the durable (through the
//! bundle), the developer-managed consumable, the game (through the pass), the application,
//! the bundle, the promotional durable, `MAGIC-RESET-AFTER-COMMIT`. Each duplicate comes at
//! least two items after its first copy, so pages of two put the copies on different pages.
//!
//! Grant (`POST /purchase/v7.0/purchases/grant`) knows four offers, which no user owns until
//! granted: then they follow the 11 items above, one item per product.
//!
//! | product id | constant | kind | price |
//! |---|---|---|---|
//! | `9NSANDBOXFRD` | [`SANDBOX_FREE_DURABLE`] | `Durable` | free |
//! | `9NSANDBOXFRC` | [`SANDBOX_FREE_CONSUMABLE`] | `Consumable` | free |
//! | `9NSANDBOXPAY` | [`SANDBOX_PRICED_DURABLE`] | `Durable` | 4.99 USD: grant refuses it |
//! | `9NSANDBOXRVK` | [`SANDBOX_REVOKED_ON_GRANT`] | `Consumable` | free; each new grant is revoked at once (a `Revoked` refund event, [`super::refunds`]) |
//!
//! Every user has seven subscriptions (`POST /purchase/v8.0/b2b/recurrences/query`):
//! [`SANDBOX_PASS`] `Active`, [`SANDBOX_SUB_DUNNING`] `InDunning`, [`SANDBOX_SUB_CANCELED`]
//! `Canceled`, [`SANDBOX_SUB_INACTIVE`] `Inactive`, [`SANDBOX_SUB_FAILED`] `Failed`,
//! [`SANDBOX_SUB_NONE`] `None` and [`SANDBOX_SUB_TRIAL`] `Active` in trial. Only the pass is in
//! the collections listing.

use serde_json::{json, Value};

use super::clock::{fnv1a, guid_for, store_timestamp};
pub use super::magic::MAGIC_RESET_AFTER_COMMIT;

/// A game: bought directly and revoked, and owned again through [`SANDBOX_PASS`].
pub const SANDBOX_GAME: &str = "9NSANDBOXGME";
/// A durable add-on: bought directly, and owned again through [`SANDBOX_BUNDLE`].
pub const SANDBOX_DURABLE: &str = "9NSANDBOXDUR";
/// A store-managed consumable (`Consumable`): the Store keeps its balance.
pub const SANDBOX_CONSUMABLE: &str = "9NSANDBOXCNS";
/// A developer-managed consumable (`UnmanagedConsumable`): the publisher keeps the balance.
pub const SANDBOX_UNMANAGED_CONSUMABLE: &str = "9NSANDBOXUCN";
/// A subscription pass that includes [`SANDBOX_GAME`].
pub const SANDBOX_PASS: &str = "9NSANDBOXPAS";
/// An application in its trial period.
pub const SANDBOX_APP_TRIAL: &str = "9NSANDBOXAPP";
/// An add-on bundle that includes [`SANDBOX_DURABLE`].
pub const SANDBOX_BUNDLE: &str = "9NSANDBOXBDL";
/// A durable granted by a promotion (`acquisitionType` `Conditional`).
pub const SANDBOX_PROMO: &str = "9NSANDBOXPRM";
/// A free durable: no user owns it until a grant gives it.
pub const SANDBOX_FREE_DURABLE: &str = "9NSANDBOXFRD";
/// A free store-managed consumable: no user owns it until a grant gives it.
pub const SANDBOX_FREE_CONSUMABLE: &str = "9NSANDBOXFRC";
/// A durable that costs money and that no user owns: grant refuses it as not free.
pub const SANDBOX_PRICED_DURABLE: &str = "9NSANDBOXPAY";
/// A free store-managed consumable whose every new grant is refunded at once: the order's
/// line item turns `Revoked` and a `Revoked` refund event goes into the refund queue.
pub const SANDBOX_REVOKED_ON_GRANT: &str = "9NSANDBOXRVK";
/// A subscription every user has, `InDunning` (payment failing, in its grace period).
pub const SANDBOX_SUB_DUNNING: &str = "9NSANDBOXSDN";
/// A subscription every user has, `Canceled`.
pub const SANDBOX_SUB_CANCELED: &str = "9NSANDBOXSCN";
/// A subscription every user has, `Inactive`.
pub const SANDBOX_SUB_INACTIVE: &str = "9NSANDBOXSIN";
/// A subscription every user has, `Failed`.
pub const SANDBOX_SUB_FAILED: &str = "9NSANDBOXSFL";
/// A subscription every user has, in state `None`.
pub const SANDBOX_SUB_NONE: &str = "9NSANDBOXSNO";
/// A subscription every user has, `Active` in its trial (`isTrial`); its recurrence change
/// answers `{"items": [recurrence]}` rather than the bare recurrence.
pub const SANDBOX_SUB_TRIAL: &str = "9NSANDBOXSTR";
/// The SKU of every catalog product.
pub const SANDBOX_SKU: &str = "0010";

/// Every product of the catalog.
pub const PRODUCTS: [&str; 9] = [
    SANDBOX_GAME,
    SANDBOX_DURABLE,
    SANDBOX_CONSUMABLE,
    SANDBOX_PASS,
    SANDBOX_UNMANAGED_CONSUMABLE,
    SANDBOX_APP_TRIAL,
    SANDBOX_BUNDLE,
    SANDBOX_PROMO,
    MAGIC_RESET_AFTER_COMMIT,
];

/// The lowest balance a store-managed consumable starts with; each (user, product) starts
/// somewhere in `STARTING_BALANCE_MIN..STARTING_BALANCE_MIN + 10`.
pub const STARTING_BALANCE_MIN: i64 = 10;

/// `endDate` of what never ends, as the Store writes `DateTime.MaxValue`.
const NEVER_ENDS: &str = "9999-12-31T23:59:59.9999999+00:00";
/// `trialTimeRemaining` of [`SANDBOX_APP_TRIAL`], a .NET `TimeSpan`.
const TRIAL_TIME_REMAINING: &str = "6.23:59:59.1234567";
/// Purchases fall between 2024-01-01 and this many days later.
const PURCHASE_SPREAD_DAYS: u64 = 600;
const JAN_1_2024: i64 = 1_704_067_200;
/// How long a subscription runs from its purchase.
pub(super) const SUBSCRIPTION_DAYS: i64 = 5 * 365;

/// `productKind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ProductKind {
    Game,
    Application,
    Pass,
    Durable,
    Consumable,
    UnmanagedConsumable,
}

impl ProductKind {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Self::Game => "Game",
            Self::Application => "Application",
            Self::Pass => "Pass",
            Self::Durable => "Durable",
            Self::Consumable => "Consumable",
            Self::UnmanagedConsumable => "UnmanagedConsumable",
        }
    }
}

/// Where an entitlement comes from, in the documented duplicate priority: the first wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Source {
    Direct,
    Bundle,
    Subscription,
    Promotional,
}

impl Source {
    /// `acquisitionType` of what this source grants (a pass bought directly is `Recurring`
    /// too, see [`Grant::recurring`]).
    fn acquisition_type(self, recurring: bool) -> &'static str {
        match self {
            Self::Subscription => "Recurring",
            Self::Promotional => "Conditional",
            Self::Direct | Self::Bundle if recurring => "Recurring",
            Self::Direct | Self::Bundle => "Single",
        }
    }
}

/// `status`; the duplicate priority within one source: `Active` first, `Revoked` last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Status {
    Active,
    Revoked,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Self::Active => "Active",
            Self::Revoked => "Revoked",
        }
    }
}

/// How an item names its subscription: GDK26 shows `recurrenceData` (a string), Microsoft's
/// library reads `recurrenceId`; the catalog has one item of each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RecurrenceField {
    None,
    RecurrenceData,
    RecurrenceId,
}

/// One entitlement of every sandbox user.
#[derive(Debug, Clone, Copy)]
pub(super) struct Grant {
    pub(super) product_id: &'static str,
    pub(super) kind: ProductKind,
    pub(super) source: Source,
    pub(super) status: Status,
    /// The product through which the user owns this one (bundle or pass).
    satisfied_by: Option<&'static str>,
    /// Whether the product itself is a subscription.
    recurring: bool,
    recurrence_field: RecurrenceField,
    in_trial: bool,
}

const fn grant(product_id: &'static str, kind: ProductKind) -> Grant {
    Grant {
        product_id,
        kind,
        source: Source::Direct,
        status: Status::Active,
        satisfied_by: None,
        recurring: false,
        recurrence_field: RecurrenceField::None,
        in_trial: false,
    }
}

/// Every user's collection, in listing order.
pub(super) const GRANTS: [Grant; 11] = [
    Grant {
        status: Status::Revoked,
        ..grant(SANDBOX_GAME, ProductKind::Game)
    },
    grant(SANDBOX_DURABLE, ProductKind::Durable),
    grant(SANDBOX_CONSUMABLE, ProductKind::Consumable),
    Grant {
        recurring: true,
        recurrence_field: RecurrenceField::RecurrenceData,
        ..grant(SANDBOX_PASS, ProductKind::Pass)
    },
    Grant {
        source: Source::Bundle,
        satisfied_by: Some(SANDBOX_BUNDLE),
        ..grant(SANDBOX_DURABLE, ProductKind::Durable)
    },
    grant(
        SANDBOX_UNMANAGED_CONSUMABLE,
        ProductKind::UnmanagedConsumable,
    ),
    Grant {
        source: Source::Subscription,
        satisfied_by: Some(SANDBOX_PASS),
        recurrence_field: RecurrenceField::RecurrenceId,
        ..grant(SANDBOX_GAME, ProductKind::Game)
    },
    Grant {
        in_trial: true,
        ..grant(SANDBOX_APP_TRIAL, ProductKind::Application)
    },
    grant(SANDBOX_BUNDLE, ProductKind::Durable),
    Grant {
        source: Source::Promotional,
        ..grant(SANDBOX_PROMO, ProductKind::Durable)
    },
    grant(MAGIC_RESET_AFTER_COMMIT, ProductKind::Consumable),
];

/// The catalog's spelling of `product_id` and its kind, if the catalog has it (product ids
/// are compared without regard to ASCII case).
pub(super) fn product(product_id: &str) -> Option<(&'static str, ProductKind)> {
    GRANTS
        .iter()
        .find(|g| g.product_id.eq_ignore_ascii_case(product_id))
        .map(|g| (g.product_id, g.kind))
}

/// When `user` bought `product` from `source` (`Direct`, ...): between 2024-01-01 and 600 days
/// later, in seconds since the Unix epoch.
pub(super) fn acquired_at(user: &str, product: &str, source: &str) -> i64 {
    let hash = fnv1a(&["acquired", user, product, source], 0);
    let seconds = hash % (PURCHASE_SPREAD_DAYS * 86_400);
    JAN_1_2024 + i64::try_from(seconds).unwrap_or(0)
}

/// The recurrence (subscription) id of `user`'s subscription to `product`:
/// `mdr:0:<32 hex digits>:<productId>`, stable per user and product.
pub(super) fn recurrence_id(user: &str, product: &str) -> String {
    let high = fnv1a(&["recurrence", user, product], 0);
    let low = fnv1a(&["recurrence", user, product], 1);
    format!("mdr:0:{high:016x}{low:016x}:{product}")
}

/// A product of the catalog with a price: what grant looks at.
#[derive(Debug, Clone, Copy)]
pub(super) struct Offer {
    pub(super) product_id: &'static str,
    pub(super) kind: ProductKind,
    /// The list price in [`OFFER_CURRENCY`]; grant gives only products whose price is 0.
    pub(super) list_price: f64,
    pub(super) title: &'static str,
}

/// The currency of every [`Offer`].
pub(super) const OFFER_CURRENCY: &str = "USD";

/// The offers grant knows: three free products and one priced one. Every other catalog
/// product counts as priced too.
pub(super) const OFFERS: [Offer; 4] = [
    Offer {
        product_id: SANDBOX_FREE_DURABLE,
        kind: ProductKind::Durable,
        list_price: 0.0,
        title: "Sandbox free durable",
    },
    Offer {
        product_id: SANDBOX_FREE_CONSUMABLE,
        kind: ProductKind::Consumable,
        list_price: 0.0,
        title: "Sandbox free consumable",
    },
    Offer {
        product_id: SANDBOX_PRICED_DURABLE,
        kind: ProductKind::Durable,
        list_price: 4.99,
        title: "Sandbox priced durable",
    },
    Offer {
        product_id: SANDBOX_REVOKED_ON_GRANT,
        kind: ProductKind::Consumable,
        list_price: 0.0,
        title: "Sandbox consumable revoked on grant",
    },
];

/// The offer of `product_id` (compared without regard to ASCII case).
pub(super) fn offer(product_id: &str) -> Option<&'static Offer> {
    OFFERS
        .iter()
        .find(|o| o.product_id.eq_ignore_ascii_case(product_id))
}

/// The `productType` of `product_id` in a refund event: its kind in the collections listing
/// or among the offers; `Pass` for every subscription; `Durable` for anything else.
pub(super) fn product_type(product_id: &str) -> &'static str {
    product(product_id)
        .map(|(_, kind)| kind)
        .or_else(|| offer(product_id).map(|o| o.kind))
        .or_else(|| {
            SUBSCRIPTIONS
                .iter()
                .any(|s| s.product_id.eq_ignore_ascii_case(product_id))
                .then_some(ProductKind::Pass)
        })
        .map_or("Durable", ProductKind::as_str)
}

/// The item the collections query lists for `offer` once granted to `user` ([`super::grant`]):
/// a direct purchase, `Active`, acquired at the first grant, whose `transactionId` is that
/// grant's `orderId`.
pub(super) fn granted_item(
    user: &str,
    offer: &Offer,
    first_order_id: &str,
    granted_at: i64,
    quantity: i64,
) -> Value {
    let mut item = grant(offer.product_id, offer.kind).item(user, quantity);
    for field in ["acquiredDate", "modifiedDate", "startDate"] {
        item[field] = store_timestamp(granted_at).into();
    }
    item["transactionId"] = first_order_id.into();
    item
}

/// `recurrenceState`. `Inactive`, `Canceled` and `Failed` are terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RecurrenceState {
    None,
    Active,
    Inactive,
    Canceled,
    InDunning,
    Failed,
}

impl RecurrenceState {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Self::None => "None",
            Self::Active => "Active",
            Self::Inactive => "Inactive",
            Self::Canceled => "Canceled",
            Self::InDunning => "InDunning",
            Self::Failed => "Failed",
        }
    }

    /// Whether no change but turning auto-renew off applies any more.
    pub(super) fn is_terminal(self) -> bool {
        matches!(self, Self::Inactive | Self::Canceled | Self::Failed)
    }
}

/// A subscription every sandbox user has, in the state it starts in.
#[derive(Debug, Clone, Copy)]
pub(super) struct Subscription {
    pub(super) product_id: &'static str,
    pub(super) state: RecurrenceState,
    pub(super) is_trial: bool,
}

const fn subscription(product_id: &'static str, state: RecurrenceState) -> Subscription {
    Subscription {
        product_id,
        state,
        is_trial: false,
    }
}

/// Every user's subscriptions, in the order the recurrences query lists them: one in each
/// state, and one in trial.
pub(super) const SUBSCRIPTIONS: [Subscription; 7] = [
    subscription(SANDBOX_PASS, RecurrenceState::Active),
    subscription(SANDBOX_SUB_DUNNING, RecurrenceState::InDunning),
    subscription(SANDBOX_SUB_CANCELED, RecurrenceState::Canceled),
    subscription(SANDBOX_SUB_INACTIVE, RecurrenceState::Inactive),
    subscription(SANDBOX_SUB_FAILED, RecurrenceState::Failed),
    subscription(SANDBOX_SUB_NONE, RecurrenceState::None),
    Subscription {
        is_trial: true,
        ..subscription(SANDBOX_SUB_TRIAL, RecurrenceState::Active)
    },
];

/// The balance a store-managed consumable starts with for `user`.
pub(super) fn starting_balance(user: &str, product_id: &str) -> i64 {
    let spread = fnv1a(&["balance", user, product_id], 0) % 10;
    STARTING_BALANCE_MIN + i64::try_from(spread).unwrap_or(0)
}

/// The `id` of `user`'s direct purchase of `product_id` (consume's `itemId`).
pub(super) fn item_id(user: &str, product_id: &str) -> String {
    guid_for(&["item", user, product_id, "Direct"])
}

impl Grant {
    /// The purchase this entitlement comes from: the bundle or pass it is part of, or itself.
    fn purchased(&self) -> (&'static str, Source) {
        match self.satisfied_by {
            Some(product) => (product, Source::Direct),
            None => (self.product_id, self.source),
        }
    }

    fn source_name(&self) -> &'static str {
        match self.source {
            Source::Direct => "Direct",
            Source::Bundle => "Bundle",
            Source::Subscription => "Subscription",
            Source::Promotional => "Promotional",
        }
    }

    /// When `user` bought what grants this, in seconds since the Unix epoch.
    fn acquired(&self, user: &str) -> i64 {
        let (product, source) = self.purchased();
        acquired_at(user, product, &format!("{source:?}"))
    }

    /// The subscription id of the pass that grants this (or of this pass).
    fn recurrence_id(&self, user: &str) -> String {
        recurrence_id(user, self.satisfied_by.unwrap_or(self.product_id))
    }

    /// The item the collections query lists for `user`, with `quantity`.
    pub(super) fn item(&self, user: &str, quantity: i64) -> Value {
        let (purchase, purchase_source) = self.purchased();
        let purchase_tag = format!("{purchase_source:?}");
        let acquired = self.acquired(user);
        let modified_days = fnv1a(&["modified", user, self.product_id], 0) % 30;
        let modified = acquired + 86_400 * i64::try_from(modified_days).unwrap_or(0) + 3600;
        let subscription = self.recurring || self.source == Source::Subscription;
        let end = match (self.status, subscription) {
            (Status::Revoked, _) => store_timestamp(modified),
            (Status::Active, true) => store_timestamp(acquired + SUBSCRIPTION_DAYS * 86_400),
            (Status::Active, false) => NEVER_ENDS.to_owned(),
        };
        let satisfied_by: Vec<&str> = self.satisfied_by.into_iter().collect();
        let trial = self.in_trial.then(|| {
            json!({
                "isInTrialPeriod": true,
                "isTrial": true,
                "trialTimeRemaining": TRIAL_TIME_REMAINING,
            })
        });
        let mut item = json!({
            "acquiredDate": store_timestamp(acquired),
            "acquisitionType": self.source.acquisition_type(self.recurring),
            "endDate": end,
            "id": guid_for(&["item", user, self.product_id, self.source_name()]),
            "modifiedDate": store_timestamp(modified),
            "productId": self.product_id,
            "productKind": self.kind.as_str(),
            "quantity": quantity,
            "recurrenceData": null,
            "satisfiedByProductIds": satisfied_by,
            "skuId": SANDBOX_SKU,
            "startDate": store_timestamp(acquired),
            "status": self.status.as_str(),
            "tags": [],
            "transactionId": guid_for(&["transaction", user, purchase, &purchase_tag]),
            "trialData": trial,
        });
        if let Some(fields) = item.as_object_mut() {
            match self.recurrence_field {
                RecurrenceField::None => {}
                RecurrenceField::RecurrenceData => {
                    fields.insert("recurrenceData".into(), self.recurrence_id(user).into());
                }
                RecurrenceField::RecurrenceId => {
                    fields.remove("recurrenceData");
                    fields.insert("recurrenceId".into(), self.recurrence_id(user).into());
                }
            }
        }
        item
    }

    /// Whether `other` outranks this one as the copy to keep of a duplicate: the documented
    /// priority (direct > bundle > subscription > promotional, then `Active` > `Revoked`).
    pub(super) fn outranked_by(&self, other: &Self) -> bool {
        (other.source, other.status) < (self.source, self.status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_are_stable_per_user_and_differ_between_users() {
        for grant in &GRANTS {
            let item = grant.item("alice", 1);
            assert_eq!(item, grant.item("alice", 1));
            assert_ne!(item["id"], grant.item("bob", 1)["id"]);
            assert_ne!(item["acquiredDate"], grant.item("bob", 1)["acquiredDate"]);
        }
    }

    #[test]
    fn items_through_a_bundle_or_pass_share_its_purchase() {
        let item = |index: usize| GRANTS[index].item("alice", 1);
        let (pass, game_via_pass) = (item(3), item(6));
        assert_eq!(pass["recurrenceData"], game_via_pass["recurrenceId"]);
        assert!(game_via_pass.get("recurrenceData").is_none());
        assert!(pass["recurrenceData"]
            .as_str()
            .unwrap()
            .starts_with("mdr:0:"));
        assert_eq!(pass["transactionId"], game_via_pass["transactionId"]);
        assert_eq!(item(8)["transactionId"], item(4)["transactionId"]);
        assert_eq!(item(9)["acquisitionType"], "Conditional");
    }

    #[test]
    fn duplicates_come_at_least_two_items_after_their_first() {
        for (index, grant) in GRANTS.iter().enumerate() {
            if let Some(first) = GRANTS.iter().position(|g| g.product_id == grant.product_id) {
                assert!(first == index || index - first >= 3, "{}", grant.product_id);
            }
        }
    }

    #[test]
    fn products_lists_every_product_of_the_grants_once() {
        for grant in &GRANTS {
            assert!(PRODUCTS.contains(&grant.product_id));
        }
        for id in PRODUCTS {
            assert!(product(id).is_some(), "{id}");
            assert!(id.len() == 12 || id == MAGIC_RESET_AFTER_COMMIT, "{id}");
        }
    }

    #[test]
    fn starting_balances_fall_in_ten_to_nineteen() {
        for user in ["a", "b", "c", "d"] {
            let balance = starting_balance(user, SANDBOX_CONSUMABLE);
            assert!((10..20).contains(&balance), "{balance}");
        }
    }
}
