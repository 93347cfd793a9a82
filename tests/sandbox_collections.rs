//! The collections RPCs end to end against the sandbox emulator, as a backend developer would
//! use them: key-creation tokens, a user's collection across pages with its duplicates, a
//! consume that loses its answer and is still made exactly once, and the Store's rate limit.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use msstore_facade::emulator::catalog::{
    SANDBOX_APP_TRIAL, SANDBOX_CONSUMABLE, SANDBOX_DURABLE, SANDBOX_GAME, SANDBOX_PASS,
    SANDBOX_UNMANAGED_CONSUMABLE,
};
use msstore_facade::emulator::magic::MAGIC_RESET_AFTER_COMMIT;
use msstore_facade::emulator::StoreKeySpec;
use msstore_facade::proto::msstore::v1 as pb;
use msstore_facade::upstream::Host;
use pb::store_collections_client::StoreCollectionsClient;
use tonic::transport::Channel;
use tonic::Code;

fn user_key(user: &str) -> String {
    StoreKeySpec::new(Host::Collections).user_id(user).mint()
}

fn everything(user: &str) -> pb::QueryCollectionsRequest {
    pb::QueryCollectionsRequest {
        user_key: user_key(user),
        products: msstore_facade::emulator::catalog::PRODUCTS
            .iter()
            .map(|product| pb::ProductSku {
                product_id: (*product).to_owned(),
                sku_id: String::new(),
            })
            .collect(),
        ..Default::default()
    }
}

async fn query(
    channel: &Channel,
    request: pb::QueryCollectionsRequest,
) -> pb::QueryCollectionsResponse {
    StoreCollectionsClient::new(channel.clone())
        .query_collections(request)
        .await
        .unwrap_or_else(|status| panic!("{status:?}"))
        .into_inner()
}

fn balance(page: &pb::QueryCollectionsResponse, product: &str) -> i64 {
    page.items
        .iter()
        .find(|item| item.product_id == product)
        .unwrap_or_else(|| panic!("{product} is owned: {page:#?}"))
        .quantity
}

#[tokio::test]
async fn all_pages_walks_the_sandbox_collection_and_keeps_one_item_per_product_by_priority() {
    let emulator = start_emulator().await;
    let facade = Facade::start(sandbox_settings(&emulator)).await;
    let channel = &facade.channel;

    // Page by page, as the Store serves it: the duplicates are there.
    let mut pages = Vec::new();
    let mut request = pb::QueryCollectionsRequest {
        page_size: 2,
        ..everything("alice")
    };
    loop {
        let page = query(channel, request.clone()).await;
        assert!(page.items.len() <= 2);
        // One page is complete exactly when no page follows it.
        assert_eq!(page.complete, page.next_page_token.is_empty());
        assert_eq!(page.pages, 1);
        let next = page.next_page_token.clone();
        pages.push(page);
        if next.is_empty() {
            break;
        }
        request.page_token = next;
    }
    let paged: Vec<&pb::CollectionItem> = pages.iter().flat_map(|p| &p.items).collect();
    let unique: BTreeSet<(&str, &str)> = paged
        .iter()
        .map(|item| (item.product_id.as_str(), item.sku_id.as_str()))
        .collect();
    assert!(pages.len() > 2, "{} pages", pages.len());
    assert!(unique.len() < paged.len(), "the sandbox serves duplicates");

    // All pages in one call: one item per product and SKU, the documented one kept.
    let all = query(
        channel,
        pb::QueryCollectionsRequest {
            page_size: 2,
            all_pages: true,
            ..everything("alice")
        },
    )
    .await;
    assert!(all.complete);
    assert!(all.next_page_token.is_empty());
    assert_eq!(all.pages as usize, pages.len());
    assert_eq!(all.items.len(), unique.len());
    assert_eq!(all.duplicates_dropped as usize, paged.len() - unique.len());
    let item = |product: &str| {
        all.items
            .iter()
            .find(|item| item.product_id == product)
            .unwrap_or_else(|| panic!("{product}: {all:#?}"))
    };
    // The durable, owned directly and through the bundle: the direct purchase wins.
    let durable = item(SANDBOX_DURABLE);
    assert!(durable.satisfied_by_product_ids.is_empty(), "{durable:#?}");
    assert_eq!(durable.acquisition_type(), pb::AcquisitionType::Single);
    // The game, revoked as a direct purchase and active through the pass: a direct purchase
    // outranks a subscription whatever its status, as Microsoft documents the priority.
    let game = item(SANDBOX_GAME);
    assert_eq!(game.status(), pb::ItemStatus::Revoked, "{game:#?}");
    // Typed fields from the emulator's items.
    let pass = item(SANDBOX_PASS);
    assert_eq!(pass.product_kind(), pb::ProductKind::Pass);
    assert_eq!(pass.acquisition_type(), pb::AcquisitionType::Recurring);
    assert!(pass.subscription_id.starts_with("mdr:0:"), "{pass:#?}");
    let trial = item(SANDBOX_APP_TRIAL);
    let remaining = trial
        .trial_data
        .as_ref()
        .and_then(|t| t.trial_time_remaining)
        .expect("a trial time");
    assert_eq!(remaining.seconds, 6 * 86_400 + 23 * 3600 + 59 * 60 + 59);
    assert!(trial.trial_data.as_ref().unwrap().is_in_trial_period);
    assert!(durable.acquired_date.is_some() && durable.end_date.is_some());

    // Another user owns the same catalog with other ids.
    let bob = query(
        channel,
        pb::QueryCollectionsRequest {
            all_pages: true,
            ..everything("bob")
        },
    )
    .await;
    let ids = |page: &pb::QueryCollectionsResponse| -> BTreeSet<String> {
        page.items.iter().map(|i| i.id.clone()).collect()
    };
    assert!(ids(&bob).is_disjoint(&ids(&all)));
}

