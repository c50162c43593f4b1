//! What the single-host tests share: this crate's `viking` binary, the job
//! image, and starting a [`LocalServer`] (the harness itself lives in
//! viking-testkit). Each test binary uses part of it.

pub use std::time::Duration;
pub use viking_testkit::local::{free_port, LocalServer};
pub use viking_testkit::{eventually, unique, POLL};

use std::process::{Command, Output, Stdio};

pub const BUSYBOX: &str = "viking-test/busybox";

/// The `viking` binary cargo built for these tests.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_viking")
}

/// A fresh `viking server` on the local engine.
pub fn start() -> LocalServer {
    LocalServer::start(bin())
}

/// A fresh `viking server` with extra arguments.
pub fn start_with(extra: &[&str]) -> LocalServer {
    LocalServer::start_with(bin(), extra)
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `docker ARGS...` on the local engine.
pub fn docker(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("docker")
}
