//! The collection lease: one object in the storage naming the collector
//! and until when it holds the storage. A collector renews it every
//! minute; one that crashed frees it when it expires, or at once for the
//! next collector on the same host (its process is visibly gone).

use super::GcError;
use crate::registry::{paths, Registry, Result};
use bytes::Bytes;
use std::time::{Duration, SystemTime};

/// How long a lease lasts without renewal: a collector that died frees it
/// this long after its last renewal.
pub const LEASE_TTL: Duration = Duration::from_secs(120);

/// How often the holder renews it.
pub(super) const RENEW_EVERY: Duration = Duration::from_secs(60);

#[derive(serde::Serialize, serde::Deserialize, Clone)]
pub(super) struct Lease {
    pub holder: String,
    pub since: String,
    /// Seconds since the epoch (the holder's clock; renewed every
    /// minute, so skew within a minute is harmless).
    pub expires: u64,
}

/// This host's name, as collectors and pull batches are named.
pub fn this_host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map_or_else(|_| "unknown-host".into(), |h| h.trim().into())
}

/// Who this collector is, for the lease: host and process.
pub fn this_collector() -> String {
    format!("{} (pid {})", this_host(), std::process::id())
}

/// Whether `held_by` is a collector on this host (`me` names the host the
/// same way) whose process is gone: killed collectors free the lease at
/// once for the next run on the same host, not only when it expires.
fn holder_is_dead(held_by: &str, me: &str) -> bool {
    let host = |h: &str| h.rsplit_once(" (pid ").map(|(host, _)| host.to_string());
    let pid = held_by.rsplit_once(" (pid ").and_then(|(_, p)| p.trim_end_matches(')').parse::<u32>().ok());
    match (host(held_by), host(me), pid) {
        (Some(a), Some(b), Some(pid)) if a == b => !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        _ => false,
    }
}

pub(super) fn epoch_secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl Registry {
    pub(super) async fn write_lease(&self, holder: &str) -> Result<()> {
        let now = SystemTime::now();
        let lease = Lease {
            holder: holder.to_string(),
            since: berth_wire::time::rfc3339(now),
            expires: epoch_secs(now + LEASE_TTL),
        };
        let body = serde_json::to_vec(&lease).expect("lease serializes");
        Ok(self.driver.put_content(&paths::gc_lease(), Bytes::from(body)).await?)
    }

    /// Takes the lease unless another live collector holds it; returns the
    /// storage's time when it was taken (the mark's start).
    pub(super) async fn take_lease(&self, holder: &str) -> Result<SystemTime, GcError> {
        let path = paths::gc_lease();
        match self.driver.get_content(&path).await {
            Ok(body) => {
                if let Ok(l) = serde_json::from_slice::<Lease>(&body) {
                    let now = epoch_secs(SystemTime::now());
                    if l.expires > now && l.holder != holder && !holder_is_dead(&l.holder, holder) {
                        return Err(GcError::Busy { holder: l.holder, since: l.since, expires_in: l.expires - now });
                    }
                }
            }
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(crate::registry::Error::from(e).into()),
        }
        self.write_lease(holder).await?;
        Ok(self.driver.stat(&path).await.map_err(crate::registry::Error::from)?.modified)
    }
}
