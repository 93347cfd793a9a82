//! `StoreRefunds/AcknowledgeRefundEvents` -> `DELETE {queue}/messages/{id}?popreceipt=...`
//! per event (`store-services-apis.md` 2.11), up to [`PARALLEL_DELETES`] at once. Each event is
//! acknowledged, or expired: the queue no longer holds that delivery (404 `MessageNotFound`:
//! removed already, or gone; 400 `PopReceiptMismatch`: pulled again since, its 30 seconds
//! having lapsed). Any other failure fails the call (contract, section 7).

use std::collections::HashSet;
use std::sync::Arc;

use futures_util::stream::{self, StreamExt};

use super::refunds::{with_queue, AckId, QueueDelete};
use crate::api::validation::{acting_tenant, Checks, Tenants};
use crate::api::{exchange, Attempts, Backends, Operation, Outcome, Upstream};
use crate::auth::TenantId;
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
                    Some(ack) if seen.insert(text.as_str()) => acks.push(ack),
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
        let (backends, attempts, tenant) = (&backends, &attempts, &request.tenant);
        let outcomes: Vec<(AckId, Result<Answer<()>, ApiError>)> =
            stream::iter(request.acks.iter().cloned())
                .map(|ack| async move {
                    let outcome = with_queue(backends, tenant, attempts, |queue| {
                        let delete = QueueDelete {
                            queue,
                            ack: ack.clone(),
                        };
                        async move { exchange::<QueueDelete>(backends, &delete, attempts).await }
                    })
                    .await;
                    (ack, outcome)
                })
                .buffered(PARALLEL_DELETES)
                .collect()
                .await;
        let mut response = pb::AcknowledgeRefundEventsResponse::default();
        let mut http_status = 204;
        for (ack, outcome) in outcomes {
            match outcome {
                Ok(answer) => {
                    http_status = answer.http_status;
                    response.acknowledged.push(ack.text);
                }
                Err(error) => {
                    http_status = expired_status(&error).ok_or(error)?;
                    response.expired.push(ack.text);
                }
            }
        }
        Ok(Answer {
            value: response,
            ids: UpstreamIds::default(),
            http_status,
        })
    }
}

/// The HTTP status of a refusal that means the delivery is no longer in the queue: 404
/// `MessageNotFound` (not `QueueNotFound`, which is the queue missing) or 400
/// `PopReceiptMismatch`.
fn expired_status(error: &ApiError) -> Option<u16> {
    let ApiError::Upstream { error, .. } = error else {
        return None;
    };
    let UpstreamError::Status(failure) = error.as_ref() else {
        return None;
    };
    let status = failure.http_status.as_u16();
    let body = &failure.body;
    let expired = match status {
        404 => body.mentions(&["QueueNotFound"]).is_none(),
        400 => body.mentions(&["PopReceiptMismatch"]).is_some(),
        _ => false,
    };
    expired.then_some(status)
}
