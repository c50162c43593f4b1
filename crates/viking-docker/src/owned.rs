//! [`OwnedRuntime`]: a [`Runtime`] that changes only its own cluster's
//! containers.
//!
//! Stop, kill, remove, rename and start take a container id that the caller
//! read from a record or a listing. A record can be stale, or name a
//! container that was never this cluster's; so before acting, the container
//! is looked up again (inspect, then act): one without viking's
//! [`LABEL_JOB`], or whose [`LABEL_CLUSTER`] is another cluster's, is
//! refused with [`RuntimeError::NotFound`] and left as it is. A container
//! that passes is acted on by its full id, so a name taken over in between
//! is never touched. A container that does not exist gets what the engine
//! would answer (stopping, killing or removing it succeeds; starting or
//! renaming it is [`RuntimeError::NotFound`]).
//!
//! The server wraps its runtime in one at start, so every caller above the
//! seam gets the check.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use futures::stream::BoxStream;

use crate::{
    Attached, ContainerEvent, ContainerInfo, ContainerSpec, EngineInfo, Output, Result, Runtime,
    RuntimeError, LABEL_CLUSTER, LABEL_JOB,
};

/// Any container's full id and labels, whoever made it: what
/// [`Runtime::labels`] answers, for ownership checks only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Labelled {
    pub id: String,
    pub labels: HashMap<String, String>,
}

/// A runtime whose stop, kill, remove, rename and start act only on
/// containers of `cluster` (see the module docs); everything else is the
/// inner runtime's.
pub struct OwnedRuntime {
    inner: Arc<dyn Runtime>,
    cluster: String,
}

/// What a container reference turned out to be.
enum Ownership {
    /// This cluster's job container, by its full id.
    Ours(String),
    Absent,
}

impl OwnedRuntime {
    pub fn new(inner: Arc<dyn Runtime>, cluster: impl Into<String>) -> Self {
        Self {
            inner,
            cluster: cluster.into(),
        }
    }

    /// The cluster whose containers this runtime changes.
    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    async fn check(&self, id: &str) -> Result<Ownership> {
        let Some(found) = self.inner.labels(id).await? else {
            return Ok(Ownership::Absent);
        };
        let ours = found.labels.contains_key(LABEL_JOB)
            && found.labels.get(LABEL_CLUSTER).map(String::as_str) == Some(self.cluster.as_str());
        if ours {
            Ok(Ownership::Ours(found.id))
        } else {
            Err(RuntimeError::NotFound(format!(
                "{id} (not a container of viking cluster {})",
                self.cluster
            )))
        }
    }
}

#[async_trait]
impl Runtime for OwnedRuntime {
    async fn info(&self) -> Result<EngineInfo> {
        self.inner.info().await
    }

    async fn ping(&self) -> Result<()> {
        self.inner.ping().await
    }

    async fn image_id(&self, image: &str) -> Result<Option<String>> {
        self.inner.image_id(image).await
    }

