//! Where the CLI talks to, and `viking context`.
//!
//! [`resolve`] decides the server, the CA its certificate must chain to and
//! the token, field by field: `--server`/`VIKING_SERVER`, `--token`,
//! `--token-file` and `--ca` win; then the context of `--context FILE`
//! (`VIKING_CONTEXT`); then `<data dir>/context.json` when it exists (what
//! `viking mesh init` and `join` write); then the local defaults
//! (`http://127.0.0.1:8791` and the local server's token file).
//!
//! A context's token goes only where the context trusts: with the context's
//! CA (an `https://` server must prove a certificate from it before
//! anything is sent, see [`viking_client::Client::with_tls`]), or to the
//! context's own server. A `--ca` of another cluster, or another plain
//! `http://` server, does not get it.
//!
//! `viking context show` prints the resolved target without the token;
//! `viking context export` prints it as a context file, token included, for
//! the operator's other machine.

use std::path::{Path, PathBuf};

use clap::Subcommand;
use viking_client::context::{Context, CONTEXT_FILE};

use crate::Failure;

/// The server of a machine without a context.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:8791";

#[derive(Subcommand, Debug)]
pub enum ContextCommand {
    /// Show where the CLI talks to: the server, the CA's fingerprint, and
    /// whether a token is known (never the token).
    Show {
        #[arg(long)]
        json: bool,
    },
    /// Print the context in use as JSON, token included, for another
    /// machine: `viking context export > FILE`, then `viking --context FILE
    /// ...` there. Whoever can read FILE can run the cluster: keeping it
    /// private (chmod 600, a safe way to the other machine) is yours to do.
    ///
    /// With `--docker DIR`: the same for the docker CLI, which viking's
    /// servers answer too: DIR/config.json sends the token (its
    /// `HttpHeaders`), DIR/ca.pem is the cluster's CA, and the lines to
    /// source are printed (`DOCKER_HOST`, `DOCKER_CONFIG`,
    /// `DOCKER_CERT_PATH`, `DOCKER_TLS_VERIFY`).
    Export {
        #[arg(long, value_name = "DIR")]
        docker: Option<PathBuf>,
    },
}

/// The CLI's own flags about where to talk to.
#[derive(Debug, Clone, Default)]
pub struct Flags {
    pub server: Option<String>,
    pub token: Option<String>,
    pub token_file: Option<PathBuf>,
    pub ca: Option<PathBuf>,
    pub context: Option<PathBuf>,
}

/// Where a target's values came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `--context FILE` (or `VIKING_CONTEXT`).
    Given(PathBuf),
    /// `<data dir>/context.json`.
    Default(PathBuf),
    /// No context: flags and the local defaults.
    None,
}

/// What the CLI talks to.
#[derive(Clone)]
pub struct Target {
    pub server: String,
    pub token: Option<String>,
    /// The CA (PEM) an `https://` server's certificate must chain to.
    pub ca_pem: Option<String>,
    /// Where the CA came from, for errors (`--ca FILE`, `context FILE`).
    pub ca_from: String,
    pub source: Source,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("server", &self.server)
            .field("token", &self.token.is_some())
            .field("ca_from", &self.ca_from)
            .field("source", &self.source)
            .finish()
    }
}

impl Target {
    /// As a context file.
    pub fn context(&self) -> Context {
        Context {
            server: self.server.clone(),
            ca: self.ca_pem.clone(),
            token: self.token.clone(),
        }
    }
}

fn load(path: &Path, flag: &str) -> Result<Context, Failure> {
    Context::load(path).map_err(|e| Failure::new(2, format!("{flag}{e}")))
}

