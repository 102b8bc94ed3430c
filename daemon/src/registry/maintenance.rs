//! Upload purging, as registry:2's `storage.maintenance.uploadpurging`:
//! uploads that have seen no data for longer than `age` are deleted, so
//! abandoned pushes do not fill the storage.

use super::{Registry, Result};
use std::time::{Duration, SystemTime};

impl Registry {
    /// Deletes uploads whose data was last written more than `age` ago.
    /// With `dry_run` it only counts them. Returns how many it found.
    pub async fn purge_uploads(&self, age: Duration, dry_run: bool) -> Result<usize> {
        let cutoff = SystemTime::now().checked_sub(age).unwrap_or(SystemTime::UNIX_EPOCH);
        let mut purged = 0;
        for (dir, children) in self.repository_tree().await? {
            if !children.iter().any(|c| c.ends_with("/_uploads")) {
                continue;
            }
            for upload in self.driver.list(&format!("{dir}/_uploads")).await.unwrap_or_default() {
                let last = match self.driver.stat(&format!("{upload}/data")).await {
                    Ok(st) => st.modified,
                    Err(_) => match self.driver.stat(&upload).await {
                        Ok(st) => st.modified,
                        Err(_) => continue,
                    },
                };
                if last < cutoff {
                    purged += 1;
                    if !dry_run {
                        self.delete_if_exists(&upload).await?;
                        self.uploads.remove(upload.rsplit('/').next().unwrap_or_default());
                    }
                }
            }
        }
        Ok(purged)
    }
}
