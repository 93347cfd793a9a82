//! The one notion of an upstream Store host. Everything kept per host (base URL setting,
//! circuit breaker, retry budget, metric series, emulator prefix) is an `EnumMap<Host, _>` or an
//! exhaustive `match`, so a new host that is not wired everywhere does not compile.

/// A Store host the facade calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, enum_map::Enum)]
pub enum Host {
    /// The Store for Business (`bspmts.mp.microsoft.com`): offline licenses.
    BusinessStore,
    /// The collections host (`collections.mp.microsoft.com`): collections keys and queries.
    Collections,
    /// The purchase host (`purchase.mp.microsoft.com`): purchase keys, grants, subscriptions.
    Purchase,
    /// The publisher's refund event queue, an Azure Storage queue whose URL the purchase host
    /// hands out with a SAS: never a fixed URL. Its setting is the one base URL a queue URL
    /// may start with besides `https://*.queue.core.windows.net` (the emulator's).
    RefundQueue,
}

impl Host {
    /// The `upstream` label of its metric series.
    pub fn label(self) -> &'static str {
        match self {
            Host::BusinessStore => "business_store",
            Host::Collections => "collections",
            Host::Purchase => "purchase",
            Host::RefundQueue => "refund_queue",
        }
    }

    /// The flag that sets its base URL, without the leading `--`.
    pub fn flag(self) -> &'static str {
        match self {
            Host::BusinessStore => "business-store-url",
            Host::Collections => "collections-url",
            Host::Purchase => "purchase-url",
            Host::RefundQueue => "refund-queue-base-url",
        }
    }

    /// The environment variable that sets its base URL.
    pub fn env(self) -> &'static str {
        match self {
            Host::BusinessStore => "MSSTORE_BUSINESS_STORE_URL",
            Host::Collections => "MSSTORE_COLLECTIONS_URL",
            Host::Purchase => "MSSTORE_PURCHASE_URL",
            Host::RefundQueue => "MSSTORE_REFUND_QUEUE_BASE_URL",
        }
    }

    /// Microsoft's base URL.
    pub fn default_url(self) -> &'static str {
        match self {
            Host::BusinessStore => "https://bspmts.mp.microsoft.com",
            Host::Collections => "https://collections.mp.microsoft.com",
            Host::Purchase => "https://purchase.mp.microsoft.com",
            Host::RefundQueue => "https://queue.core.windows.net",
        }
    }

    /// What `--help` says of its base URL setting (no final period, as clap's derive writes
    /// the other flags).
    pub fn help(self) -> &'static str {
        match self {
            Host::BusinessStore => {
                "Base URL of the Store for Business API (offline licenses); any base URL, \
                 http:// included"
            }
            Host::Collections => {
                "Base URL of the Store collections API: collections keys, queries and consumables"
            }
            Host::Purchase => {
                "Base URL of the Store purchase API: purchase keys, grants, subscriptions, orders and \
                 the refund queue's SAS"
            }
            Host::RefundQueue => {
                "The one base URL (besides https://*.queue.core.windows.net) that a refund queue URL \
                 handed out by the Store may start with: the emulator's, in sandbox and tests"
            }
        }
    }

    /// The kind of Store ID key its calls take, as messages name it.
    pub fn key_kind(self) -> &'static str {
        match self {
            Host::BusinessStore => "Store for Business (no Store ID)",
            Host::Collections => "collections",
            Host::Purchase => "purchase",
            Host::RefundQueue => "no Store ID (a SAS)",
        }
    }

    /// Every host, in declaration order.
    pub fn all() -> impl Iterator<Item = Host> {
        (0..<Host as enum_map::Enum>::LENGTH).map(<Host as enum_map::Enum>::from_usize)
    }
}