/// Resolve flags, context and defaults into a target; `data_dir` is where
/// the default context and the local token file are.
pub fn resolve(flags: &Flags, data_dir: &Path) -> Result<Target, Failure> {
    let (ctx, source) = match &flags.context {
        Some(path) => (
            Some(load(path, "--context: ")?),
            Source::Given(path.clone()),
        ),
        None => {
            let path = data_dir.join(CONTEXT_FILE);
            if path.exists() {
                (Some(load(&path, "")?), Source::Default(path))
            } else {
                (None, Source::None)
            }
        }
    };
    let context_name = match &source {
        Source::Given(p) | Source::Default(p) => format!("context {}", p.display()),
        Source::None => String::new(),
    };
    let server = flags
        .server
        .clone()
        .or_else(|| ctx.as_ref().map(|c| c.server.clone()))
        .unwrap_or_else(|| DEFAULT_SERVER.to_string());
    let ctx_ca = ctx.as_ref().and_then(|c| c.ca.clone());
    let (ca_pem, ca_from) = match &flags.ca {
        Some(path) => {
            let pem = std::fs::read_to_string(path)
                .map_err(|e| Failure::new(2, format!("--ca {}: {e}", path.display())))?;
            (Some(pem), format!("--ca {}", path.display()))
        }
        None => (ctx_ca.clone(), context_name),
    };
    let explicit = match (&flags.token, &flags.token_file) {
        (_, Some(f)) => Some(crate::read_token_file(f).map_err(|e| Failure::new(2, e))?),
        (Some(t), None) => Some(t.clone()),
        (None, None) => None,
    };
    let token = match (explicit, &ctx) {
        (Some(t), _) => Some(t),
        (None, Some(c)) => {
            // The context's CA guards an https server; its own server is
            // its own. Anything else does not get its token.
            let its_ca = ca_pem.is_some() && ca_pem == ctx_ca;
            let guarded = server.starts_with("https://") && its_ca;
            let its_server = server == c.server && ca_pem == ctx_ca;
            if guarded || its_server {
                c.token.clone()
            } else {
                local_token(data_dir)
            }
        }
        (None, None) => local_token(data_dir),
    };
    Ok(Target {
        server,
        token,
        ca_pem,
        ca_from,
        source,
    })
}

/// The local server's token file, if readable.
fn local_token(data_dir: &Path) -> Option<String> {
    std::fs::read_to_string(data_dir.join("token"))
        .ok()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
}

/// `viking context show|export`.
pub fn run(target: &Target, c: ContextCommand) -> Result<i32, Failure> {
    match c {
        ContextCommand::Export { docker: Some(dir) } => {
            let ctx = target.context();
            ctx.check().map_err(|e| Failure::new(1, e))?;
            print!("{}", export_docker(&ctx, &dir)?);
            Ok(0)
        }
        ContextCommand::Export { docker: None } => {
            let ctx = target.context();
            ctx.check().map_err(|e| Failure::new(1, e))?;
            let s =
                serde_json::to_string_pretty(&ctx).map_err(|e| Failure::new(1, e.to_string()))?;
            println!("{s}");
            Ok(0)
        }
        ContextCommand::Show { json } => {
            let fingerprint = match &target.ca_pem {
                Some(pem) => Some(
                    viking_pki::fingerprint(pem)
                        .map_err(|e| Failure::new(1, format!("{}: {e}", target.ca_from)))?,
                ),
                None => None,
            };
            let context = match &target.source {
                Source::Given(p) | Source::Default(p) => Some(p.display().to_string()),
                Source::None => None,
            };
            if json {
                let v = serde_json::json!({
                    "context": context,
                    "server": target.server,
                    "ca_fingerprint": fingerprint,
                    "token": target.token.is_some(),
                });
                crate::print_json(&v)?;
            } else {
                println!(
                    "context:         {}",
                    context.as_deref().unwrap_or("(none: flags and defaults)")
                );
                println!("server:          {}", target.server);
                println!(
                    "CA fingerprint:  {}",
                    fingerprint.as_deref().unwrap_or("(none)")
                );
                println!(
                    "token:           {}",
                    if target.token.is_some() {
                        "present"
                    } else {
                        "absent"
                    }
                );
            }
            Ok(0)
        }
    }
}