    fn pull(&self, image: &str) -> BoxStream<'static, Result<String>> {
        self.inner.pull(image)
    }

    async fn create(&self, spec: &ContainerSpec) -> Result<String> {
        self.inner.create(spec).await
    }

    async fn attach(&self, id: &str) -> Result<Attached> {
        self.inner.attach(id).await
    }

    async fn exec(&self, id: &str, cmd: &[String], tty: bool) -> Result<(String, Attached)> {
        match self.check(id).await? {
            Ownership::Ours(id) => self.inner.exec(&id, cmd, tty).await,
            Ownership::Absent => Err(RuntimeError::NotFound(id.to_string())),
        }
    }

    async fn images(&self) -> Result<Vec<crate::ImageInfo>> {
        self.inner.images().await
    }

    async fn exec_exit_code(&self, exec_id: &str) -> Result<Option<i64>> {
        self.inner.exec_exit_code(exec_id).await
    }

    async fn start(&self, id: &str) -> Result<()> {
        match self.check(id).await? {
            Ownership::Ours(id) => self.inner.start(&id).await,
            Ownership::Absent => Err(RuntimeError::NotFound(id.to_string())),
        }
    }

    async fn wait(&self, id: &str) -> Result<i64> {
        self.inner.wait(id).await
    }

    async fn inspect(&self, id: &str) -> Result<Option<ContainerInfo>> {
        self.inner.inspect(id).await
    }

    async fn stop(&self, id: &str, timeout_secs: i64) -> Result<()> {
        match self.check(id).await? {
            Ownership::Ours(id) => self.inner.stop(&id, timeout_secs).await,
            Ownership::Absent => Ok(()),
        }
    }

    async fn kill(&self, id: &str, signal: &str) -> Result<()> {
        match self.check(id).await? {
            Ownership::Ours(id) => self.inner.kill(&id, signal).await,
            Ownership::Absent => Ok(()),
        }
    }

    async fn remove(&self, id: &str, force: bool) -> Result<()> {
        match self.check(id).await? {
            Ownership::Ours(id) => self.inner.remove(&id, force).await,
            Ownership::Absent => Ok(()),
        }
    }

    async fn rename(&self, id: &str, new_name: &str) -> Result<()> {
        match self.check(id).await? {
            Ownership::Ours(id) => self.inner.rename(&id, new_name).await,
            Ownership::Absent => Err(RuntimeError::NotFound(id.to_string())),
        }
    }

    async fn bridge_gateway(&self) -> Result<Option<String>> {
        self.inner.bridge_gateway().await
    }

    async fn list(&self, cluster: &str) -> Result<Vec<ContainerInfo>> {
        self.inner.list(cluster).await
    }

    async fn host_port_in_use(&self, port: u16, proto: viking_core::Proto) -> Result<bool> {
        self.inner.host_port_in_use(port, proto).await
    }

    fn events_for(&self, cluster: &str) -> BoxStream<'static, Result<ContainerEvent>> {
        self.inner.events_for(cluster)
    }

    fn events(&self) -> BoxStream<'static, Result<ContainerEvent>> {
        self.inner.events()
    }

    fn logs(&self, id: &str, follow: bool) -> BoxStream<'static, Result<Output>> {
        self.inner.logs(id, follow)
    }

    async fn labels(&self, id: &str) -> Result<Option<Labelled>> {
        self.inner.labels(id).await
    }

    fn memory_used(&self, id: &str) -> Option<u64> {
        self.inner.memory_used(id)
    }

    fn cpu_used(&self, id: &str) -> Option<u64> {
        self.inner.cpu_used(id)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::fake::{Call, FakeRuntime};

    fn spec(job: &str, cluster: &str) -> ContainerSpec {
        let doc = format!(r#"{{"name":"{job}","image":"img"}}"#);
        let job = viking_core::Job::parse(doc.as_bytes(), String::new).expect("job");
        ContainerSpec::for_job(&job, "n1", cluster, Path::new("/d"))
    }

    async fn running(fake: &FakeRuntime, spec: &ContainerSpec) -> String {
        let id = fake.create(spec).await.expect("create");
        fake.start(&id).await.expect("start");
        id
    }

    #[tokio::test]
    async fn only_the_clusters_own_containers_are_changed() {
        let fake = FakeRuntime::new();
        fake.add_image("img");
        let rt = OwnedRuntime::new(Arc::new(fake.clone()), "/viking");
        let mine = running(&fake, &spec("mine", "/viking")).await;
        let theirs = running(&fake, &spec("theirs", "/other")).await;
        let mut plain = spec("plain", "/viking");
        plain.labels.clear();
        let plain = running(&fake, &plain).await;
        fake.clear_calls();
        for id in [&theirs, &plain] {
            for r in [
                rt.stop(id, 1).await,
                rt.kill(id, "KILL").await,
                rt.remove(id, true).await,
                rt.rename(id, "elsewhere").await,
                rt.start(id).await,
            ] {
                assert!(matches!(r, Err(RuntimeError::NotFound(_))), "{r:?}");
            }
            let c = fake.container(id).expect("still there");
            assert_eq!(c.status, "running");
        }
        // Nothing reached the engine but the look-ups.
        assert_eq!(fake.calls(), Vec::<Call>::new());
        // Its own, by a short id too: acted on by the full id.
        rt.stop(&mine[..12], 1).await.expect("stop");
        assert!(fake.calls().contains(&Call::Stop {
            id: mine.clone(),
            timeout_secs: 1
        }));
        rt.remove(&mine, true).await.expect("remove");
        assert!(fake.container(&mine).is_none());
        // Gone: stop, kill and remove succeed, as the engine's do.
        rt.stop(&mine, 1).await.expect("stop a removed container");
        rt.kill(&mine, "KILL")
            .await
            .expect("kill a removed container");
        rt.remove(&mine, true)
            .await
            .expect("remove a removed container");
        assert!(matches!(
            rt.start(&mine).await,
            Err(RuntimeError::NotFound(_))
        ));
    }
}
