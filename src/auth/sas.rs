//! The refund queue's SAS, per tenant: fetched from the Store with the facade's own token and
//! kept until 5 minutes before it expires (`store-services-apis.md` 2.10), like the tokens.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use moka::future::Cache;
use moka::ops::compute::Op;
use moka::Expiry;

use super::TenantId;
use crate::upstream::queue::QueueUrl;

/// How long before its expiry a SAS is no longer used (Microsoft's library: 5 minutes).
pub const SAS_MARGIN: Duration = Duration::from_secs(5 * 60);

/// Most tenants whose SAS is kept.
const MAX_TENANTS: u64 = 10_000;

/// A queue URL with its SAS, and when to stop using it (no `Debug`: the SAS is a credential).
pub struct Sas {
    /// The queue and its SAS.
    pub queue: QueueUrl,
    refresh_at: Instant,
}

impl Sas {
    /// `queue`, whose SAS expires at `expires_on`: used until [`SAS_MARGIN`] before then.
    pub fn new(queue: QueueUrl, expires_on: SystemTime) -> Self {
        let left = expires_on
            .duration_since(SystemTime::now())
            .unwrap_or_default()
            .saturating_sub(SAS_MARGIN);
        Self {
            queue,
            refresh_at: Instant::now() + left.min(Duration::from_secs(365 * 24 * 3600)),
        }
    }
}

struct RefreshAt;

impl Expiry<TenantId, Arc<Sas>> for RefreshAt {
    fn expire_after_create(
        &self,
        _tenant: &TenantId,
        sas: &Arc<Sas>,
        created_at: Instant,
    ) -> Option<Duration> {
        Some(sas.refresh_at.saturating_duration_since(created_at))
    }
}

/// The SAS of each tenant's refund queue. Cheap to clone.
#[derive(Clone)]
pub struct SasCache {
    cache: Cache<TenantId, Arc<Sas>>,
}

impl Default for SasCache {
    fn default() -> Self {
        Self {
            cache: Cache::builder()
                .max_capacity(MAX_TENANTS)
                .expire_after(RefreshAt)
                .build(),
        }
    }
}

impl SasCache {
    /// The kept SAS of `tenant`, or the one `fetch` gets (calls that find none at once share
    /// one fetch, and its failure).
    pub async fn get_or_fetch<E: Send + Sync + 'static>(
        &self,
        tenant: &TenantId,
        fetch: impl Future<Output = Result<Sas, E>>,
    ) -> Result<Arc<Sas>, Arc<E>> {
        self.cache
            .try_get_with(tenant.clone(), async move { fetch.await.map(Arc::new) })
            .await
    }

    /// Forgets `rejected`, the SAS of `tenant` that the queue refused (403), unless another
    /// call replaced it already.
    pub async fn forget(&self, tenant: &TenantId, rejected: &Arc<Sas>) {
        self.cache
            .entry_by_ref(tenant)
            .and_compute_with(|entry| {
                let op = match entry {
                    Some(entry) if Arc::ptr_eq(entry.value(), rejected) => Op::Remove,
                    _ => Op::Nop,
                };
                std::future::ready(op)
            })
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(sig: &str) -> QueueUrl {
        let allowed = reqwest::Url::parse("http://127.0.0.1:1/q").unwrap();
        QueueUrl::allowed(&format!("http://127.0.0.1:1/q/refunds?sig={sig}"), &allowed).unwrap()
    }

    #[tokio::test]
    async fn a_sas_is_kept_until_five_minutes_before_it_expires() {
        let cache = SasCache::default();
        let configured = TenantId::parse("sandbox.onmicrosoft.com").unwrap();
        let in_an_hour = SystemTime::now() + Duration::from_secs(3600);
        let first = cache
            .get_or_fetch::<()>(&configured, async {
                Ok(Sas::new(queue("one"), in_an_hour))
            })
            .await
            .unwrap();
        let again = cache
            .get_or_fetch::<()>(&configured, async {
                Ok(Sas::new(queue("two"), in_an_hour))
            })
            .await
            .unwrap();
        assert!(Arc::ptr_eq(&first, &again), "the kept SAS is used");
        // One expiring within the margin is used for the call that fetched it, not kept.
        let tenant = TenantId::parse("contoso.com").unwrap();
        let soon = SystemTime::now() + Duration::from_secs(299);
        let short = cache
            .get_or_fetch::<()>(&tenant, async { Ok(Sas::new(queue("short"), soon)) })
            .await
            .unwrap();
        assert_eq!(short.queue.signature(), "short");
        cache.cache.run_pending_tasks().await;
        let next = cache
            .get_or_fetch::<()>(&tenant, async { Ok(Sas::new(queue("next"), soon)) })
            .await
            .unwrap();
        assert_eq!(next.queue.signature(), "next");
    }

    #[tokio::test]
    async fn a_refused_sas_is_forgotten_once() {
        let cache = SasCache::default();
        let tenant = TenantId::parse("contoso.com").unwrap();
        let later = SystemTime::now() + Duration::from_secs(3600);
        let old = cache
            .get_or_fetch::<()>(&tenant, async { Ok(Sas::new(queue("old"), later)) })
            .await
            .unwrap();
        cache.forget(&tenant, &old).await;
        let new = cache
            .get_or_fetch::<()>(&tenant, async { Ok(Sas::new(queue("new"), later)) })
            .await
            .unwrap();
        assert_eq!(new.queue.signature(), "new");
        // A second call refused with the old SAS does not drop the new one.
        cache.forget(&tenant, &old).await;
        let kept = cache
            .get_or_fetch::<()>(&tenant, async { Ok(Sas::new(queue("newer"), later)) })
            .await
            .unwrap();
        assert!(Arc::ptr_eq(&new, &kept));
    }
}