/// Writes the docker CLI's files for `ctx` into `dir` (made 0700; the
/// files 0600) and returns the shell lines that point the docker CLI at
/// them.
pub fn export_docker(ctx: &Context, dir: &Path) -> Result<String, Failure> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let fail =
        |what: &str, e: std::io::Error| Failure::new(1, format!("{}: {what}: {e}", dir.display()));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| fail("making the directory", e))?;
    let write = |name: &str, body: &[u8]| -> Result<(), Failure> {
        use std::io::Write;
        let path = dir.join(name);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| fail(name, e))?;
        f.write_all(body).map_err(|e| fail(name, e))
    };
    let Some(token) = &ctx.token else {
        return Err(Failure::new(
            1,
            "no token to export: pass --token-file or use a context with one",
        ));
    };
    let config = serde_json::json!({
        "HttpHeaders": {"Authorization": format!("Bearer {token}")}
    });
    write("config.json", config.to_string().as_bytes())?;
    let host = ctx
        .server
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .trim_end_matches('/');
    let mut lines = format!(
        "export DOCKER_HOST=tcp://{host}\nexport DOCKER_CONFIG={}\n",
        dir.display()
    );
    match &ctx.ca {
        Some(ca) if ctx.server.starts_with("https://") => {
            write("ca.pem", ca.as_bytes())?;
            lines.push_str(&format!(
                "export DOCKER_CERT_PATH={}\nexport DOCKER_TLS_VERIFY=1\n",
                dir.display()
            ));
        }
        _ => lines.push_str("unset DOCKER_CERT_PATH DOCKER_TLS_VERIFY\n"),
    }
    Ok(lines)
}

