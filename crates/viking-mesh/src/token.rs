//! `viking mesh token [--rotate]`: print the mesh's join token, or replace
//! it.
//!
//! The token lives in the cluster's store (`mesh/join`), which only holders
//! of a cluster certificate can read, so any machine of the mesh prints it.
//! Every server reads it afresh at each join, so a rotation takes effect at
//! once, without a restart, and machines already in the mesh are not
//! touched: their certificates, not the token, are what they use.

use std::path::Path;

use viking_core::keys;
use viking_core::records::{decode, encode, JoinRecord};
use viking_pki::JoinToken;
use viking_store::{Store, StoreExt};

use crate::state::DataDir;
use crate::status::endpoints_of;
use crate::{MeshError, Result};

/// `viking mesh token`: the current join token; with `rotate`, a new one
/// that replaces it.
pub async fn token(data_dir: &Path, rotate: bool) -> Result<()> {
    let dd = DataDir::new(data_dir)?;
    let st = dd.load()?;
    let store = dd.store(&endpoints_of(&st), &st.key).await?;
    let current = store
        .get(keys::MESH_JOIN)
        .await
        .map_err(|e| MeshError::Etcd(format!("reading the join token: {e}")))?
        .ok_or_else(|| {
            MeshError::Failed(
                "the store holds no join token (was this mesh made by `viking mesh init`?)".into(),
            )
        })?;
    let record: JoinRecord = decode(&current.value)
        .map_err(|e| MeshError::Failed(format!("the join token in the store: {e}")))?;
    if !rotate {
        println!(
            "{}",
            JoinToken {
                fingerprint: record.fingerprint,
                secret: record.secret,
            }
        );
        return Ok(());
    }
    let fresh = JoinToken::new(&record.fingerprint);
    let value = encode(&JoinRecord {
        fingerprint: fresh.fingerprint.clone(),
        secret: fresh.secret.clone(),
    })
    .map_err(|e| MeshError::Failed(e.to_string()))?;
    // Only if nobody rotated it meanwhile: two rotations at once leave one
    // token, the one printed.
    let swapped = store
        .cas(keys::MESH_JOIN, current.mod_revision, value)
        .await
        .map_err(|e| MeshError::Etcd(format!("writing the join token: {e}")))?;
    if !swapped {
        return Err(MeshError::Failed(
            "the join token was changed by someone else meanwhile: run `viking mesh token` to see it"
                .into(),
        ));
    }
    println!("{fresh}");
    eprintln!("the previous join token no longer admits machines; machines already in the mesh are not affected");
    Ok(())
}
