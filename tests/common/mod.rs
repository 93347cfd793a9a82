//! The one test fixture, split by concern: the real facade on `127.0.0.1:0`, called through
//! the generated tonic clients, with real HTTP upstreams (wiremock or the emulator) on loopback;
//! and [`operations::OPERATIONS`], the table of every Store operation that the error-mapping,
//! sandbox, resilience and service suites iterate.
#![allow(dead_code, unused_imports)]

pub mod emulator;
pub mod fixtures;
pub mod harness;
pub mod logs;
pub mod metrics;
pub mod operations;
pub mod process;
pub mod raw;
pub mod status;
pub mod tools;

pub use emulator::*;
pub use fixtures::*;
pub use harness::*;
pub use logs::*;
pub use metrics::*;
pub use operations::*;
pub use process::*;
pub use raw::*;
pub use status::*;

/// The tenant the facade is configured for.
pub const TENANT: &str = "contoso.onmicrosoft.com";
/// The facade's client id.
pub const CLIENT_ID: &str = "6f1b2c3d-0000-4000-8000-00000000c11e";
/// The facade's client secret: must never appear in a log line or an error.
pub const CLIENT_SECRET: &str = "client-secret-Zq8~never-log-me";
/// The access token the token endpoint hands out (with a counter suffix).
pub const TOKEN_PREFIX: &str = "eyJ0eXAiOiJKV1QifQ.access-token-never-log-me";
/// The audience of collections keys.
pub const COLLECTIONS_AUD: &str = "https://collections.mp.microsoft.com/v6.0/keys";
/// The audience of purchase keys.
pub const PURCHASE_AUD: &str = "https://purchase.mp.microsoft.com/v6.0/keys";
