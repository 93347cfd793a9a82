//! `StoreRefunds/AcknowledgeRefundEvents` -> `DELETE {queue}/messages/{id}?popreceipt=...`
//! per event (`store-services-apis.md` 2.11), up to [`PARALLEL_DELETES`] at once. Each event is
//! acknowledged; or expired: the queue no longer holds that delivery (404 `MessageNotFound`:
//! removed already, or gone; 400 `PopReceiptMismatch`: pulled again since, its 30 seconds
//! having lapsed); or failed, when the queue refused that one delete. The call fails as a
//! whole only when the queue cannot be reached, throttles, is gone or refuses the facade
//! (contract, section 7).

use std::collections::HashSet;
use std::sync::Arc;

use futures_util::stream::{self, StreamExt, TryStreamExt};

use super::refunds::{self, AckId, QueueDelete};
use crate::api::validation::{acting_tenant, Checks, Tenants};
use crate::api::{exchange, Attempts, Backends, Operation, Outcome, Upstream};
use crate::auth::{Sas, TenantId};
use crate::error::ApiError;
use crate::proto::msstore::v1 as pb;
use crate::upstream::{Answer, UpstreamError, UpstreamIds};

/// Most ack ids one call takes.
pub const MAX_ACK_IDS: usize = 256;

/// How many bad ack ids one refusal names.
const MAX_NAMED_BAD_IDS: usize = 8;

/// How many deletes are in flight at once per call.
const PARALLEL_DELETES: usize = 8;

/// Removes handled refund events from the queue.
#[derive(Debug)]
pub struct AcknowledgeRefundEvents;

/// A validated acknowledgement: distinct ack ids, in request order.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Acknowledge {
    acks: Vec<AckId>,
    tenant: TenantId,
}

impl Operation for AcknowledgeRefundEvents {
    type Request = pb::AcknowledgeRefundEventsRequest;
    type Response = pb::AcknowledgeRefundEventsResponse;
    type Prepared = Acknowledge;
    const COALESCE: bool = false;
    const UPSTREAM: Upstream = Upstream::RefundQueue;

    fn validate(request: Self::Request, tenants: &Tenants) -> Result<Acknowledge, ApiError> {
        let mut checks = Checks::default();
        let tenant = checks.tenant("tenant_id", &request.tenant_id);
        let mut seen = HashSet::new();
        let mut acks = Vec::new();
        if request.ack_ids.is_empty() || request.ack_ids.len() > MAX_ACK_IDS {
            checks.violation(
                "ack_ids",
                format!(
                    "{} ack ids: 1 to {MAX_ACK_IDS} are taken",
                    request.ack_ids.len()
                ),
            );
        } else {
            let mut bad = 0;
            for (index, text) in request.ack_ids.iter().enumerate() {
                match AckId::decode(text) {
                    Some(ack) if seen.insert((ack.message_id.clone(), ack.pop_receipt.clone())) => {
                        acks.push(ack);
                    }
                    Some(_) => {}
                    // The first few are named: enough to find the culprit, and the details
                    // stay small.
                    None if bad < MAX_NAMED_BAD_IDS => {
                        bad += 1;
                        checks.violation(
                            "ack_ids",
                            format!("ack_ids[{index}] is not an ack_id that PullRefundEvents gave"),
                        );
                    }
                    None => {}
                }
            }
        }
        checks.finish()?;
        Ok(Acknowledge {
            acks,
            tenant: acting_tenant(tenant, tenants)?,
        })
    }

