//! `msstore.v1.StoreKeys`.

use std::time::Duration;

use tonic::{Request, Response, Status};

use super::call::{Attempts, CallContext};
use super::validation::{key_host, Checks};
use super::{with_own_token, Backends};
use crate::auth::KeyClaims;
use crate::error::{ApiError, Operation};
use crate::proto::msstore::v1 as pb;
use crate::resilience::retry::Target;
use crate::telemetry::metrics::Rpc;
use crate::upstream::{Answer, KeyHost};

/// Microsoft recommends renewing Store keys every 14 days (signing certificates rotate).
const RENEW_AFTER: Duration = Duration::from_secs(14 * 24 * 3600);

/// The `StoreKeys` service.
#[derive(Clone)]
pub struct KeysService {
    backends: Backends,
}

impl KeysService {
    /// A service over `backends`.
    pub fn new(backends: Backends) -> Self {
        Self { backends }
    }

    async fn renew(
        &self,
        request: pb::RenewKeyRequest,
        attempts: &Attempts,
    ) -> Result<Answer<pb::RenewKeyResponse>, ApiError> {
        let mut checks = Checks::default();
        checks.credential("key", &request.key, true);
        checks.credential("service_ticket", &request.service_ticket, false);
        let declared = match pb::KeyType::try_from(request.key_type) {
            Ok(pb::KeyType::Unspecified) => None,
            Ok(pb::KeyType::Collections) => Some(KeyHost::Collections),
            Ok(pb::KeyType::Purchase) => Some(KeyHost::Purchase),
            Err(_) => {
                checks.violation("key_type", format!("{} is not a KeyType", request.key_type));
                None
            }
        };
        checks.finish()?;
        let host = key_host(&request.key, declared)?;
        let (key, ticket, tokens) = (
            request.key.as_str(),
            request.service_ticket.as_str(),
            &self.backends.tokens,
        );
        let target = match host {
            KeyHost::Collections => Target::Collections,
            KeyHost::Purchase => Target::Purchase,
        };
        let answer = self
            .backends
            .retry
            .run(target, attempts.deadline(), || async move {
                if ticket.is_empty() {
                    with_own_token(tokens, None, attempts, |token| async move {
                        self.send(host, token.expose(), key, attempts).await
                    })
                    .await
                } else {
                    // A caller's own ticket is sent as is: a 401 is not retried with it.
                    self.send(host, ticket, key, attempts).await
                }
            })
            .await?;
        let mut response = pb::RenewKeyResponse {
            key_type: match host {
                KeyHost::Collections => pb::KeyType::Collections,
                KeyHost::Purchase => pb::KeyType::Purchase,
            } as i32,
            ..Default::default()
        };
        if let Ok(claims) = KeyClaims::decode(&answer.value) {
            response.expires_at = claims.exp.map(timestamp);
            response.refresh_after = claims
                .iat
                .map(|iat| timestamp(iat.saturating_add(RENEW_AFTER.as_secs() as i64)));
        }
        response.key = answer.value;
        Ok(Answer {
            value: response,
            ids: answer.ids,
            http_status: answer.http_status,
        })
    }

    async fn send(
        &self,
        host: KeyHost,
        ticket: &str,
        key: &str,
        attempts: &Attempts,
    ) -> Result<Answer<String>, ApiError> {
        self.backends
            .store
            .renew_key(host, ticket, key, &attempts.next_attempt())
            .await
            .map_err(|error| ApiError::upstream(Operation::RenewKey, error))
    }
}

fn timestamp(seconds: i64) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds, nanos: 0 }
}

#[tonic::async_trait]
impl pb::store_keys_server::StoreKeys for KeysService {
    async fn renew_key(
        &self,
        request: Request<pb::RenewKeyRequest>,
    ) -> Result<Response<pb::RenewKeyResponse>, Status> {
        let (call, request) =
            CallContext::begin(Rpc::RenewKey, request, self.backends.default_deadline);
        let work = self.renew(request, call.attempts());
        call.complete(&self.backends.limiter, &self.backends.metrics, work)
            .await
    }
}
