//! The Store operations and the one registry that places them in gRPC services.
//!
//! Each operation is one file here implementing [`Operation`]. The [`registry!`] below is the
//! only list of them: it declares the module, builds one [`Pipeline`] per method (which
//! registers the method's metric series), implements the tonic service trait (so a proto
//! method without an operation, or an operation under the wrong method, does not compile),
//! and derives [`SERVICE_NAMES`] (health) and [`routes`] (serving). Retry budgets and circuit
//! breakers follow from each operation's [`Operation::host`]; reflection serves every proto
//! file that `build.rs` compiles.

use tonic::server::NamedService;
use tonic::service::Routes;

mod paging;
mod recurrences;
mod refunds;
mod store_json;
mod store_user;

pub use crate::api::Upstream;
use crate::api::{Backends, Operation, Pipeline};
use crate::proto::msstore::v1 as pb;
/// The refund queue's parsers, for `crate::fuzzing`.
pub(crate) use pull_refund_events::event as refund_event;
pub(crate) use refunds::{expires_on as sas_expires_on, AckId};

/// Declares every service and, in each, every method with its operation.
macro_rules! registry {
    ($(
        $(#[$doc:meta])*
        $service:ident: $module:ident::$server:ident as $trait_name:ident {
            $( $method:ident => $file:ident::$op:ident, )*
        }
    )*) => {
        $( $( mod $file; pub use $file::$op; )* )*

        $(
            $(#[$doc])*
            pub struct $service {
                $( $method: Pipeline<$op>, )*
            }

            impl $service {
                /// Its gRPC service name.
                pub const NAME: &'static str =
                    <pb::$module::$server<$service> as NamedService>::NAME;

                fn new(backends: &Backends) -> Self {
                    Self {
                        $( $method: Pipeline::new(
                            Self::NAME,
                            pb::methods::$module::$method,
                            backends,
                        ), )*
                    }
                }
            }

            #[tonic::async_trait]
            impl pb::$module::$trait_name for $service {
                $(
                    async fn $method(
                        &self,
                        request: tonic::Request<<$op as Operation>::Request>,
                    ) -> Result<tonic::Response<<$op as Operation>::Response>, tonic::Status> {
                        self.$method.serve(request).await
                    }
                )*
            }
        )*

        /// The gRPC name of every service, for health (besides `""`).
        pub const SERVICE_NAMES: &[&str] = &[$( $service::NAME ),*];

        /// Every (service, method) served.
        pub const METHODS: &[(&str, &str)] =
            &[$( $( ($service::NAME, pb::methods::$module::$method), )* )*];

        /// Every (service, method) served with what it calls upstream.
        pub const UPSTREAMS: &[(&str, &str, Upstream)] = &[$( $(
            ($service::NAME, pb::methods::$module::$method, <$op as Operation>::UPSTREAM),
        )* )*];

        // A proto service without a registry block would compile (its generated trait would
        // just go unused): the count of services must match the protos'.
        const _: () = assert!(
            SERVICE_NAMES.len() == pb::methods::SERVICE_COUNT,
            "every service of the protos needs a block in the operation registry"
        );

        /// Every service over `backends`, refusing request messages over `max_request_bytes`.
        pub fn routes(backends: &Backends, max_request_bytes: usize) -> Routes {
            let mut routes = Routes::builder();
            $(
                routes.add_service(
                    pb::$module::$server::new($service::new(backends))
                        .max_decoding_message_size(max_request_bytes),
                );
            )*
            routes.routes()
        }
    };
}

registry! {
    /// `msstore.v1.StoreEntitlements`: Store for Business entitlements.
    StoreEntitlementsService: store_entitlements_server::StoreEntitlementsServer as StoreEntitlements {
        get_offline_license => offline_license::GetOfflineLicense,
    }
    /// `msstore.v1.StoreKeys`: Microsoft Store ID keys.
    StoreKeysService: store_keys_server::StoreKeysServer as StoreKeys {
        renew_key => renew_key::RenewKey,
        get_key_creation_tokens => key_creation_tokens::GetKeyCreationTokens,
    }
    /// `msstore.v1.StoreCollections`: what a user owns, and consumables.
    StoreCollectionsService: store_collections_server::StoreCollectionsServer as StoreCollections {
        query_collections => query_collections::QueryCollections,
        consume_product => consume::ConsumeProduct,
    }
    /// `msstore.v1.StorePurchases`: free grants, subscriptions and orders.
    StorePurchasesService: store_purchases_server::StorePurchasesServer as StorePurchases {
        grant_free_product => grant::GrantFreeProduct,
        query_recurrences => query_recurrences::QueryRecurrences,
        change_recurrence => change_recurrence::ChangeRecurrence,
        query_orders => query_orders::QueryOrders,
    }
    /// `msstore.v1.StoreRefunds`: the refund event queue ("clawback v2").
    StoreRefundsService: store_refunds_server::StoreRefundsServer as StoreRefunds {
        pull_refund_events => pull_refund_events::PullRefundEvents,
        acknowledge_refund_events => acknowledge_refund_events::AcknowledgeRefundEvents,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use prost::Message;

    use super::*;

    /// Every service and method of the API protos is served, under its proto name, and
    /// nothing else: a proto service without a registry block would otherwise compile and be
    /// silently missing.
    #[test]
    fn the_registry_serves_exactly_the_api_of_the_protos() {
        let set = prost_types::FileDescriptorSet::decode(crate::proto::FILE_DESCRIPTOR_SET)
            .expect("the embedded descriptor set decodes");
        let mut in_protos = BTreeSet::new();
        for file in set
            .file
            .iter()
            .filter(|f| f.package().starts_with("msstore."))
        {
            for service in &file.service {
                for method in &service.method {
                    in_protos.insert((
                        format!("{}.{}", file.package(), service.name()),
                        method.name().to_owned(),
                    ));
                }
            }
        }
        let served: BTreeSet<(String, String)> = METHODS
            .iter()
            .map(|(service, method)| ((*service).to_owned(), (*method).to_owned()))
            .collect();
        assert_eq!(served, in_protos);
        let services: BTreeSet<&str> = METHODS.iter().map(|(service, _)| *service).collect();
        assert_eq!(services, SERVICE_NAMES.iter().copied().collect());
    }
}
