//! Clawback v2 SAS token, `GET /purchase/v8.0/b2b/clawback/sastoken`
//! (store-services-apis.md 2.10), and the shared access signatures that open the refund queue
//! ([`super::queue`]).
//!
//! The request carries `Authorization: Bearer <service token>`, checked as every Store
//! endpoint checks it ([`bearer_ticket`]: 401 `PartnerAadTicketRequired` without one,
//! `AuthenticationTokenInvalid` for a bad, expired or foreign-audience one); no body, no user
//! key, and it does **not** count in the rate limit ([`super::fgrl`]). A fault set with
//! `POST /emulator/refund-queue/faults` (operation `sastoken`) answers first.
//!
//! Answer 200 (with the Store's `MS-*` correlation headers):
//! `{"expiresOn": "2022-12-09T08:13Z", "uri": "<base>/queue/<queue>?sv=2021-08-06&se=2022-12-09T08%3A13%3A00Z&sp=rp&sig=<signature>"}`:
//! - `<queue>` is `refunds-<the token's appid, lower case>` (see [`queue_name`]), one queue per
//!   application, holding the refund events of all its users;
//! - the SAS expires at the whole minute at or before six hours from now; `expiresOn` is that
//!   minute without seconds (as documented), `se` the same time with seconds, RFC 3339 UTC,
//!   percent-encoded;
//! - `sp=rp`: read (peek) and process (get, delete);
//! - `sig` is base64 (standard alphabet, 44 characters, percent-encoded in the URI like every
//!   query value: `+` `%2B`, `/` `%2F`, `=` `%3D`) of 32 bytes derived from a secret drawn when
//!   the emulator starts, the key generation, the queue name, `se` and `sp`. Rotating the key
//!   (`POST /emulator/refund-queue/rotate-key`) moves to the next generation, so every SAS
//!   issued before answers 403 from then on.

use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde_json::json;

use super::clock::{now, parse_rfc3339, rfc3339, rfc3339_minutes};
use super::connection::ConnectionControl;
use super::entra::bearer_ticket;
use super::queue::Operation;
use super::{host_prefix, store_answer, EmulatorState, REFUND_QUEUE_PREFIX};
use crate::upstream::Host;

/// `sv`: the Azure Storage service version a SAS is for (and the queue's `x-ms-version`).
pub(super) const SAS_VERSION: &str = "2021-08-06";
/// `sp` of every issued SAS: read and process.
pub(super) const SAS_PERMISSIONS: &str = "rp";
/// What a query value keeps unencoded: RFC 3986's unreserved characters.
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');
/// How long an issued SAS is valid, at most.
pub(super) const SAS_LIFETIME_SECONDS: i64 = 6 * 3600;

/// `GET /purchase/v8.0/b2b/clawback/sastoken`.
pub(super) fn routes() -> axum::Router<EmulatorState> {
    axum::Router::new().route(
        &format!("{}/v8.0/b2b/clawback/sastoken", host_prefix(Host::Purchase)),
        axum::routing::get(sas_token),
    )
}

/// The refund queue of the application `appid`: `refunds-` and the id in lower case, anything
/// but letters, digits and single hyphens made a hyphen, at most 63 characters (Azure's
/// rule for queue names).
pub(super) fn queue_name(appid: &str) -> String {
    let mut name = String::from("refunds-");
    for c in appid.chars() {
        let c = c.to_ascii_lowercase();
        let c = if c.is_ascii_lowercase() || c.is_ascii_digit() {
            c
        } else {
            '-'
        };
        if !(c == '-' && name.ends_with('-')) {
            name.push(c);
        }
    }
    name.truncate(63);
    while name.ends_with('-') {
        name.pop();
    }
    name
}

/// What a queue request needs a SAS to allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Access {
    /// Peek: `r`.
    Read,
    /// Get and delete: `p`.
    Process,
}

impl Access {
    fn letter(self) -> char {
        match self {
            Self::Read => 'r',
            Self::Process => 'p',
        }
    }
}

/// A query string, decoded (`+` is a space, as in any form-encoded query), names compared
/// without regard to ASCII case, the first of repeated names winning.
#[derive(Debug, Clone, Default)]
pub(super) struct QueryParams(Vec<(String, String)>);

