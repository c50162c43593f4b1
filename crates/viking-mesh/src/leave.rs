//! `viking mesh leave`: take this machine out of the mesh: its etcd member
//! is removed (unless it is the last one), its supervisor, server and etcd
//! stopped, its entries removed from floki and its mesh files deleted.

use std::path::Path;
use std::time::Duration;

use viking_core::keys;
use viking_store::etcd::membership::{client_urls, Member};
use viking_store::StoreExt;

use crate::state::{DataDir, EtcdRunner, Role};
use crate::status::{endpoints_of, servers};
use crate::supervisor::{self, local_peer, log};
use crate::{MeshError, Result};

/// `viking mesh leave`: take this machine out of the mesh.
pub async fn leave(data_dir: &Path, force: bool) -> Result<()> {
    let dd = DataDir::new(data_dir)?;
    let st = dd.load()?;
    let eps = endpoints_of(&st);
    let mut last_member = false;
    let mut remaining: Vec<String> = eps.clone();
    if st.role == Role::Member {
        match dd.members(eps.clone())?.list().await {
            Ok(list) => {
                let me = list
                    .iter()
                    .find(|m| m.name == st.name || m.peer_urls.contains(&local_peer(&st)));
                let others: Vec<Member> = list
                    .iter()
                    .filter(|m| Some(m.id) != me.map(|m| m.id))
                    .cloned()
                    .collect();
                remaining = client_urls(&others);
                if others.is_empty() {
                    last_member = true;
                    let alive: Vec<String> = servers(&dd, &eps, &st.key)
                        .await
                        .unwrap_or_default()
                        .into_iter()
                        .filter(|s| s.alive && s.name != st.name)
                        .map(|s| s.name)
                        .collect();
                    if !alive.is_empty() && !force {
                        return Err(MeshError::Failed(format!(
                            "{} runs the last etcd member and {} still use it: \
                             run `viking mesh leave` on them first (or --force to end the mesh)",
                            st.name,
                            alive.join(", ")
                        )));
                    }
                } else if let Some(me) = me {
                    let ids: Vec<String> = others.iter().map(|m| m.name.clone()).collect();
                    dd.members(remaining.clone())?
                        .remove(me.id)
                        .await
                        .map_err(|e| {
                            MeshError::Failed(format!(
                                "removing this machine's etcd member through {}: {e}",
                                ids.join(", ")
                            ))
                        })?;
                    println!("removed etcd member {} ({:x})", st.name, me.id);
                }
            }
            Err(e) if force => log(format!("cannot list the etcd members ({e}); --force")),
            Err(e) => return Err(e.into()),
        }
    }
    supervisor::stop(&dd, true).await?;
    if matches!(st.etcd, Some(EtcdRunner::Image(_))) && st.role == Role::Member {
        if let Err(e) = supervisor::remove_etcd_container().await {
            log(format!("removing the etcd container: {e}"));
        }
    }
    println!("stopped the viking server{}", {
        if st.role == Role::Member {
            " and etcd"
        } else {
            ""
        }
    });
    if !last_member {
        let gone = async {
            let store = dd.store(&remaining, &st.key).await?;
            for k in [keys::host(&st.name), keys::fleet(&st.name)] {
                store
                    .delete(&k)
                    .await
                    .map_err(|e| MeshError::Etcd(e.to_string()))?;
            }
            Ok::<(), MeshError>(())
        };
        match tokio::time::timeout(Duration::from_secs(20), gone).await {
            Ok(Ok(())) => println!("removed {} from the fleet", st.name),
            Ok(Err(e)) if force => log(format!("removing {} from floki: {e}", st.name)),
            Ok(Err(e)) => return Err(e),
            Err(_) if force => log("removing from floki timed out"),
            Err(_) => {
                return Err(MeshError::Etcd(
                    "removing this server from floki timed out".into(),
                ))
            }
        }
    }
    dd.remove_mesh_files();
    println!("{} has left the mesh", st.name);
    Ok(())
}
