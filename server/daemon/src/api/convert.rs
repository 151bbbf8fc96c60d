//! Storage types to wire types.

use sluice_proto::v1;
use sluice_storage::ObjectMeta;

/// Metadata on the wire.
pub fn meta(m: &ObjectMeta) -> v1::ObjectMeta {
    v1::ObjectMeta {
        uri: m.uri.clone(),
        size: m.size,
        etag: m.etag.clone().unwrap_or_default(),
        last_modified: m.last_modified.map(prost_types::Timestamp::from),
        version: m.version.clone().unwrap_or_default(),
    }
}
