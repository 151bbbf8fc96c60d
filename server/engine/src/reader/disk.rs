//! The disk tier below the RAM cache, as a leader's first try.

use std::ops::Range;
use std::sync::Arc;

use sluice_storage::{ObjectUri, Storage};

use super::{For, Got, Leader, Reader, Source};
use crate::cache::same_version;
use crate::disk::DiskTier;
use crate::error::ReadError;
use crate::reader::ReadOutput;

impl Reader {
    /// Serves a RAM miss from the disk tier: the entry revalidated as a
    /// cached one would be, read into an arena extent, checked, cached.
    /// Gives the leader back when the disk cannot serve it.
    pub(super) async fn read_from_disk(
        &self,
        disk: &DiskTier,
        leader: Leader,
        storage: &Arc<dyn Storage>,
        uri: &ObjectUri,
        range: Option<Range<u64>>,
        client: For<'_>,
    ) -> Result<Result<ReadOutput, Leader>, ReadError> {
        let key = &leader.key;
        let Some(entry) = disk.lookup(key) else {
            disk.metrics().misses.inc();
            return Ok(Err(leader));
        };
        let size = entry.meta().size;
        if size > self.max_cached() {
            disk.metrics().misses.inc();
            return Ok(Err(leader));
        }
        if !entry.fresh(disk.now_ms(), self.config.revalidate_after) {
            match storage.head(uri).await {
                Ok(current) if same_version(&entry.meta(), &current) => disk.validated(key, &entry),
                Ok(_) => {
                    disk.stale(key, &entry);
                    disk.metrics().misses.inc();
                    return Ok(Err(leader));
                }
                Err(e) => {
                    if e.kind() == sluice_storage::ErrorKind::NotFound {
                        disk.stale(key, &entry);
                    }
                    return Err(e.into());
                }
            }
        }
        let memory = self.memory(client.0, client.1);
        let hold = client
            .0
            .acquire(size)
            .await
            .map_err(|e| ReadError::memory(uri, e))?;
        let (filling, buf) = memory.reserve_budget(uri, size).await?.into_read_buf();
        let (good, buf) = disk.read(key, &entry, buf).await;
        drop(buf);
        let data = match filling.into_bytes() {
            Some(data) if good => data,
            _ => {
                disk.metrics().misses.inc();
                return Ok(Err(leader));
            }
        };
        disk.metrics().hits.inc();
        let got = Got {
            meta: entry.meta(),
            data,
            hold,
            source: Source::Disk,
        };
        self.finish_lead(leader, uri, range, got).map(Ok)
    }
}
