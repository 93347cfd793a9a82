//! The flags of the emulator's own commands: `msstore-facade emulator` and
//! `msstore-facade sandbox-key`.

use std::net::SocketAddr;

use clap::{Args, ValueEnum};
use url::Url;

use super::{Magic, DEFAULT_BASE_URL, DEFAULT_LISTEN, SANDBOX_CLIENT_ID, SANDBOX_USER_ID};
use crate::upstream::Host;

/// Flags of `msstore-facade emulator`.
#[derive(Debug, Args)]
pub struct EmulatorArgs {
    /// Address the emulator listens on (plain HTTP/1.1; keep it on loopback).
    #[arg(long, env = "MSSTORE_EMULATOR_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
}

/// Flags of `msstore-facade sandbox-key`.
#[derive(Debug, Args)]
pub struct SandboxKeyArgs {
    /// Which service the key belongs to (its `aud` claim).
    #[arg(long = "type", value_enum, default_value_t = SandboxKeyType::Collections)]
    pub key_type: SandboxKeyType,

    /// A magic id for the key's payload claim: renewing the key then fails on purpose
    /// (e.g. MAGIC-503; the README lists them all).
    #[arg(long, value_parser = parse_magic)]
    pub magic: Option<String>,

    /// The key's clientId claim; anything but the sandbox client id makes the emulator answer
    /// InconsistentClientId.
    #[arg(long, default_value = SANDBOX_CLIENT_ID)]
    pub client_id: String,

    /// The key's userId claim: the publisher user id a client app would pass when it asks the
    /// Store for the key.
    #[arg(long = "user", value_name = "ID", default_value = SANDBOX_USER_ID)]
    pub user_id: String,

    /// The emulator named in the key's refreshUri claim (informational: never called).
    #[arg(long, default_value = DEFAULT_BASE_URL)]
    pub emulator_url: Url,
}

/// The service a sandbox key belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SandboxKeyType {
    /// A collections key.
    Collections,
    /// A purchase key.
    Purchase,
}

impl From<SandboxKeyType> for Host {
    fn from(key_type: SandboxKeyType) -> Self {
        match key_type {
            SandboxKeyType::Collections => Host::Collections,
            SandboxKeyType::Purchase => Host::Purchase,
        }
    }
}

fn parse_magic(value: &str) -> Result<String, String> {
    Magic::parse(value)
        .map(|_| value.to_owned())
        .ok_or_else(|| format!("{value:?} is not a magic id (MAGIC-503, MAGIC-SLOW-2000, ...)"))
}
