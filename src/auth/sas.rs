//! The refund queue's SAS, per tenant: fetched from the Store with the facade's own token and
//! kept until 5 minutes before it expires (`store-services-apis.md` 2.10), like the tokens.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use dashmap::DashMap;
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

/// A call's place in the queue of its tenant's SAS fetches. The last one out (finished or
/// cancelled) removes the tenant's entry, so the map holds only tenants being fetched for,
/// however many tenants callers name.
struct Turn<'a> {
    lock: Arc<tokio::sync::Mutex<()>>,
    map: &'a DashMap<TenantId, Arc<tokio::sync::Mutex<()>>>,
    tenant: &'a TenantId,
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        // Held by the map and this turn only: nobody else waits. (Cloning it out of the map
        // takes the same shard lock, so the count cannot change under this check.)
        self.map.remove_if(self.tenant, |_, lock| {
            Arc::ptr_eq(lock, &self.lock) && Arc::strong_count(lock) == 2
        });
    }
}

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

/// How often a queue's refusal (403) may force a new SAS for one tenant: a refusal a new SAS
/// does not cure (a storage firewall, missing permissions) then costs the Store one request a
/// minute, not one per call.
pub const FORCED_SAS_INTERVAL: Duration = Duration::from_secs(60);

/// The SAS of each tenant's refund queue.
pub struct SasCache {
    cache: Cache<TenantId, Arc<Sas>>,
    /// One fetch at a time per tenant: a call that finds no SAS waits its turn (within its own
    /// deadline), then finds the SAS the call before it fetched, or fetches it itself.
    fetching: DashMap<TenantId, Arc<tokio::sync::Mutex<()>>>,
    /// Tenants whose SAS a refusal forced out within the last [`FORCED_SAS_INTERVAL`].
    forced: Cache<TenantId, ()>,
}

impl Default for SasCache {
    fn default() -> Self {
        Self {
            cache: Cache::builder()
                .max_capacity(MAX_TENANTS)
                .expire_after(RefreshAt)
                .build(),
            fetching: DashMap::new(),
            forced: Cache::builder()
                .max_capacity(MAX_TENANTS)
                .time_to_live(FORCED_SAS_INTERVAL)
                .build(),
        }
    }
}

impl SasCache {
    /// The kept SAS of `tenant`, or the one `fetch` gets. Fetches of one tenant's SAS happen
    /// one at a time, each under its own caller's deadline; a failure is its caller's alone.
    pub async fn get_or_fetch<E>(
        &self,
        tenant: &TenantId,
        fetch: impl Future<Output = Result<Sas, E>>,
    ) -> Result<Arc<Sas>, E> {
        if let Some(sas) = self.cache.get(tenant).await {
            return Ok(sas);
        }
        let turn = Turn {
            lock: self.fetching.entry(tenant.clone()).or_default().clone(),
            map: &self.fetching,
            tenant,
        };
        let _turn = turn.lock.lock().await;
        if let Some(sas) = self.cache.get(tenant).await {
            return Ok(sas);
        }
        let sas = Arc::new(fetch.await?);
        self.cache.insert(tenant.clone(), sas.clone()).await;
        Ok(sas)
    }

    /// After the queue refused `refused` (403): the SAS to try once more with, if any. A newer
    /// SAS another call put in place is used as it is; otherwise the first refusal of a tenant
    /// in [`FORCED_SAS_INTERVAL`] drops `refused` and lets `fetch` get a new one (while a
    /// fetch is under way the call waits for it); later refusals in that interval get `None`.
    pub async fn after_refusal<E>(
        &self,
        tenant: &TenantId,
        refused: &Arc<Sas>,
        fetch: impl Future<Output = Result<Sas, E>>,
    ) -> Result<Option<Arc<Sas>>, E> {
        match self.cache.get(tenant).await {
            Some(current) if !Arc::ptr_eq(&current, refused) => return Ok(Some(current)),
            Some(_) => {
                let claimed = self
                    .forced
                    .entry_by_ref(tenant)
                    .or_insert(())
                    .await
                    .is_fresh();
                if !claimed {
                    return Ok(None);
                }
                self.forget(tenant, refused).await;
            }
            // Dropped by another call's refusal: its new SAS is on the way.
            None => {}
        }
        self.get_or_fetch(tenant, fetch).await.map(Some)
    }

