//! Connection slots: `[limits] max_connections` across all listeners and
//! `max_connections_per_client` per client IP. A slot lives as long as the
//! connection *and* any tunnel it became (CONNECT hands its slot to the
//! tunnel task). At the global limit, the oldest connection that has not
//! sent a request yet is shed, so idle floods cannot starve real clients.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

/// The slot table shared by every forward-proxy listener.
pub struct Limits {
    permits: Arc<Semaphore>,
    per_client: usize,
    clients: Mutex<HashMap<IpAddr, usize>>,
    /// Connections without a request yet, oldest first.
    fresh: Mutex<Fresh>,
    max: usize,
    trimmer: AtomicBool,
}

#[derive(Default)]
struct Fresh {
    next: u64,
    list: BTreeMap<u64, Arc<Notify>>,
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("client has max_connections_per_client connections open")]
    PerClient,
    #[error("shutting down")]
    Closed,
}

/// One admitted connection's hold on the limits; released when the last
/// clone (connection task, tunnel task) is dropped.
pub struct Slot {
    limits: Arc<Limits>,
    ip: IpAddr,
    id: u64,
    shed: Arc<Notify>,
    _permit: OwnedSemaphorePermit,
}

impl Limits {
    pub fn new(max_connections: usize, per_client: usize) -> Arc<Self> {
        Arc::new(Limits {
            permits: Arc::new(Semaphore::new(max_connections)),
            per_client: per_client.max(1),
            clients: Mutex::new(HashMap::new()),
            fresh: Mutex::new(Fresh::default()),
            max: max_connections,
            trimmer: AtomicBool::new(false),
        })
    }

    /// Admits a connection from `ip`: refuses it over the per-client limit;
    /// at the global limit sheds the oldest request-less connection (if
    /// any) and waits for a slot.
    pub async fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, Refused> {
        let ip = crate::acl::unmap(ip);
        {
            let mut c = self.clients.lock().unwrap_or_else(|e| e.into_inner());
            let n = c.entry(ip).or_insert(0);
            if *n >= self.per_client {
                return Err(Refused::PerClient);
            }
            *n += 1;
        }
        let permit = match self.permits.clone().try_acquire_owned() {
            Ok(p) => Ok(p),
            Err(_) => {
                if self.shed_oldest() {
                    metrics::counter!("proxyguard_connections_shed_total").increment(1);
                }
                self.permits
                    .clone()
                    .acquire_owned()
                    .await
                    .map_err(|_| Refused::Closed)
            }
        };
        let permit = match permit {
            Ok(p) => p,
            Err(e) => {
                self.release_client(ip);
                return Err(e);
            }
        };
        let shed = Arc::new(Notify::new());
        let id = {
            let mut f = self.fresh.lock().unwrap_or_else(|e| e.into_inner());
            f.next += 1;
            let id = f.next;
            f.list.insert(id, shed.clone());
            id
        };
        Ok(Slot {
            limits: self.clone(),
            ip,
            id,
            shed,
            _permit: permit,
        })
    }

    fn shed_oldest(&self) -> bool {
        let mut f = self.fresh.lock().unwrap_or_else(|e| e.into_inner());
        match f.list.pop_first() {
            Some((_, n)) => {
                n.notify_one();
                true
            }
            None => false,
        }
    }

    fn release_client(&self, ip: IpAddr) {
        let mut c = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = c.get_mut(&ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                c.remove(&ip);
            }
        }
    }

    /// Connections holding a slot now.
    pub fn active(&self) -> usize {
        self.max.saturating_sub(self.permits.available_permits())
    }

    /// After a surge of connections (an idle flood) has gone, hands the
    /// allocator's freed memory back to the OS. glibc keeps the freed
    /// per-connection buffers (10k idle connections: ~130 MB) in its heaps
    /// indefinitely otherwise. One task per process, checking every 5 s.
    pub fn spawn_trimmer(self: &Arc<Self>, shutdown: crate::shutdown::Shutdown) {
        if self.trimmer.swap(true, Ordering::Relaxed) {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            let mut peak = 0usize;
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = shutdown.triggered() => return,
                }
                let now = me.active();
                peak = peak.max(now);
                if peak >= 512 && now <= peak / 4 {
                    trim_heap();
                    tracing::debug!(
                        peak,
                        now,
                        "connection surge over: returned free heap memory to the OS"
                    );
                    peak = now;
                }
            }
        });
    }

    /// Connections open from `ip` (tunnels included).
    pub fn client_count(&self, ip: IpAddr) -> usize {
        let c = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        c.get(&crate::acl::unmap(ip)).copied().unwrap_or(0)
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim_heap() {
    // SAFETY: malloc_trim only releases free memory of the allocator.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim_heap() {}

impl Slot {
    /// The client sent its first request: no longer sheddable.
    pub fn active(&self) {
        let mut f = self.limits.fresh.lock().unwrap_or_else(|e| e.into_inner());
        f.list.remove(&self.id);
    }

    /// Resolves when this connection is shed to make room.
    pub async fn shed(&self) {
        self.shed.notified().await
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.active();
        self.limits.release_client(self.ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn per_client_and_shedding() {
        let l = Limits::new(2, 1);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let c: IpAddr = "10.0.0.3".parse().unwrap();
        let sa = l.admit(a).await.unwrap();
        assert!(matches!(l.admit(a).await, Err(Refused::PerClient)));
        let sb = l.admit(b).await.unwrap();
        sb.active();
        // Full: admitting c sheds a (no request yet), not b.
        let l2 = l.clone();
        let waiter = tokio::spawn(async move { l2.admit(c).await.map(|_| ()) });
        tokio::time::timeout(std::time::Duration::from_secs(5), sa.shed())
            .await
            .unwrap();
        drop(sa);
        waiter.await.unwrap().unwrap();
        assert_eq!(l.client_count(a), 0);
        assert_eq!(l.client_count(b), 1);
    }
}
