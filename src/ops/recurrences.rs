//! The Store's RecurrenceItem (`store-services-apis.md` 2.7), shared by the recurrence query
//! and change: read leniently, answered typed.

use serde::Deserialize;

use super::store_json::{lenient, timestamp};
use crate::proto::msstore::v1 as pb;

/// A RecurrenceItem, leniently: a field of an unexpected type is dropped.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RecurrenceItem {
    #[serde(deserialize_with = "lenient")]
    id: Option<String>,
    #[serde(deserialize_with = "lenient")]
    product_id: Option<String>,
    #[serde(deserialize_with = "lenient")]
    sku_id: Option<String>,
    #[serde(deserialize_with = "lenient")]
    recurrence_state: Option<String>,
    #[serde(deserialize_with = "lenient")]
    auto_renew: Option<bool>,
    #[serde(deserialize_with = "lenient")]
    is_trial: Option<bool>,
    #[serde(deserialize_with = "lenient")]
    start_time: Option<String>,
    #[serde(deserialize_with = "lenient")]
    expiration_time: Option<String>,
    #[serde(deserialize_with = "lenient")]
    expiration_time_with_grace: Option<String>,
    #[serde(deserialize_with = "lenient")]
    cancellation_date: Option<String>,
    #[serde(deserialize_with = "lenient")]
    last_modified: Option<String>,
    #[serde(deserialize_with = "lenient")]
    market: Option<String>,
    #[serde(deserialize_with = "lenient")]
    beneficiary: Option<String>,
}

impl RecurrenceItem {
    /// Whether it carries a recurrence id (what makes it a recurrence at all).
    pub fn has_id(&self) -> bool {
        self.id.as_deref().is_some_and(|id| !id.is_empty())
    }

    /// The proto recurrence: the state typed, the Store's text kept beside it.
    pub fn typed(self) -> pb::Recurrence {
        let at = |text: Option<String>| text.as_deref().and_then(timestamp);
        let mut typed = pb::Recurrence {
            id: self.id.unwrap_or_default(),
            product_id: self.product_id.unwrap_or_default(),
            sku_id: self.sku_id.unwrap_or_default(),
            auto_renew: self.auto_renew.unwrap_or_default(),
            is_trial: self.is_trial.unwrap_or_default(),
            start_time: at(self.start_time),
            expiration_time: at(self.expiration_time),
            expiration_time_with_grace: at(self.expiration_time_with_grace),
            cancellation_date: at(self.cancellation_date),
            last_modified: at(self.last_modified),
            market: self.market.unwrap_or_default(),
            beneficiary: self.beneficiary.unwrap_or_default(),
            ..Default::default()
        };
        if let Some(state) = self.recurrence_state {
            typed.set_recurrence_state(match state.to_ascii_lowercase().as_str() {
                "none" => pb::RecurrenceState::None,
                "active" => pb::RecurrenceState::Active,
                "inactive" => pb::RecurrenceState::Inactive,
                "canceled" | "cancelled" => pb::RecurrenceState::Canceled,
                "indunning" => pb::RecurrenceState::InDunning,
                "failed" => pb::RecurrenceState::Failed,
                _ => pb::RecurrenceState::Other,
            });
            typed.recurrence_state_text = state;
        }
        typed
    }
}
