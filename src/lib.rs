//! msstore-facade: a typed, observable gRPC facade in front of the Microsoft Store for Business
//! offline-license API and the Microsoft Store B2B key-renewal API.
//!
//! [`server::serve`] runs the whole service; `main.rs` only parses configuration around it.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]
#![warn(missing_docs)]

pub mod admin;
pub mod api;
pub mod auth;
pub mod config;
pub mod emulator;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod ops;
pub mod proto;
pub mod resilience;
pub mod server;
pub mod telemetry;
pub mod tls;
pub mod upstream;

pub use config::Settings;
pub use server::serve;