impl QueryParams {
    pub(super) fn parse(query: Option<&str>) -> Self {
        let pairs = form_urlencoded::parse(query.unwrap_or_default().as_bytes());
        Self(pairs.into_owned().collect())
    }

    pub(super) fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// An issued SAS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct IssuedSas {
    /// `expiresOn`: minutes, no seconds.
    pub(super) expires_on: String,
    /// The query string: `sv=...&se=...&sp=rp&sig=...`, percent-encoded.
    pub(super) query: String,
}

/// The emulator's signing key: a secret drawn at start and a generation that rotation bumps.
#[derive(Debug)]
pub(super) struct SasKeys {
    hasher: RandomState,
    secret: u128,
    generation: AtomicU64,
}

impl Default for SasKeys {
    fn default() -> Self {
        Self {
            hasher: RandomState::new(),
            secret: fastrand::u128(..),
            generation: AtomicU64::new(1),
        }
    }
}

impl SasKeys {
    /// `sig` for `queue`, `se` and `sp` under key `generation`: base64 of 32 bytes.
    fn signature(&self, generation: u64, queue: &str, se: &str, sp: &str) -> String {
        let bytes: Vec<u8> = (0u8..4)
            .flat_map(|lane| {
                self.hasher
                    .hash_one((self.secret, generation, lane, queue, se, sp))
                    .to_be_bytes()
            })
            .collect();
        STANDARD.encode(bytes)
    }

    /// Every SAS signed so far stops working.
    pub(super) fn rotate(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// A SAS for `queue` issued at `now` (seconds).
    pub(super) fn issue(&self, queue: &str, now: i64) -> IssuedSas {
        let expiry = (now + SAS_LIFETIME_SECONDS).div_euclid(60) * 60;
        let se = rfc3339(expiry);
        let sig = self.signature(
            self.generation.load(Ordering::SeqCst),
            queue,
            &se,
            SAS_PERMISSIONS,
        );
        let encode = |text: &str| utf8_percent_encode(text, QUERY_VALUE).to_string();
        IssuedSas {
            expires_on: rfc3339_minutes(expiry),
            query: format!(
                "sv={SAS_VERSION}&se={}&sp={SAS_PERMISSIONS}&sig={}",
                encode(&se),
                encode(&sig)
            ),
        }
    }

    /// Whether `params` carry a SAS of the current key that allows `access` to `queue` at
    /// `now` (seconds); else the `AuthenticationErrorDetail` of the 403 (never the `sig`).
    pub(super) fn check(
        &self,
        queue: &str,
        params: &QueryParams,
        access: Access,
        now: i64,
    ) -> Result<(), &'static str> {
        let (Some(_), Some(se), Some(sp), Some(sig)) = (
            params.get("sv"),
            params.get("se"),
            params.get("sp"),
            params.get("sig"),
        ) else {
            return Err("sv, se, sp and sig are all required in a SAS.");
        };
        let expected = self.signature(self.generation.load(Ordering::SeqCst), queue, se, sp);
        if !same_text(sig, &expected) {
            return Err("Signature did not match.");
        }
        match parse_rfc3339(se) {
            Some(expiry) if expiry > now => {}
            _ => return Err("Signed expiry time has passed."),
        }
        if !sp.contains(access.letter()) {
            return Err("The SAS does not grant the permission this operation needs.");
        }
        Ok(())
    }
}

/// Compares without stopping at the first difference.
fn same_text(given: &str, expected: &str) -> bool {
    given.len() == expected.len()
        && given
            .bytes()
            .zip(expected.bytes())
            .fold(0u8, |diff, (a, b)| diff | (a ^ b))
            == 0
}

