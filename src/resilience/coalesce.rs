//! Request coalescing: identical concurrent calls share one in-flight upstream request.
//!
//! The map holds only weak handles, so when every caller of a flight has gone (cancelled or
//! timed out) the flight is dropped, and with it its upstream request. A finished flight
//! removes itself; later calls start a new one. Nothing is cached.

use std::future::Future;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use futures_util::future::{BoxFuture, FutureExt, Shared, WeakShared};

type Flight<V> = Shared<BoxFuture<'static, V>>;
type Flights<K, V> = DashMap<K, (u64, WeakShared<BoxFuture<'static, V>>)>;

/// Shares in-flight work between callers with equal keys.
pub struct Coalescer<K, V> {
    flights: Arc<Flights<K, V>>,
    next_id: AtomicU64,
}

impl<K, V> Default for Coalescer<K, V>
where
    K: Hash + Eq,
{
    fn default() -> Self {
        Self {
            flights: Arc::new(DashMap::new()),
            next_id: AtomicU64::new(0),
        }
    }
}

/// Removes its flight from the map when the flight ends or is dropped.
struct Landing<K: Hash + Eq, V> {
    flights: Arc<Flights<K, V>>,
    key: Option<K>,
    id: u64,
}

impl<K: Hash + Eq, V> Drop for Landing<K, V> {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            self.flights.remove_if(&key, |_, (id, _)| *id == self.id);
        }
    }
}

impl<K, V> Coalescer<K, V>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// Joins the flight for `key`, or starts one with `work`. Returns the outcome and whether
    /// it came from another caller's flight.
    pub async fn run<F>(&self, key: K, work: impl FnOnce() -> F) -> (V, bool)
    where
        F: Future<Output = V> + Send + 'static,
    {
        let (flight, joined) = match self.flights.entry(key.clone()) {
            Entry::Occupied(mut entry) => match entry.get().1.upgrade() {
                Some(flight) => (flight, true),
                None => {
                    let (id, flight, weak) = self.start(key, work);
                    entry.insert((id, weak));
                    (flight, false)
                }
            },
            Entry::Vacant(entry) => {
                let (id, flight, weak) = self.start(key, work);
                entry.insert((id, weak));
                (flight, false)
            }
        };
        (flight.await, joined)
    }

    /// How many flights are in the map (finished ones remove themselves).
    pub fn in_flight(&self) -> usize {
        self.flights.len()
    }

    fn start<F>(
        &self,
        key: K,
        work: impl FnOnce() -> F,
    ) -> (u64, Flight<V>, WeakShared<BoxFuture<'static, V>>)
    where
        F: Future<Output = V> + Send + 'static,
    {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let landing = Landing {
            flights: self.flights.clone(),
            key: Some(key),
            id,
        };
        // Boxed first: the work's future can be kilobytes, and moving it into the wrapper
        // below and then into the flight's box would copy it twice (callgrind: ~5,000
        // instructions per offline-license call).
        let work = Box::pin(work());
        let flight = async move {
            let _landing = landing;
            work.await
        }
        .boxed()
        .shared();
        let weak = flight
            .downgrade()
            .expect("a flight that was never polled has not completed");
        (id, flight, weak)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    #[tokio::test]
    async fn concurrent_equal_keys_share_one_run_and_different_keys_do_not() {
        let coalescer = Arc::new(Coalescer::<&'static str, usize>::default());
        let runs = Arc::new(AtomicUsize::new(0));
        let call = |key| {
            let (coalescer, runs) = (coalescer.clone(), runs.clone());
            async move {
                coalescer
                    .run(key, || async move {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        runs.fetch_add(1, Ordering::SeqCst)
                    })
                    .await
            }
        };
        let results =
            futures_util::future::join_all((0..20).map(|i| call(if i < 19 { "a" } else { "b" })))
                .await;
        assert_eq!(runs.load(Ordering::SeqCst), 2);
        assert_eq!(results.iter().filter(|(_, joined)| *joined).count(), 18);
        assert_eq!(coalescer.in_flight(), 0);
    }

    #[tokio::test]
    async fn a_flight_whose_callers_all_left_is_dropped_and_replaced() {
        let coalescer = Coalescer::<u8, u8>::default();
        let abandoned = coalescer.run(1, std::future::pending::<u8>);
        let _ = tokio::time::timeout(Duration::from_millis(10), abandoned).await;
        assert_eq!(
            coalescer.in_flight(),
            0,
            "the dropped flight removed itself"
        );
        let (value, joined) = coalescer.run(1, || async { 7 }).await;
        assert_eq!((value, joined), (7, false));
    }
}