#[tokio::test]
async fn a_consume_whose_answer_is_lost_is_retried_and_deducted_exactly_once() {
    let emulator = start_emulator().await;
    let facade = Facade::start(sandbox_settings(&emulator)).await;
    let channel = &facade.channel;
    let products = |product: &str| pb::QueryCollectionsRequest {
        products: vec![pb::ProductSku {
            product_id: product.to_owned(),
            sku_id: String::new(),
        }],
        ..everything("carol")
    };
    let before = balance(
        &query(channel, products(MAGIC_RESET_AFTER_COMMIT)).await,
        MAGIC_RESET_AFTER_COMMIT,
    );
    let consume = pb::ConsumeProductRequest {
        user_key: user_key("carol"),
        product_id: MAGIC_RESET_AFTER_COMMIT.to_owned(),
        tracking_id: "5b1f0c3e-8a2d-4e6f-9b7c-0123456789ab".to_owned(),
        remove_quantity: 2,
        include_order_ids: true,
        ..Default::default()
    };
    // The emulator commits the first request, then resets the connection: the facade cannot
    // know whether it was processed and replays the identical body.
    let first = StoreCollectionsClient::new(channel.clone())
        .consume_product(consume.clone())
        .await
        .unwrap_or_else(|status| panic!("{status:?}"))
        .into_inner();
    assert_eq!(first.new_quantity, before - 2);
    assert_eq!(first.tracking_id, consume.tracking_id);
    assert!(!first.order_transactions.is_empty());
    // The caller's own replay after an unknown outcome: the same answer, nothing deducted.
    let replay = StoreCollectionsClient::new(channel.clone())
        .consume_product(consume.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(replay, first);
    let after = balance(
        &query(channel, products(MAGIC_RESET_AFTER_COMMIT)).await,
        MAGIC_RESET_AFTER_COMMIT,
    );
    assert_eq!(after, before - 2);
}

#[tokio::test]
async fn consumables_store_managed_and_developer_managed() {
    let emulator = start_emulator().await;
    let facade = Facade::start(sandbox_settings(&emulator)).await;
    let channel = &facade.channel;
    let mut client = StoreCollectionsClient::new(channel.clone());
    let managed = client
        .consume_product(pb::ConsumeProductRequest {
            user_key: user_key("dave"),
            product_id: SANDBOX_CONSUMABLE.to_owned(),
            tracking_id: "0d3f7d9c-2a3b-4c5d-8e9f-000000000001".to_owned(),
            remove_quantity: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(managed.new_quantity >= 9, "{managed:?}");
    // Developer-managed: remove_quantity 0 (removeQuantity omitted), new quantity 0.
    let unmanaged = client
        .consume_product(pb::ConsumeProductRequest {
            user_key: user_key("dave"),
            product_id: SANDBOX_UNMANAGED_CONSUMABLE.to_owned(),
            tracking_id: "0d3f7d9c-2a3b-4c5d-8e9f-000000000002".to_owned(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(unmanaged.new_quantity, 0);
    // More than the balance: the Store's 409 is FAILED_PRECONDITION.
    let status = client
        .consume_product(pb::ConsumeProductRequest {
            user_key: user_key("dave"),
            product_id: SANDBOX_CONSUMABLE.to_owned(),
            tracking_id: "0d3f7d9c-2a3b-4c5d-8e9f-000000000003".to_owned(),
            remove_quantity: 1000,
            ..Default::default()
        })
        .await
        .expect_err("more than the balance");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    // A purchase key is refused before any call.
    let status = client
        .consume_product(pb::ConsumeProductRequest {
            user_key: StoreKeySpec::new(Host::Purchase).mint(),
            product_id: SANDBOX_CONSUMABLE.to_owned(),
            tracking_id: "0d3f7d9c-2a3b-4c5d-8e9f-000000000004".to_owned(),
            remove_quantity: 1,
            ..Default::default()
        })
        .await
        .expect_err("a purchase key");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(error_info(&status).reason, "KEY_TYPE_MISMATCH");
    assert_eq!(bad_fields(&status), ["user_key"]);
    // An expired key too, with its expiry.
    let expired = StoreKeySpec::new(Host::Collections)
        .issued_at(now() - 40 * 86_400)
        .mint();
    let status = client
        .consume_product(pb::ConsumeProductRequest {
            user_key: expired,
            product_id: SANDBOX_CONSUMABLE.to_owned(),
            tracking_id: "0d3f7d9c-2a3b-4c5d-8e9f-000000000005".to_owned(),
            remove_quantity: 1,
            ..Default::default()
        })
        .await
        .expect_err("an expired key");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    let info = error_info(&status);
    assert_eq!(info.reason, "STORE_KEY_EXPIRED");
    assert!(info.metadata["expires_at"].ends_with('Z'), "{info:?}");
}

#[tokio::test]
async fn the_stores_rate_limit_per_user_is_resource_exhausted_with_its_message_and_delay() {
    let emulator = start_emulator().await;
    let facade = Facade::start(sandbox_settings(&emulator)).await;
    let request = pb::QueryCollectionsRequest {
        products: vec![pb::ProductSku {
            product_id: SANDBOX_DURABLE.to_owned(),
            sku_id: String::new(),
        }],
        ..everything("erin")
    };
    let mut client = StoreCollectionsClient::new(facade.channel.clone());
    for n in 0..200 {
        client
            .query_collections(request.clone())
            .await
            .unwrap_or_else(|status| panic!("call {n}: {status:?}"));
    }
    let mut throttled = tonic::Request::new(request.clone());
    // Shorter than the window: the facade hands the 429 on instead of waiting it out.
    throttled.set_timeout(Duration::from_secs(5));
    let status = client
        .query_collections(throttled)
        .await
        .expect_err("the 201st operation in 5 minutes");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(error_info(&status).reason, "TOO_MANY_REQUESTS");
    assert!(
        status
            .message()
            .contains("The rate limit of 200 operations in 300 seconds has been exceeded"),
        "{status:?}"
    );
    let delay = retry_delay(&status).expect("RetryInfo");
    assert!(delay > Duration::from_secs(200), "{delay:?}");
    // Another user is not throttled.
    client
        .query_collections(everything("frank"))
        .await
        .expect("another user has a budget of their own");
}
