//! `StorePurchases/ChangeRecurrence` -> `POST {purchase}/v8.0/b2b/recurrences/{recurrenceId}/change`
//! (`store-services-apis.md` 2.8): cancel, extend, refund or stop auto-renewal. Not
//! idempotent: retried only where the Store certainly did not act (contract, section 7).

use serde::{Deserialize, Serialize};

use super::recurrences::RecurrenceItem;
use super::store_user::{user_fields, StoreUser, SBX_FIELD, USER_KEY_FIELD};
use crate::api::validation::{Checks, Tenants};
use crate::api::{Credential, StoreOperation, Token};
use crate::error::{ApiError, ErrorMapping, Retries};
use crate::proto::msstore::v1 as pb;
use crate::telemetry::otel::Route;
use crate::upstream::{segment_with_colons, Host, UpstreamRequest};

/// Changes one subscription.
#[derive(Debug)]
pub struct ChangeRecurrence;

/// A validated change (no `Debug`: it holds the user's key).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Change {
    user: StoreUser,
    recurrence_id: String,
    change_type: &'static str,
    /// Only for `Extend`.
    extension_days: Option<i32>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ChangeBody<'a> {
    b2b_key: &'a str,
    change_type: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    extension_time_in_days: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sbx: Option<&'a str>,
}

/// The change answer: the recurrence itself, or (as one of Microsoft's pages shows it)
/// `{"items": [the recurrence]}`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Changed {
    /// `{"items": [...]}` with exactly one item.
    Wrapped {
        /// The items.
        items: Vec<RecurrenceItem>,
    },
    /// The bare object.
    Bare(Box<RecurrenceItem>),
}

impl StoreOperation for ChangeRecurrence {
    type Request = pb::ChangeRecurrenceRequest;
    type Response = pb::Recurrence;
    type Prepared = Change;
    type Answer = RecurrenceItem;

    const ROUTE: &'static Route = &Route {
        name: "POST /v8.0/b2b/recurrences/{recurrenceId}/change",
        method: http::Method::POST,
        template: "/v8.0/b2b/recurrences/{recurrenceId}/change",
    };
    const ERRORS: &'static ErrorMapping = &ErrorMapping {
        fields: &[
            ("recurrenceId", "recurrence_id"),
            ("changeType", "change_type"),
            ("extensionTimeInDays", "extension_days"),
            ("b2bKey", USER_KEY_FIELD),
            SBX_FIELD,
        ],
        overrides: &[],
        retries: Retries::NotProcessed,
    };
    const EXPECTED: &'static str = "a recurrence, bare or as the one item of items";

    fn validate(request: Self::Request, tenants: &Tenants) -> Result<Change, ApiError> {
        let mut checks = Checks::default();
        let fields = user_fields!(request);
        let tenant = StoreUser::check(&mut checks, &fields);
        checks.store_id("recurrence_id", &request.recurrence_id);
        let change_type = match pb::ChangeType::try_from(request.change_type) {
            Ok(pb::ChangeType::Cancel) => Some("Cancel"),
            Ok(pb::ChangeType::Extend) => Some("Extend"),
            Ok(pb::ChangeType::Refund) => Some("Refund"),
            Ok(pb::ChangeType::ToggleAutoRenew) => Some("ToggleAutoRenew"),
            Ok(pb::ChangeType::Unspecified) => {
                checks.violation(
                    "change_type",
                    "is required: CANCEL, EXTEND, REFUND or TOGGLE_AUTO_RENEW",
                );
                None
            }
            Err(_) => {
                checks.violation(
                    "change_type",
                    format!("{} is not a ChangeType", request.change_type),
                );
                None
            }
        };
        let extend = change_type == Some("Extend");
        match (extend, request.extension_days) {
            (true, 0) => checks.violation("extension_days", "is required (not 0) for EXTEND"),
            (false, days) if days != 0 => {
                checks.violation("extension_days", "is only for EXTEND; leave it 0")
            }
            _ => {}
        }
        checks.finish()?;
        Ok(Change {
            user: StoreUser::finish(fields, tenant, Host::Purchase, tenants)?,
            recurrence_id: request.recurrence_id,
            change_type: change_type.unwrap_or_default(),
            extension_days: extend.then_some(request.extension_days),
        })
    }

    fn host(_: &Change) -> Host {
        Host::Purchase
    }

    fn credential(change: &Change) -> Credential<'_> {
        change.user.credential()
    }

    /// The recurrence id (`mdr:0:...`) is one path segment: encoded, its colons kept as
    /// Microsoft's library and examples send them.
    fn request(change: &Change, token: &Token<'_>) -> Result<UpstreamRequest, ApiError> {
        let body = ChangeBody {
            b2b_key: change.user.key(),
            change_type: change.change_type,
            extension_time_in_days: change.extension_days,
            sbx: change.user.sbx(),
        };
        let path = format!(
            "/v8.0/b2b/recurrences/{}/change",
            segment_with_colons(&change.recurrence_id)
        );
        StoreUser::post_to(Self::ROUTE, path, token, &body)
    }

    /// The user's key.
    fn secrets(change: &Change) -> impl Iterator<Item = &str> {
        std::iter::once(change.user.key())
    }

    fn parse(body: &[u8]) -> Option<RecurrenceItem> {
        match serde_json::from_slice::<Changed>(body).ok()? {
            Changed::Wrapped { items } if items.len() == 1 => items.into_iter().next(),
            Changed::Wrapped { .. } => None,
            Changed::Bare(item) => Some(*item),
        }
        .filter(RecurrenceItem::has_id)
    }

    fn respond(item: RecurrenceItem, _: &Change) -> pb::Recurrence {
        item.typed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_answer_shapes_are_read_and_nothing_else() {
        let bare = br#"{"id":"mdr:0:abc","recurrenceState":"Canceled","autoRenew":false}"#;
        let wrapped = br#"{"items":[{"id":"mdr:0:abc","recurrenceState":"Canceled"}]}"#;
        for body in [&bare[..], &wrapped[..]] {
            let item = ChangeRecurrence::parse(body).expect("a recurrence").typed();
            assert_eq!(item.id, "mdr:0:abc");
            assert_eq!(item.recurrence_state(), pb::RecurrenceState::Canceled);
        }
        for bad in [
            &br#"{"items":[]}"#[..],
            br#"{"items":[{"id":"a"},{"id":"b"}]}"#,
            br#"{"recurrenceState":"Active"}"#,
            b"[]",
            b"<html>",
        ] {
            assert!(ChangeRecurrence::parse(bad).is_none());
        }
    }
}
