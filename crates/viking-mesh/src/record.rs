//! The mesh's own record in etcd: the cluster settings a joining machine
//! must learn before it can start its viking server (today the store prefix,
//! `--key`).
//!
//! `init` writes it once, as soon as the first etcd member is healthy;
//! `join` reads it through the members' etcd. It lives at `/viking-mesh`,
//! a key with a single `/`, so it can never fall inside a cluster's range
//! (every cluster key is `<prefix>/<something>`, whatever `--key` is).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use viking_core::records::{decode, encode, Record};
use viking_store::{EtcdStore, Store, StoreExt};

use crate::{MeshError, Result};

/// The record's key, relative to the root prefix `/`.
const RECORD_KEY: &str = "viking-mesh";
/// The store prefix of a mesh made before the record existed.
pub const DEFAULT_KEY: &str = "/viking";
const TIMEOUT: Duration = Duration::from_secs(15);

/// What a joining machine learns from the mesh.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeshRecord {
    /// The store prefix every viking server of the mesh uses (`--key`).
    pub key: String,
}

impl Record for MeshRecord {
    const KIND: &'static str = "mesh";
    const VERSION: u32 = 1;
}

/// The etcd store at the root of the key space.
async fn root(endpoints: &[String]) -> Result<EtcdStore> {
    tokio::time::timeout(TIMEOUT, EtcdStore::connect(endpoints, ""))
        .await
        .map_err(|_| MeshError::Etcd(format!("no answer within {TIMEOUT:?}")))?
        .map_err(|e| MeshError::Etcd(e.to_string()))
}

/// Write the mesh's record (`init`).
pub async fn write(endpoints: &[String], record: &MeshRecord) -> Result<()> {
    let store = root(endpoints).await?;
    let value = encode(record).map_err(|e| MeshError::Failed(e.to_string()))?;
    tokio::time::timeout(TIMEOUT, store.put(RECORD_KEY, value))
        .await
        .map_err(|_| {
            MeshError::Etcd(format!(
                "writing the mesh record: no answer within {TIMEOUT:?}"
            ))
        })?
        .map_err(|e| MeshError::Etcd(format!("writing the mesh record: {e}")))?;
    Ok(())
}

/// The mesh's record; `None` for a mesh made before it existed.
pub async fn read(endpoints: &[String]) -> Result<Option<MeshRecord>> {
    let store = root(endpoints).await?;
    let kv = tokio::time::timeout(TIMEOUT, store.get(RECORD_KEY))
        .await
        .map_err(|_| {
            MeshError::Etcd(format!(
                "reading the mesh record: no answer within {TIMEOUT:?}"
            ))
        })?
        .map_err(|e| MeshError::Etcd(format!("reading the mesh record: {e}")))?;
    kv.map(|kv| decode::<MeshRecord>(&kv.value))
        .transpose()
        .map_err(|e| MeshError::Etcd(format!("the mesh record at /{RECORD_KEY}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_record_round_trips_in_its_envelope() {
        let r = MeshRecord { key: "/x".into() };
        let bytes = encode(&r).unwrap();
        assert!(String::from_utf8_lossy(&bytes).contains("\"v\":1"));
        assert_eq!(decode::<MeshRecord>(&bytes).unwrap(), r);
    }
}
