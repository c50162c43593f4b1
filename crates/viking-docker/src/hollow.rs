//! The hollow engine: a [`FakeRuntime`] set up to stand in for a real
//! Docker engine in scale tests (`viking server --runtime hollow`), as
//! Kubernetes' kubemark stands hollow nodes in for kubelets.
//!
//! Every image is there, containers run until told otherwise, take
//! [`HollowSpec::start_delay`] to start (a real engine here takes about
//! 300 ms), publish their ports from the engine's own counter, use
//! [`HollowSpec::container_memory`] each, and the engine reports the
//! capacity it is given. It keeps no log of calls, so it can run for hours.
//! Nothing runs: it is for measuring viking's control plane, never for
//! running workloads.

use std::time::Duration;

use crate::fake::FakeRuntime;
use crate::EngineInfo;

/// What a hollow engine reports and how it behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HollowSpec {
    /// CPUs it reports.
    pub cpus: u64,
    /// Memory it reports, in bytes.
    pub memory: u64,
    /// How long a container takes to start.
    pub start_delay: Duration,
    /// Memory each running container uses, in bytes.
    pub container_memory: u64,
}

impl Default for HollowSpec {
    fn default() -> Self {
        Self {
            cpus: 4,
            memory: 8 << 30,
            start_delay: Duration::from_millis(300),
            container_memory: 8 << 20,
        }
    }
}

/// A hollow engine as `spec` says.
pub fn engine(spec: HollowSpec) -> FakeRuntime {
    let rt = FakeRuntime::new();
    rt.keep_no_calls();
    rt.have_every_image();
    rt.set_start_delay(spec.start_delay);
    rt.set_container_memory(spec.container_memory);
    rt.set_info(EngineInfo {
        cpus: spec.cpus,
        memory: spec.memory,
    });
    rt
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ContainerSpec, Runtime};
    use std::path::Path;
    use viking_core::Job;

    #[tokio::test]
    async fn a_hollow_engine_runs_any_image_and_keeps_no_log() {
        let rt = engine(HollowSpec {
            start_delay: Duration::ZERO,
            cpus: 64,
            memory: 1 << 40,
            container_memory: 5 << 20,
        });
        assert_eq!(rt.info().await.unwrap().cpus, 64);
        let doc = r#"{"name":"web","image":"example/never-pulled:1","ports":["80"]}"#;
        let job = Job::parse(doc.as_bytes(), String::new).unwrap();
        let spec = ContainerSpec::for_job(&job, "n1", "c1", Path::new("/data"));
        assert!(rt.image_id(&spec.image).await.unwrap().is_some());
        let id = rt.create(&spec).await.unwrap();
        assert_eq!(rt.memory_used(&id), None, "not running yet");
        rt.start(&id).await.unwrap();
        assert_eq!(rt.memory_used(&id), Some(5 << 20));
        let info = rt.inspect(&id).await.unwrap().unwrap();
        assert_eq!(info.status, "running");
        assert_eq!(info.ports.len(), 1, "its port is published");
        assert!(rt.calls().is_empty());
    }
}