/// Asks the cluster for a client certificate and writes it with its key
/// into `dir` (`cert.pem`, `key.pem` 0600: what `DOCKER_CERT_PATH` reads).
/// The key never leaves this machine.
pub async fn docker_certificate(c: &viking_client::Client, dir: &Path) -> Result<(), String> {
    let user = std::env::var("USER").unwrap_or_else(|_| "docker".to_string());
    let name: String = user
        .chars()
        .filter(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '-' | '_' | '.'))
        .take(64)
        .collect();
    let name = if name.is_empty() {
        "docker".to_string()
    } else {
        name
    };
    let issued = viking_pki::key_and_request(&name).map_err(|e| e.to_string())?;
    let req = viking_client::api::ClientCertRequest {
        name,
        csr_pem: issued.cert_pem,
    };
    let signed = c
        .client_certificate(&req)
        .await
        .map_err(|e| e.to_string())?;
    viking_pki::write_file(&dir.join("key.pem"), &issued.key_pem, 0o600)
        .map_err(|e| e.to_string())?;
    viking_pki::write_file(&dir.join("cert.pem"), &signed.cert_pem, 0o644)
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn export_docker_writes_the_token_header_and_the_ca() {
        let d = dir();
        let out = d.path().join("docker");
        let ctx = Context {
            server: "https://10.0.0.1:8791".into(),
            ca: Some("-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n".into()),
            token: Some("tok".into()),
        };
        let lines = export_docker(&ctx, &out).unwrap();
        assert!(lines.contains("export DOCKER_HOST=tcp://10.0.0.1:8791\n"));
        assert!(lines.contains("export DOCKER_TLS_VERIFY=1\n"));
        let config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap())
                .unwrap();
        assert_eq!(config["HttpHeaders"]["Authorization"], "Bearer tok");
        assert!(std::fs::read_to_string(out.join("ca.pem"))
            .unwrap()
            .contains("BEGIN CERTIFICATE"));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(out.join("config.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    /// A scratch directory, removed when dropped.
    struct Scratch(PathBuf);

    impl Scratch {
        fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn dir() -> Scratch {
        // Tests run at once in one process: a counter keeps their
        // directories apart (the time alone did not).
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let p = std::env::temp_dir().join(format!(
            "viking-cli-context-{}-{}-{n}",
            std::process::id(),
            crate::table::now_ms()
        ));
        std::fs::create_dir_all(&p).unwrap();
        Scratch(p)
    }

    fn ctx(server: &str, ca: &str, token: &str) -> Context {
        Context {
            server: server.into(),
            ca: Some(ca.into()),
            token: Some(token.into()),
        }
    }

    #[test]
    fn flags_win_then_the_given_context_then_the_default_one_then_defaults() {
        let d = dir();
        let data = d.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        // Nothing: the local defaults, with the local token file.
        let t = resolve(&Flags::default(), &data).unwrap();
        assert_eq!(t.server, DEFAULT_SERVER);
        assert_eq!(t.token, None);
        std::fs::write(data.join("token"), "local\n").unwrap();
        let t = resolve(&Flags::default(), &data).unwrap();
        assert_eq!(t.token.as_deref(), Some("local"));
        assert_eq!(t.source, Source::None);
        // The default context file.
        ctx("https://10.0.0.1:8791", "CA-DEFAULT", "tok-default")
            .save(&data.join(CONTEXT_FILE))
            .unwrap();
        let t = resolve(&Flags::default(), &data).unwrap();
        assert_eq!(t.server, "https://10.0.0.1:8791");
        assert_eq!(t.token.as_deref(), Some("tok-default"));
        assert_eq!(t.ca_pem.as_deref(), Some("CA-DEFAULT"));
        assert_eq!(t.source, Source::Default(data.join(CONTEXT_FILE)));
        // --context wins over it.
        let given = d.path().join("other.json");
        ctx("https://10.0.0.2:8791", "CA-GIVEN", "tok-given")
            .save(&given)
            .unwrap();
        let flags = Flags {
            context: Some(given.clone()),
            ..Default::default()
        };
        let t = resolve(&flags, &data).unwrap();
        assert_eq!(t.server, "https://10.0.0.2:8791");
        assert_eq!(t.token.as_deref(), Some("tok-given"));
        assert_eq!(t.ca_pem.as_deref(), Some("CA-GIVEN"));
        // Flags win field by field.
        let t = resolve(
            &Flags {
                token: Some("tok-flag".into()),
                ..flags.clone()
            },
            &data,
        )
        .unwrap();
        assert_eq!(t.token.as_deref(), Some("tok-flag"));
        assert_eq!(t.server, "https://10.0.0.2:8791");
        // Another https server of the same CA gets the context's token.
        let t = resolve(
            &Flags {
                server: Some("https://10.0.0.3:8791".into()),
                ..flags.clone()
            },
            &data,
        )
        .unwrap();
        assert_eq!(t.token.as_deref(), Some("tok-given"));
        // Another CA, or another plain-HTTP server, does not.
        let ca = d.path().join("ca.pem");
        std::fs::write(&ca, "CA-FLAG").unwrap();
        let t = resolve(
            &Flags {
                ca: Some(ca),
                ..flags.clone()
            },
            &data,
        )
        .unwrap();
        assert_eq!(t.ca_pem.as_deref(), Some("CA-FLAG"));
        assert_eq!(t.token.as_deref(), Some("local"));
        let t = resolve(
            &Flags {
                server: Some("http://10.0.0.9:8791".into()),
                ..flags
            },
            &data,
        )
        .unwrap();
        assert_eq!(t.token.as_deref(), Some("local"));
        // A context that is not one is an error naming it.
        let bad = d.path().join("bad.json");
        std::fs::write(&bad, "{}").unwrap();
        let e = resolve(
            &Flags {
                context: Some(bad),
                ..Default::default()
            },
            &data,
        )
        .unwrap_err();
        assert!(
            e.message.contains("--context") && e.message.contains("bad.json"),
            "{}",
            e.message
        );
    }
}