    async fn fetch(
        backends: Backends,
        request: Acknowledge,
        attempts: Arc<Attempts>,
    ) -> Outcome<Self::Response> {
        let (backends, attempts, tenant) = (&backends, &*attempts, &request.tenant);
        let first = refunds::sas(backends, tenant, attempts).await?;
        let mut deliveries = delete_all(backends, &first, request.acks, attempts).await?;
        // The deletes the queue refused (403) are made once more with the SAS that replaces
        // the refused one, if any; else the refusal is the call's answer.
        let refused: Vec<AckId> = deliveries
            .iter()
            .filter(|(_, delivery)| matches!(delivery, Delivery::Refused(_)))
            .map(|(ack, _)| ack.clone())
            .collect();
        if !refused.is_empty() {
            let Some(fresh) = refunds::sas_after_refusal(backends, tenant, attempts, &first).await?
            else {
                return Err(refusal(deliveries));
            };
            deliveries.retain(|(_, delivery)| !matches!(delivery, Delivery::Refused(_)));
            let again = delete_all(backends, &fresh, refused, attempts).await?;
            if again.iter().any(|(_, d)| matches!(d, Delivery::Refused(_))) {
                return Err(refusal(again));
            }
            deliveries.extend(again);
        }
        let mut response = pb::AcknowledgeRefundEventsResponse::default();
        let mut http_status = 204;
        for (ack, delivery) in deliveries {
            match delivery {
                Delivery::Acknowledged(status) => {
                    http_status = status;
                    response.acknowledged.push(ack.text);
                }
                Delivery::Expired(status) => {
                    http_status = status;
                    response.expired.push(ack.text);
                }
                Delivery::Failed { http_status: status, code } => {
                    http_status = status;
                    response.failed.push(pb::AcknowledgeFailure {
                        ack_id: ack.text,
                        http_status: i32::from(status),
                        code,
                    });
                }
                Delivery::Refused(_) => {}
            }
        }
        Ok(Answer {
            value: response,
            ids: UpstreamIds::default(),
            http_status,
        })
    }
}

/// What became of one delete.
enum Delivery {
    /// Removed (the HTTP status).
    Acknowledged(u16),
    /// No longer held by the queue.
    Expired(u16),
    /// The queue refused this one delete (another 4xx, a 500): worth trying again later.
    Failed { http_status: u16, code: String },
    /// The queue refused the SAS (403).
    Refused(ApiError),
}

/// Deletes every delivery of `acks` with `sas`, [`PARALLEL_DELETES`] at a time, in request
/// order. The first failure of the queue as a whole (no answer, throttling, the queue gone)
/// ends them all: it is the call's answer.
async fn delete_all(
    backends: &Backends,
    sas: &Sas,
    acks: Vec<AckId>,
    attempts: &Attempts,
) -> Result<Vec<(AckId, Delivery)>, ApiError> {
    stream::iter(acks)
        .map(|ack| async move {
            let delete = QueueDelete {
                queue: sas.queue.clone(),
                ack,
            };
            let outcome = exchange::<QueueDelete>(backends, &delete, attempts).await;
            Ok((delete.ack, delivery(outcome)?))
        })
        .buffered(PARALLEL_DELETES)
        .try_collect()
        .await
}

/// The first refusal among `deliveries`, as the call's answer.
fn refusal(deliveries: Vec<(AckId, Delivery)>) -> ApiError {
    deliveries
        .into_iter()
        .find_map(|(_, delivery)| match delivery {
            Delivery::Refused(error) => Some(error),
            _ => None,
        })
        .expect("called only when a delete was refused")
}

/// What one delete's outcome says of its delivery, or the error that ends the call: anything
/// that is not about this one message (no answer or an open circuit, 401, 408, 429, 502,
/// 503, 504, the queue gone).
fn delivery(outcome: Outcome<()>) -> Result<Delivery, ApiError> {
    let error = match outcome {
        Ok(answer) => return Ok(Delivery::Acknowledged(answer.http_status)),
        Err(error) => error,
    };
    let ApiError::Upstream { error: failure, .. } = &error else {
        return Err(error);
    };
    let UpstreamError::Status(failure) = failure.as_ref() else {
        return Err(error);
    };
    let status = failure.http_status.as_u16();
    let code = failure.body.inner_code.clone().unwrap_or_default();
    Ok(match (status, code.as_str()) {
        (404, "MessageNotFound") | (400, "PopReceiptMismatch") => Delivery::Expired(status),
        (403, _) => Delivery::Refused(error),
        (401 | 408 | 429 | 502 | 503 | 504, _) | (404, "QueueNotFound") => return Err(error),
        _ => Delivery::Failed {
            http_status: status,
            code,
        },
    })
}
