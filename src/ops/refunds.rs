//! What the two refund operations share ("clawback v2", `store-services-apis.md` 2.10 and
//! 2.11): the SAS of the tenant's refund queue, fetched from the purchase host with the
//! facade's own token and kept (`auth::SasCache`); the queue's two requests, made through the
//! same exchange as any Store request (retries, circuit and metrics of the `refund_queue`
//! host, redaction of the SAS); a SAS the queue refuses (403) is dropped and the request made
//! once more with a fresh one; and the opaque `ack_id`.

use std::future::Future;
use std::sync::Arc;
use std::time::SystemTime;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::Value;

use crate::api::validation::Tenants;
use crate::api::{exchange, Attempts, Backends, Credential, Outcome, StoreOperation, Token};
use crate::auth::{Sas, TenantId};
use crate::error::{ApiError, ErrorMapping, Retries};
use crate::telemetry::otel::Route;
use crate::upstream::queue::{
    is_message_id, is_pop_receipt, parse_messages, QueueMessage, QueueUrl,
};
use crate::upstream::{Host, UpstreamError, UpstreamRequest};

/// `GET {purchase}/v8.0/b2b/clawback/sastoken`: the refund queue's URL with a SAS. Not an
/// RPC of its own: a step of both refund operations, declared as a Store operation so that it
/// is exchanged like every other (token, 401 renewal, retries, mapping).
pub struct ClawbackSas;

/// The SAS answer: the queue URL (checked against the URL rule by [`sas`], which knows the
/// configuration) and its expiry. No `Debug`: the URL carries the SAS.
pub struct SasAnswer {
    uri: String,
    expires_on: SystemTime,
}

impl StoreOperation for ClawbackSas {
    type Request = TenantId;
    type Response = ();
    type Prepared = TenantId;
    type Answer = SasAnswer;

    const ROUTE: &'static Route = &Route {
        name: "GET /v8.0/b2b/clawback/sastoken",
        method: http::Method::GET,
        template: "/v8.0/b2b/clawback/sastoken",
    };
    const ERRORS: &'static ErrorMapping = &ErrorMapping {
        fields: &[],
        overrides: &[],
        retries: Retries::TransientAndLostAnswers,
    };
    const EXPECTED: &'static str = "a JSON object with a uri and an expiresOn";

    fn validate(tenant: TenantId, _: &Tenants) -> Result<TenantId, ApiError> {
        Ok(tenant)
    }

    fn host(_: &TenantId) -> Host {
        Host::Purchase
    }

    fn credential(tenant: &TenantId) -> Credential<'_> {
        Credential::Facade {
            tenant: Some(tenant),
        }
    }

    fn request(_: &TenantId, token: &Token<'_>) -> Result<UpstreamRequest, ApiError> {
        Ok(
            UpstreamRequest::new(Self::ROUTE, Self::ROUTE.template.to_owned())
                .authorization(token.bearer()?),
        )
    }

    fn secrets(_: &TenantId) -> impl Iterator<Item = &str> {
        std::iter::empty()
    }

    /// Names are matched without regard to case, as Microsoft's library reads them.
    fn parse(body: &[u8]) -> Option<SasAnswer> {
        let json: Value = serde_json::from_slice(body).ok()?;
        let field = |name: &str| {
            json.as_object()?
                .iter()
                .find(|(key, _)| key.eq_ignore_ascii_case(name))
                .and_then(|(_, value)| value.as_str())
        };
        Some(SasAnswer {
            uri: field("uri")?.to_owned(),
            expires_on: expires_on(field("expiresOn")?)?,
        })
    }

    fn respond(_: SasAnswer, _: &TenantId) {}
}