/// `GET /purchase/v8.0/b2b/clawback/sastoken`.
async fn sas_token(
    State(state): State<EmulatorState>,
    ConnectInfo(connection): ConnectInfo<ConnectionControl>,
    headers: HeaderMap,
) -> Response {
    if let Some(answer) = state
        .refund_queue
        .fault_answer(Operation::SasToken, &headers, &connection)
        .await
    {
        return answer;
    }
    let ticket = match bearer_ticket(&headers) {
        Ok(ticket) => ticket,
        Err(refusal) => return *refusal,
    };
    let queue = queue_name(&ticket.appid);
    state.refund_queue.queues.create(&queue);
    let sas = state.refund_queue.keys.issue(&queue, now());
    let base = state.refresh_base.as_str().trim_end_matches('/');
    let answer = json!({
        "expiresOn": sas.expires_on,
        "uri": format!("{base}{REFUND_QUEUE_PREFIX}/{queue}?{}", sas.query),
    });
    store_answer::json_answer(StatusCode::OK, &headers, &answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    const AT: i64 = 1_790_000_030;

    fn params(query: &str) -> QueryParams {
        QueryParams::parse(Some(query))
    }

    #[test]
    fn queue_names_follow_azures_rule() {
        assert_eq!(
            queue_name("5A4DB0C0-c11e-4e47-8000-000000000001"),
            "refunds-5a4db0c0-c11e-4e47-8000-000000000001"
        );
        assert_eq!(queue_name("a__b--C"), "refunds-a-b-c");
        assert_eq!(queue_name(&"x".repeat(100)).len(), 63);
        assert_eq!(queue_name("-"), "refunds");
    }

    #[test]
    fn issued_sas_open_their_queue_until_expiry_or_rotation() {
        let keys = SasKeys::default();
        let sas = keys.issue("refunds-a", AT);
        assert_eq!(sas.expires_on, rfc3339_minutes(AT + SAS_LIFETIME_SECONDS));
        assert_eq!(sas.expires_on.len(), "2022-12-09T02:13Z".len());
        assert!(sas.query.starts_with("sv=2021-08-06&se="), "{}", sas.query);
        assert!(sas.query.contains("%3A00Z&sp=rp&sig="), "{}", sas.query);
        let given = params(&sas.query);
        assert_eq!(given.get("SIG").map(str::len), Some(44));
        assert_eq!(keys.check("refunds-a", &given, Access::Read, AT), Ok(()));
        assert_eq!(keys.check("refunds-a", &given, Access::Process, AT), Ok(()));
        let expiry = AT + SAS_LIFETIME_SECONDS;
        assert!(keys
            .check("refunds-a", &given, Access::Read, expiry)
            .is_err());
        assert!(keys.check("refunds-b", &given, Access::Read, AT).is_err());
        let other_emulator = SasKeys::default();
        assert!(other_emulator
            .check("refunds-a", &given, Access::Read, AT)
            .is_err());
        keys.rotate();
        assert!(keys.check("refunds-a", &given, Access::Read, AT).is_err());
        let fresh = params(&keys.issue("refunds-a", AT).query);
        assert_eq!(keys.check("refunds-a", &fresh, Access::Read, AT), Ok(()));
    }

    #[test]
    fn a_sas_must_be_whole_unaltered_and_grant_the_access() {
        let keys = SasKeys::default();
        let sas = keys.issue("refunds-a", AT).query;
        let read_only = sas.replace("sp=rp", "sp=r");
        assert!(keys
            .check("refunds-a", &params(&read_only), Access::Read, AT)
            .is_err());
        for part in ["sv=", "se=", "sp=", "sig="] {
            let without: Vec<&str> = sas.split('&').filter(|p| !p.starts_with(part)).collect();
            let refused = keys.check("refunds-a", &params(&without.join("&")), Access::Read, AT);
            assert!(refused.is_err(), "{part}");
        }
        let later = sas.replace("%3A00Z", "%3A01Z");
        assert!(keys
            .check("refunds-a", &params(&later), Access::Read, AT)
            .is_err());
        // A `+` left unencoded reads as a space, as with Azure.
        let sig = params(&sas).get("sig").unwrap().to_owned();
        let raw = sas.replace(&utf8_percent_encode(&sig, QUERY_VALUE).to_string(), &sig);
        if sig.contains('+') {
            assert!(keys
                .check("refunds-a", &params(&raw), Access::Read, AT)
                .is_err());
        }
    }
}