    #[cfg(test)]
    fn turns(&self) -> usize {
        self.fetching.len()
    }

    /// Forgets `rejected`, unless another call replaced it already.
    async fn forget(&self, tenant: &TenantId, rejected: &Arc<Sas>) {
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
        let allowed = url::Url::parse("http://127.0.0.1:1/q").unwrap();
        QueueUrl::allowed(&format!("http://127.0.0.1:1/q/refunds?sig={sig}"), &allowed).unwrap()
    }

    fn sas(sig: &str, minutes: u64) -> Result<Sas, ()> {
        Ok(Sas::new(
            queue(sig),
            SystemTime::now() + Duration::from_secs(minutes * 60),
        ))
    }

    #[tokio::test]
    async fn a_sas_is_kept_until_five_minutes_before_it_expires() {
        let cache = SasCache::default();
        let configured = TenantId::parse("sandbox.onmicrosoft.com").unwrap();
        let first = cache
            .get_or_fetch(&configured, async { sas("one", 60) })
            .await
            .unwrap();
        let again = cache
            .get_or_fetch(&configured, async { sas("two", 60) })
            .await
            .unwrap();
        assert!(Arc::ptr_eq(&first, &again), "the kept SAS is used");
        // One expiring within the margin is used for the call that fetched it, not kept.
        let tenant = TenantId::parse("contoso.com").unwrap();
        let short = cache
            .get_or_fetch(&tenant, async { sas("short", 4) })
            .await
            .unwrap();
        assert_eq!(short.queue.signature(), "short");
        cache.cache.run_pending_tasks().await;
        let next = cache
            .get_or_fetch(&tenant, async { sas("next", 4) })
            .await
            .unwrap();
        assert_eq!(next.queue.signature(), "next");
    }

    #[tokio::test]
    async fn the_fetch_queue_keeps_no_tenant_once_its_fetches_end() {
        let cache = SasCache::default();
        for n in 0..100 {
            let tenant = TenantId::parse(&format!("tenant{n}.example.com")).unwrap();
            let _ = cache
                .get_or_fetch(&tenant, async { Err::<Sas, _>(()) })
                .await;
            let _ = cache.get_or_fetch(&tenant, async { sas("s", 60) }).await;
        }
        assert_eq!(cache.turns(), 0);
        // A cancelled wait leaves nothing behind either.
        let tenant = TenantId::parse("contoso.com").unwrap();
        let pending = cache.get_or_fetch(&tenant, std::future::pending::<Result<Sas, ()>>());
        let _ = tokio::time::timeout(Duration::from_millis(10), pending).await;
        assert_eq!(cache.turns(), 0);
    }

    #[tokio::test]
    async fn a_failed_fetch_is_its_callers_alone() {
        let cache = SasCache::default();
        let tenant = TenantId::parse("contoso.com").unwrap();
        let failed = cache
            .get_or_fetch(&tenant, async { Err::<Sas, _>("store down") })
            .await;
        assert_eq!(failed.err(), Some("store down"));
        let next = cache
            .get_or_fetch(&tenant, async { sas("next", 60) })
            .await
            .unwrap();
        assert_eq!(next.queue.signature(), "next");
    }

    #[tokio::test]
    async fn a_refusal_forces_a_new_sas_once_a_minute() {
        let cache = SasCache::default();
        let tenant = TenantId::parse("contoso.com").unwrap();
        let old = cache
            .get_or_fetch(&tenant, async { sas("old", 60) })
            .await
            .unwrap();
        let new = cache
            .after_refusal(&tenant, &old, async { sas("new", 60) })
            .await
            .unwrap()
            .expect("the first refusal gets a new SAS");
        assert_eq!(new.queue.signature(), "new");
        // Another call refused with the old one uses the new one, fetching nothing.
        let same = cache
            .after_refusal(&tenant, &old, async { sas("unused", 60) })
            .await
            .unwrap()
            .expect("the newer SAS");
        assert!(Arc::ptr_eq(&same, &new));
        // The new one refused too, within the minute: no other fetch.
        let none = cache
            .after_refusal(&tenant, &new, async { sas("unused", 60) })
            .await
            .unwrap();
        assert!(none.is_none());
    }
}