/// `expiresOn` as the Store writes it: ISO 8601, seconds optional (the documented example is
/// `2022-12-09T02:13Z`).
pub fn expires_on(text: &str) -> Option<SystemTime> {
    let text = text.trim();
    let at = super::store_json::timestamp(text).or_else(|| {
        // Insert `:00` seconds after `THH:MM` when the time has no seconds.
        let (date, time) = text.split_once('T')?;
        let zone = time.find(['Z', 'z', '+', '-']).unwrap_or(time.len());
        let (clock, offset) = time.split_at(zone);
        (clock.len() == 5 && clock.as_bytes()[2] == b':')
            .then(|| format!("{date}T{clock}:00{offset}"))
            .and_then(|text| super::store_json::timestamp(&text))
    })?;
    SystemTime::try_from(at).ok()
}

/// A new SAS of `tenant`'s refund queue from the Store, whose URL the facade may follow
/// (contract, section 7), else `UPSTREAM_MALFORMED_RESPONSE`.
async fn fetch_sas(
    backends: &Backends,
    tenant: &TenantId,
    attempts: &Attempts,
) -> Result<Sas, ApiError> {
    let answer = exchange::<ClawbackSas>(backends, tenant, attempts).await?;
    let allowed = backends.store.host(Host::RefundQueue).url();
    match QueueUrl::allowed(&answer.value.uri, allowed) {
        Some(queue) => Ok(Sas::new(queue, answer.value.expires_on)),
        None => {
            tracing::warn!(
                "the Store's refund queue URL is not https to *.queue.core.windows.net \
                 nor under --refund-queue-base-url: not followed"
            );
            Err(ApiError::upstream(
                ClawbackSas::ERRORS,
                UpstreamError::Malformed {
                    host: backends.store.host(Host::Purchase).name().clone(),
                    http_status: answer.http_status,
                    ids: Box::new(answer.ids),
                    expected: "a SAS answer whose uri is an Azure Storage queue \
                               (https, *.queue.core.windows.net)",
                },
            ))
        }
    }
}

/// The SAS of `tenant`'s refund queue: the kept one, or a new one.
pub async fn sas(
    backends: &Backends,
    tenant: &TenantId,
    attempts: &Attempts,
) -> Result<Arc<Sas>, ApiError> {
    backends
        .refund_sas
        .get_or_fetch(tenant, fetch_sas(backends, tenant, attempts))
        .await
}

/// After the queue refused `refused` (403: expired early, or its key rotated): the SAS to try
/// once more with, if any (`auth::SasCache::after_refusal`: a new one at most once a minute).
pub async fn sas_after_refusal(
    backends: &Backends,
    tenant: &TenantId,
    attempts: &Attempts,
    refused: &Arc<Sas>,
) -> Result<Option<Arc<Sas>>, ApiError> {
    attempts.record_upstream_status(Some(403));
    backends
        .refund_sas
        .after_refusal(tenant, refused, fetch_sas(backends, tenant, attempts))
        .await
}

/// Runs `call` against `tenant`'s refund queue; when the queue refuses the SAS (403), `call`
/// is made once more with the SAS [`sas_after_refusal`] gives, if any.
pub async fn with_queue<T, Fut>(
    backends: &Backends,
    tenant: &TenantId,
    attempts: &Attempts,
    call: impl Fn(QueueUrl) -> Fut,
) -> Outcome<T>
where
    Fut: Future<Output = Outcome<T>>,
{
    let current = sas(backends, tenant, attempts).await?;
    match call(current.queue.clone()).await {
        Err(error) if error.upstream_http_status() == Some(403) => {
            match sas_after_refusal(backends, tenant, attempts, &current).await? {
                Some(fresh) => call(fresh.queue.clone()).await,
                None => Err(error),
            }
        }
        other => other,
    }
}

/// A pull of up to `count` messages from `queue` (no `Debug`: the URL carries the SAS).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct QueueGet {
    pub queue: QueueUrl,
    pub count: u8,
}

impl StoreOperation for QueueGet {
    type Request = QueueGet;
    type Response = ();
    type Prepared = QueueGet;
    type Answer = Vec<QueueMessage>;

