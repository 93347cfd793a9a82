//! The purchase RPCs end to end against the sandbox emulator, as a backend developer would
//! use them: a free grant made once per order id and seen in the orders, every subscription
//! state, changes kept by the Store (both answer shapes), and paging of orders.

mod common;

use common::*;
use msstore_facade::emulator::catalog::{
    SANDBOX_FREE_DURABLE, SANDBOX_PASS, SANDBOX_SUB_CANCELED, SANDBOX_SUB_TRIAL,
};
use msstore_facade::emulator::StoreKeySpec;
use msstore_facade::proto::msstore::v1 as pb;
use msstore_facade::upstream::Host;
use pb::store_purchases_client::StorePurchasesClient;
use tonic::transport::Channel;
use tonic::Code;

fn purchase_key(user: &str) -> String {
    StoreKeySpec::new(Host::Purchase).user_id(user).mint()
}

fn client(channel: &Channel) -> StorePurchasesClient<Channel> {
    StorePurchasesClient::new(channel.clone())
}

async fn recurrences(channel: &Channel, key: &str) -> Vec<pb::Recurrence> {
    let page = client(channel)
        .query_recurrences(pb::QueryRecurrencesRequest {
            user_key: key.to_owned(),
            page_size: 2,
            all_pages: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(page.complete);
    assert!(page.pages > 1, "{} pages", page.pages);
    page.items
}

fn of<'a>(items: &'a [pb::Recurrence], product: &str) -> &'a pb::Recurrence {
    items
        .iter()
        .find(|r| r.product_id == product)
        .unwrap_or_else(|| panic!("{product}: {items:#?}"))
}

#[tokio::test]
async fn a_free_grant_is_made_once_per_order_id_and_shows_in_the_orders() {
    let emulator = start_emulator().await;
    let facade = Facade::start(sandbox_settings(&emulator)).await;
    let channel = &facade.channel;
    let key = purchase_key("grace");
    let grant = pb::GrantFreeProductRequest {
        user_key: key.clone(),
        product_id: SANDBOX_FREE_DURABLE.into(),
        sku_id: "0010".into(),
        availability_id: "9PSANDBOXAVL".into(),
        language: "en-us".into(),
        market: "us".into(),
        order_id: "4f6e2d1c-0b9a-4876-a5b4-c3d2e1f0a9b8".into(),
        ..Default::default()
    };
    let order = client(channel)
        .grant_free_product(grant.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(order.order_id, grant.order_id);
    assert_eq!(order.order_state(), pb::OrderState::Purchased);
    assert_eq!(order.order_line_items[0].product_id, SANDBOX_FREE_DURABLE);
    // The caller's replay after an unknown outcome: the same order, granted once.
    let replay = client(channel)
        .grant_free_product(grant.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(replay, order);
    // The same order id for another product is the Store's 409.
    let status = client(channel)
        .grant_free_product(pb::GrantFreeProductRequest {
            product_id: "9NSANDBOXFRC".into(),
            ..grant.clone()
        })
        .await
        .expect_err("an order id reused");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");

    // Every order of the user, all pages: the seed orders and the grant, once.
    let orders = client(channel)
        .query_orders(pb::QueryOrdersRequest {
            user_key: key.clone(),
            line_item_states: vec![
                pb::LineItemState::Purchased as i32,
                pb::LineItemState::Revoked as i32,
                pb::LineItemState::Refunded as i32,
            ],
            all_pages: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(orders.complete);
    assert!(orders.pages >= 2, "{} pages", orders.pages);
    let granted: Vec<&pb::OrderSummary> = orders
        .items
        .iter()
        .filter(|o| o.order_id == grant.order_id)
        .collect();
    assert_eq!(granted.len(), 1, "{orders:#?}");
    // The default filter: what was refunded or revoked, nothing purchased.
    let refunds = client(channel)
        .query_orders(pb::QueryOrdersRequest {
            user_key: key,
            all_pages: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!refunds.items.is_empty());
    for order in &refunds.items {
        for line in &order.order_line_items {
            assert!(
                matches!(
                    line.line_item_state(),
                    pb::LineItemState::Revoked | pb::LineItemState::Refunded
                ),
                "{line:?}"
            );
        }
        assert!(order.order_refunded_date.is_some(), "{order:?}");
    }
}

#[tokio::test]
async fn subscriptions_have_every_state_and_changes_are_kept_by_the_store() {
    let emulator = start_emulator().await;
    let facade = Facade::start(sandbox_settings(&emulator)).await;
    let channel = &facade.channel;
    let key = purchase_key("heidi");
    let items = recurrences(channel, &key).await;
    let states: std::collections::BTreeSet<i32> =
        items.iter().map(|r| r.recurrence_state).collect();
    for state in [
        pb::RecurrenceState::None,
        pb::RecurrenceState::Active,
        pb::RecurrenceState::Inactive,
        pb::RecurrenceState::Canceled,
        pb::RecurrenceState::InDunning,
        pb::RecurrenceState::Failed,
    ] {
        assert!(states.contains(&(state as i32)), "{state:?}: {items:#?}");
    }
    let pass = of(&items, SANDBOX_PASS).clone();
    assert_eq!(pass.recurrence_state(), pb::RecurrenceState::Active);
    assert!(pass.auto_renew);

    // Extend by 5 days, then stop auto-renewal: both kept by the Store.
    let change = |change_type: pb::ChangeType, days: i32, id: &str| pb::ChangeRecurrenceRequest {
        user_key: key.clone(),
        recurrence_id: id.to_owned(),
        change_type: change_type as i32,
        extension_days: days,
        ..Default::default()
    };
    let extended = client(channel)
        .change_recurrence(change(pb::ChangeType::Extend, 5, &pass.id))
        .await
        .unwrap()
        .into_inner();
    let before = pass.expiration_time.unwrap().seconds;
    assert_eq!(
        extended.expiration_time.unwrap().seconds,
        before + 5 * 86_400
    );
    let toggled = client(channel)
        .change_recurrence(change(pb::ChangeType::ToggleAutoRenew, 0, &pass.id))
        .await
        .unwrap()
        .into_inner();
    assert!(!toggled.auto_renew);
    let after = recurrences(channel, &key).await;
    assert!(!of(&after, SANDBOX_PASS).auto_renew);

    // The trial answers {"items": [it]}, the other page shape Microsoft documents.
    let trial = of(&items, SANDBOX_SUB_TRIAL).clone();
    let canceled = client(channel)
        .change_recurrence(change(pb::ChangeType::Cancel, 0, &trial.id))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(canceled.id, trial.id);
    assert_eq!(canceled.recurrence_state(), pb::RecurrenceState::Canceled);
    assert!(canceled.cancellation_date.is_some());

    // A terminal subscription cannot be extended: the Store's 409.
    let terminal = of(&items, SANDBOX_SUB_CANCELED).clone();
    let status = client(channel)
        .change_recurrence(change(pb::ChangeType::Extend, 1, &terminal.id))
        .await
        .expect_err("a canceled subscription");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    // Nor can an id the user does not have.
    let status = client(channel)
        .change_recurrence(change(pb::ChangeType::Cancel, 0, "mdr:0:not-theirs"))
        .await
        .expect_err("another user's id");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
}
