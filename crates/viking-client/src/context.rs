//! A CLI context: which server to talk to, the CA its certificate must
//! chain to, and the operator's token, in one file.
//!
//! `viking mesh init` and `viking mesh join` write one on each machine
//! (`<data-dir>/context.json`, mode 0600), which the CLI uses when no
//! server is given; `viking context export` prints it for another machine,
//! where `viking --context FILE` uses it. The token is sent only to a
//! server whose certificate chains to the context's CA.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// The file name of the context a mesh machine keeps in its data directory.
pub const CONTEXT_FILE: &str = "context.json";

/// What the CLI needs to reach a cluster.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Context {
    /// `https://HOST:PORT` (or `http://` for a lab of `--insecure-http`
    /// servers).
    pub server: String,
    /// The cluster's CA certificate (PEM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
    /// The operator's token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("server", &self.server)
            .field("ca", &self.ca.is_some())
            .field("token", &self.token.as_ref().map(|_| "<token>"))
            .finish()
    }
}

/// A context file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    #[error("context {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("context {path}: not a viking context: {source}")]
    Format {
        path: String,
        source: serde_json::Error,
    },
    #[error("context {path}: {why}")]
    Invalid { path: String, why: String },
}

impl Context {
    /// Read a context file.
    pub fn load(path: &Path) -> Result<Context, ContextError> {
        let p = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|source| ContextError::Io {
            path: p.clone(),
            source,
        })?;
        let c: Context = serde_json::from_slice(&bytes).map_err(|source| ContextError::Format {
            path: p.clone(),
            source,
        })?;
        c.check()
            .map_err(|why| ContextError::Invalid { path: p, why })?;
        Ok(c)
    }

    /// What is wrong with it, if anything: an `https://` server needs a CA.
    pub fn check(&self) -> Result<(), String> {
        if !(self.server.starts_with("https://") || self.server.starts_with("http://")) {
            return Err(format!(
                "server {:?} must start with https:// or http://",
                self.server
            ));
        }
        if self.server.starts_with("https://") && self.ca.is_none() {
            return Err(format!(
                "server {} is https:// but the context has no CA",
                self.server
            ));
        }
        Ok(())
    }

    /// Write it to `path` (mode 0600, replaced atomically).
    pub fn save(&self, path: &Path) -> Result<(), ContextError> {
        let p = path.display().to_string();
        let io = |source| ContextError::Io {
            path: p.clone(),
            source,
        };
        let mut json = serde_json::to_vec_pretty(self).map_err(|source| ContextError::Format {
            path: p.clone(),
            source,
        })?;
        json.push(b'\n');
        let tmp = path.with_extension("json.tmp");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io)?;
        f.write_all(&json).and_then(|_| f.sync_all()).map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_context_round_trips_privately_and_hides_its_token() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("viking-ctx-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join(CONTEXT_FILE);
        let c = Context {
            server: "https://10.0.0.1:8791".into(),
            ca: Some("-----BEGIN CERTIFICATE-----\n".into()),
            token: Some("sekrit".into()),
        };
        c.save(&path).expect("save");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(Context::load(&path).expect("load"), c);
        assert!(!format!("{c:?}").contains("sekrit"));
        let no_ca = Context { ca: None, ..c };
        assert!(no_ca.check().is_err());
        std::fs::write(&path, b"{\"server\":\"ftp://x\"}").expect("write");
        assert!(matches!(
            Context::load(&path),
            Err(ContextError::Invalid { .. })
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