    const ROUTE: &'static Route = &Route {
        name: "GET {queue}/messages",
        method: http::Method::GET,
        template: "{queue}/messages",
    };
    const ERRORS: &'static ErrorMapping = &ErrorMapping {
        fields: &[("numofmessages", "max_events")],
        overrides: &[],
        // A pull takes messages out of sight: sent again only when the queue certainly did
        // not act (a lost answer's messages come back after their 30 seconds).
        retries: Retries::NotProcessed,
    };
    const EXPECTED: &'static str = "an Azure Storage QueueMessagesList";

    fn validate(get: QueueGet, _: &Tenants) -> Result<QueueGet, ApiError> {
        Ok(get)
    }

    fn host(_: &QueueGet) -> Host {
        Host::RefundQueue
    }

    fn credential(_: &QueueGet) -> Credential<'_> {
        Credential::InUrl
    }

    fn request(get: &QueueGet, _: &Token<'_>) -> Result<UpstreamRequest, ApiError> {
        Ok(UpstreamRequest::to_url(
            Self::ROUTE,
            get.queue.get_messages(get.count),
        ))
    }

    fn secrets(get: &QueueGet) -> impl Iterator<Item = &str> {
        get.queue.secrets()
    }

    fn parse(body: &[u8]) -> Option<Vec<QueueMessage>> {
        parse_messages(body)
    }

    fn respond(_: Vec<QueueMessage>, _: &QueueGet) {}
}

/// The removal of one delivered message (no `Debug`: the URL carries the SAS).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct QueueDelete {
    pub queue: QueueUrl,
    pub ack: AckId,
}

impl StoreOperation for QueueDelete {
    type Request = QueueDelete;
    type Response = ();
    type Prepared = QueueDelete;
    type Answer = ();

    const ROUTE: &'static Route = &Route {
        name: "DELETE {queue}/messages/{messageid}",
        method: http::Method::DELETE,
        template: "{queue}/messages/{messageid}",
    };
    const ERRORS: &'static ErrorMapping = &ErrorMapping {
        fields: &[("popreceipt", "ack_ids")],
        overrides: &[],
        // A delete made twice answers 404 the second time, which would read as expired.
        retries: Retries::NotProcessed,
    };
    const EXPECTED: &'static str = "an empty answer";

    fn validate(delete: QueueDelete, _: &Tenants) -> Result<QueueDelete, ApiError> {
        Ok(delete)
    }

    fn host(_: &QueueDelete) -> Host {
        Host::RefundQueue
    }

    fn credential(_: &QueueDelete) -> Credential<'_> {
        Credential::InUrl
    }

    fn request(delete: &QueueDelete, _: &Token<'_>) -> Result<UpstreamRequest, ApiError> {
        let url = delete
            .queue
            .delete_message(&delete.ack.message_id, &delete.ack.pop_receipt);
        Ok(UpstreamRequest::to_url(Self::ROUTE, url))
    }

    fn secrets(delete: &QueueDelete) -> impl Iterator<Item = &str> {
        delete.queue.secrets()
    }

    fn parse(_: &[u8]) -> Option<()> {
        Some(())
    }

    fn respond((): (), _: &QueueDelete) {}
}

/// What an `ack_id` stands for: one delivery of one message.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct AckId {
    /// The `ack_id` as the caller sent it.
    pub text: String,
    pub message_id: String,
    pub pop_receipt: String,
}

/// Version tag of the `ack_id` encoding.
const ACK_VERSION: &str = "q1";

impl AckId {
    /// The `ack_id` of `message`'s delivery.
    pub fn encode(message: &QueueMessage) -> String {
        let text = format!(
            "{ACK_VERSION}\n{}\n{}",
            message.message_id, message.pop_receipt
        );
        URL_SAFE_NO_PAD.encode(text)
    }

