//! Client requests in the operation log (`oplog.client_requests`).
//!
//! Beside the backend operations the engine makes, the log can hold what
//! clients asked for: each Read, each ReadMany item and each Session fetch,
//! with the RPC method as the operation (`Read`, `ReadMany`, `Session`),
//! the peer's uid as `client_id` (`remote` for a TCP client), the URI and
//! range asked for, and the bytes answered. Its end is when the daemon had
//! the data (from the cache, the disk tier or the backend) — the wait a
//! trainer sees before its bytes flow — so a replay of these records
//! reproduces a job's requests, not the daemon's backend traffic. A failed
//! request is recorded with its error.

use sluice_engine::ReadOutput;
use sluice_proto::v1;
use sluice_storage::oplog::{InFlight, OpLog};
use tonic::Status;

/// Records one client's requests, when the log is set to.
#[derive(Debug, Clone, Default)]
pub(crate) struct ClientOps {
    /// `None` when client requests are not recorded.
    log: Option<OpLog>,
    client: String,
}

impl ClientOps {
    /// For the peer with `uid` (`None`: a TCP client).
    pub(crate) fn new(log: Option<&OpLog>, uid: Option<u32>) -> Self {
        ClientOps {
            log: log.filter(|l| l.client_requests()).cloned(),
            client: uid.map_or_else(|| "remote".to_owned(), |u| u.to_string()),
        }
    }

    /// Starts timing a request of `uri` (`None` while the log is off).
    pub(crate) fn begin(
        &self,
        op: &'static str,
        uri: &str,
        range: Option<&v1::ByteRange>,
    ) -> Option<InFlight> {
        let op = self
            .log
            .as_ref()?
            .begin(op, uri)?
            .client(self.client.clone());
        Some(match range {
            Some(r) if r.to_end => op.range(r.offset, None),
            Some(r) => op.range(r.offset, Some(r.length)),
            None => op,
        })
    }
}

/// Ends `op` with the read's outcome.
pub(crate) fn finish(op: Option<InFlight>, res: &Result<ReadOutput, Status>) {
    let Some(mut op) = op else { return };
    match res {
        Ok(out) => {
            op.first_byte();
            op.done(out.range.end - out.range.start);
        }
        Err(status) => op.failed(0, status.message()),
    }
}
