//! `StoreKeys/RenewKey` -> `POST /v6.0/b2b/keys/renew` on the collections or purchase host,
//! whichever the key belongs to.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tonic::Code;

use crate::api::validation::{Checks, Tenants};
use crate::api::{Credential, StoreOperation, Token};
use crate::auth::{KeyClaims, KeyDecodeError};
use crate::error::{ApiError, ErrorMapping, Retries};
use crate::proto::msstore::v1 as pb;
use crate::telemetry::otel::Route;
use crate::upstream::{Host, UpstreamRequest};

/// Microsoft recommends renewing Store keys every 14 days (signing certificates rotate).
const RENEW_AFTER: Duration = Duration::from_secs(14 * 24 * 3600);

/// Renews a Microsoft Store ID key.
#[derive(Debug)]
pub struct RenewKey;

/// A validated renewal: the host that renews the key, the key, and the caller's ticket
/// (empty: the facade's own token). No `Debug`: it holds a key and a ticket.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Renewal {
    host: Host,
    key: String,
    service_ticket: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RenewBody<'a> {
    service_ticket: &'a str,
    key: &'a str,
}

/// The renew answer: the new key (no `Debug`).
#[derive(Deserialize)]
pub struct RenewAnswer {
    key: String,
}

impl StoreOperation for RenewKey {
    type Request = pb::RenewKeyRequest;
    type Response = pb::RenewKeyResponse;
    type Prepared = Renewal;
    type Answer = RenewAnswer;

    const ROUTE: &'static Route = &Route {
        name: "POST /v6.0/b2b/keys/renew",
        method: http::Method::POST,
        template: "/v6.0/b2b/keys/renew",
    };
    const ERRORS: &'static ErrorMapping = &ErrorMapping {
        fields: &[("serviceTicket", "service_ticket"), ("key", "key")],
        overrides: &[(409, Code::Aborted)],
        retries: Retries::Transient,
    };
    const EXPECTED: &'static str = "a JSON object with a key";

    /// A renewal acts for no tenant: the facade's own token is the configured tenant's.
    fn validate(request: Self::Request, _: &Tenants) -> Result<Renewal, ApiError> {
        let mut checks = Checks::default();
        checks.credential("key", &request.key, true);
        checks.credential("service_ticket", &request.service_ticket, false);
        let declared = match pb::KeyType::try_from(request.key_type) {
            Ok(pb::KeyType::Unspecified) => None,
            Ok(pb::KeyType::Collections) => Some(Host::Collections),
            Ok(pb::KeyType::Purchase) => Some(Host::Purchase),
            Err(_) => {
                checks.violation("key_type", format!("{} is not a KeyType", request.key_type));
                None
            }
        };
        checks.finish()?;
        Ok(Renewal {
            host: key_host(&request.key, declared)?,
            key: request.key,
            service_ticket: request.service_ticket,
        })
    }

    fn host(renewal: &Renewal) -> Host {
        renewal.host
    }

    fn credential(renewal: &Renewal) -> Credential<'_> {
        if renewal.service_ticket.is_empty() {
            Credential::Facade { tenant: None }
        } else {
            Credential::Caller(&renewal.service_ticket)
        }
    }

    /// The ticket travels in the body (`serviceTicket`), not in an `Authorization` header.
    fn request(renewal: &Renewal, token: &Token<'_>) -> Result<UpstreamRequest, ApiError> {
        let body = RenewBody {
            service_ticket: token.text(),
            key: &renewal.key,
        };
        Ok(UpstreamRequest::new(Self::ROUTE, Self::ROUTE.template.to_owned()).json(&body))
    }

    /// The key being renewed (the ticket is the token).
    fn secrets(renewal: &Renewal) -> impl Iterator<Item = &str> {
        std::iter::once(renewal.key.as_str())
    }

    fn parse(body: &[u8]) -> Option<RenewAnswer> {
        serde_json::from_slice::<RenewAnswer>(body)
            .ok()
            .filter(|answer| !answer.key.is_empty())
    }

    fn respond(answer: RenewAnswer, renewal: &Renewal) -> pb::RenewKeyResponse {
        let mut response = pb::RenewKeyResponse {
            key_type: match renewal.host {
                Host::Collections => pb::KeyType::Collections,
                Host::Purchase => pb::KeyType::Purchase,
                Host::BusinessStore | Host::RefundQueue => pb::KeyType::Unspecified,
            } as i32,
            ..Default::default()
        };
        if let Ok(claims) = KeyClaims::decode(&answer.key) {
            response.expires_at = claims.exp.map(timestamp);
            response.refresh_after = claims
                .iat
                .map(|iat| timestamp(iat.saturating_add(RENEW_AFTER.as_secs() as i64)));
        }
        response.key = answer.key;
        response
    }
}

/// `seconds` as a valid `google.protobuf.Timestamp`: a key claiming a date outside its range
/// (year 1 to 9999) is answered with the nearest end of it.
fn timestamp(seconds: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: KeyClaims::clamp_seconds(seconds),
        nanos: 0,
    }
}

/// The host that renews `key`: the declared type when given (and not contradicted by the
/// key's `aud`), else the one its `aud` names.
fn key_host(key: &str, declared: Option<Host>) -> Result<Host, ApiError> {
    let decoded = KeyClaims::decode(key).map(|claims| claims.host());
    match (declared, decoded) {
        (None, Ok(Ok(host))) => Ok(host),
        (None, Ok(Err(error)) | Err(error)) => Err(ApiError::invalid(
            match error {
                KeyDecodeError::NotAJwt => "KEY_NOT_DECODABLE",
                KeyDecodeError::UnknownAudience => "KEY_AUDIENCE_UNKNOWN",
            },
            "key",
            format!("{error}; the key type cannot be inferred"),
        )),
        (Some(declared), Ok(Ok(host))) if declared != host => Err(ApiError::invalid(
            "KEY_TYPE_MISMATCH",
            "key_type",
            format!("is {declared:?} but the key's aud claim names {host:?}"),
        )),
        (Some(declared), Ok(Err(KeyDecodeError::UnknownAudience))) => Err(ApiError::invalid(
            "KEY_TYPE_MISMATCH",
            "key_type",
            format!("is {declared:?} but the key's aud claim names neither Store key service"),
        )),
        (Some(declared), _) => Ok(declared),
    }
}
