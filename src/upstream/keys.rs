//! Microsoft Store B2B keys: `POST /v6.0/b2b/keys/renew` on the collections or purchase host.

use serde::{Deserialize, Serialize};

use super::{Answer, Correlation, Route, StoreClient, UpstreamError};

/// Which Store service a key belongs to, and so which host renews it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyHost {
    /// `collections.mp.microsoft.com`.
    Collections,
    /// `purchase.mp.microsoft.com`.
    Purchase,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RenewBody<'a> {
    service_ticket: &'a str,
    key: &'a str,
}

#[derive(Deserialize)]
struct RenewAnswer {
    key: String,
}

const RENEW_ROUTE: Route = Route {
    name: "POST /v6.0/b2b/keys/renew",
    method: "POST",
    template: "/v6.0/b2b/keys/renew",
};

impl StoreClient {
    /// Renews `key` on `host`, proving the caller with `service_ticket`.
    pub async fn renew_key(
        &self,
        host: KeyHost,
        service_ticket: &str,
        key: &str,
        correlation: &Correlation,
    ) -> Result<Answer<String>, UpstreamError> {
        let base = match host {
            KeyHost::Collections => &self.collections,
            KeyHost::Purchase => &self.purchase,
        };
        let request = self
            .http
            .post(format!("{}/v6.0/b2b/keys/renew", base.prefix))
            .json(&RenewBody {
                service_ticket,
                key,
            });
        let (status, ids, body) = self
            .exchange(base, RENEW_ROUTE, request, correlation)
            .await?;
        let value = serde_json::from_slice::<RenewAnswer>(&body)
            .ok()
            .filter(|answer| !answer.key.is_empty())
            .ok_or_else(|| UpstreamError::Malformed {
                host: base.host.clone(),
                http_status: status.as_u16(),
                ids: ids.clone(),
                expected: "a JSON object with a key",
            })?;
        Ok(Answer {
            value: value.key,
            ids,
            http_status: status.as_u16(),
        })
    }
}