    /// Reads an `ack_id` that [`AckId::encode`] made; `None` for anything else.
    pub fn decode(text: &str) -> Option<Self> {
        let bytes = URL_SAFE_NO_PAD.decode(text.trim()).ok()?;
        let decoded = String::from_utf8(bytes).ok()?;
        let mut parts = decoded.split('\n');
        let (Some(ACK_VERSION), Some(message_id), Some(pop_receipt), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return None;
        };
        (is_message_id(message_id) && is_pop_receipt(pop_receipt)).then(|| Self {
            text: text.to_owned(),
            message_id: message_id.to_owned(),
            pop_receipt: pop_receipt.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn expires_on_reads_with_or_without_seconds() {
        let at = |text| {
            expires_on(text).map(|t| t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs())
        };
        assert_eq!(at("2022-12-09T02:13Z"), Some(1_670_551_980));
        assert_eq!(at("2022-12-09T02:13:00Z"), Some(1_670_551_980));
        assert_eq!(at("2022-12-09T02:13:00.1234567Z"), Some(1_670_551_980));
        assert_eq!(at("2022-12-09T03:13+01:00"), Some(1_670_551_980));
        assert_eq!(at("2022-12-09T02:13"), Some(1_670_551_980));
        for bad in ["", "soon", "2022-12-09T2:13Z", "2022-12-09T02-13Z"] {
            assert_eq!(at(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_sas_answer_is_read_whatever_the_case_of_its_names() {
        let answer = ClawbackSas::parse(
            br#"{"ExpiresOn":"2022-12-09T02:13Z","URI":"https://a.queue.core.windows.net/q?sig=s"}"#,
        )
        .expect("a SAS answer");
        assert_eq!(answer.uri, "https://a.queue.core.windows.net/q?sig=s");
        assert!(answer.expires_on > SystemTime::UNIX_EPOCH + Duration::from_secs(1_600_000_000));
        for bad in [
            &br#"{"uri":"https://a.queue.core.windows.net/q"}"#[..],
            br#"{"expiresOn":"2022-12-09T02:13Z"}"#,
            br#"{"expiresOn":"later","uri":"u"}"#,
            br#"{"expiresOn":1670551980,"uri":"u"}"#,
            b"[]",
            b"<html/>",
        ] {
            assert!(
                ClawbackSas::parse(bad).is_none(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    const ID: &str = "5974b586-0df3-4e2d-ad0c-18e3892bfca2";

    #[test]
    fn ack_ids_round_trip_and_nothing_else_reads_as_one() {
        let message = QueueMessage {
            message_id: "5974b586-0df3-4e2d-ad0c-18e3892bfca2".into(),
            pop_receipt: "AgAAAAMAAAAAAAAA+/==".into(),
            ..QueueMessage::default()
        };
        let text = AckId::encode(&message);
        let ack = AckId::decode(&text).expect("its own ack id");
        assert_eq!(ack.message_id, message.message_id);
        assert_eq!(ack.pop_receipt, message.pop_receipt);
        assert_eq!(ack.text, text);
        for bad in [
            String::new(),
            "not base64!".into(),
            URL_SAFE_NO_PAD.encode(format!("q1\n{ID}")),
            URL_SAFE_NO_PAD.encode(format!("q2\n{ID}\nr")),
            URL_SAFE_NO_PAD.encode(format!("q1\n{ID}\nr\nx")),
            URL_SAFE_NO_PAD.encode("q1\n\nr"),
            URL_SAFE_NO_PAD.encode(format!("q1\n{ID}\nr\x07")),
            // Path segments that would name the whole queue in a DELETE.
            URL_SAFE_NO_PAD.encode("q1\n.\nr"),
            URL_SAFE_NO_PAD.encode("q1\n..\nr"),
            URL_SAFE_NO_PAD.encode("q1\nm\nr"),
            URL_SAFE_NO_PAD.encode([0xff, 0xfe]),
        ] {
            assert!(AckId::decode(&bad).is_none(), "{bad:?}");
        }
    }
}
