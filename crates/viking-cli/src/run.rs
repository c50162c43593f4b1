//! `viking run`: docker run's flags turned into a job, then either a
//! daemonized job (progress on stderr, its name on stdout) or an attached
//! one (stdin, stdout and stderr streamed; the exit status is the job's).

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;

use bytes::BytesMut;
use clap::Args;
use tokio::io::AsyncWriteExt;
use viking_client::api::{DryRunResponse, ErrorBody};
use viking_client::frame::{self, Frame, FrameReader};
use viking_client::Client;
use viking_core::job::{EnvSpec, JobSpec, Quantity, StringOrList};

use crate::Failure;

/// docker run's exit status when the daemon side fails.
const DAEMON_ERROR: i32 = 125;

#[derive(Args, Debug, Default)]
pub struct RunArgs {
    /// A job file (the JSON job model); `-` reads it from stdin.
    #[arg(short = 'f', long = "file", conflicts_with = "args")]
    pub file: Option<PathBuf>,
    /// The job's name (required for a daemonized job).
    #[arg(long)]
    pub name: Option<String>,
    /// Run it in the background, kept running (a daemonized job).
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// Publish a container port: 80, 8080:80, 53/udp.
    #[arg(short = 'p', long = "publish")]
    pub publish: Vec<String>,
    /// A data volume at this container path, kept in the viking data directory.
    #[arg(short = 'v', long = "volume")]
    pub volume: Vec<String>,
    /// Set an environment variable: KEY=VALUE, or KEY to pass this shell's value.
    #[arg(short = 'e', long = "env")]
    pub env: Vec<String>,
    /// Read environment variables from a file of KEY=VALUE lines.
    #[arg(long = "env-file")]
    pub env_file: Vec<PathBuf>,
    /// Keep stdin attached even when it is a terminal.
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// Allocate a pseudo-TTY in the container.
    #[arg(short = 't', long)]
    pub tty: bool,
    /// The working directory inside the container.
    #[arg(short = 'w', long = "workdir")]
    pub workdir: Option<String>,
    /// Override the image's entrypoint.
    #[arg(long)]
    pub entrypoint: Option<String>,
    /// Accepted for docker compatibility: interactive jobs are always removed.
    #[arg(long = "rm")]
    pub rm: bool,
    /// Reach a service through embassy: NAME or NAME:ALIAS (docker-link variables).
    #[arg(long = "link")]
    pub link: Vec<String>,
    /// Not restarted by a new code push (implies --fixed).
    #[arg(long = "static")]
    pub static_: bool,
    /// Always run on the same server.
    #[arg(long)]
    pub fixed: bool,
    /// Run on this server only.
    #[arg(long = "viking-host")]
    pub viking_host: Option<String>,
    /// Run only on servers with these tags (comma-separated).
    #[arg(long = "viking-filter")]
    pub viking_filter: Option<String>,
    /// The most processes the container may have (default: the server's
    /// --pids-limit; at most its --pids-max).
    #[arg(long = "pids-limit", value_name = "N", allow_negative_numbers = true)]
    pub pids_limit: Option<i64>,
    /// The container's memory limit, reserved on its host (`256m`, `1g`).
    #[arg(short = 'm', long, value_name = "BYTES")]
    pub memory: Option<String>,
    /// The CPUs the container may use, reserved on its host (`0.5`).
    #[arg(long, value_name = "N")]
    pub cpus: Option<String>,
    /// Run N instances, NAME.1 to NAME.N, on distinct hosts while there
    /// are enough (a daemonized job that is not fixed).
    #[arg(long, value_name = "N")]
    pub replicas: Option<u32>,
    /// Show where the job would run, and why other hosts would not take it.
    #[arg(long = "dry-run")]
    pub dry_run: bool,
    /// With -d: return once the job is placed and accepted, without waiting
    /// for it to start (`viking ps` shows how the start went).
    #[arg(long = "no-wait")]
    pub no_wait: bool,
    /// IMAGE [COMMAND] [ARG...]
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "IMAGE [COMMAND] [ARG...]"
    )]
    pub args: Vec<String>,
}

impl RunArgs {
    /// The job document these flags describe.
    pub fn to_document(&self) -> Result<Vec<u8>, Failure> {
        if let Some(f) = &self.file {
            let mut doc = Vec::new();
            let r = if f.as_os_str() == "-" {
                std::io::stdin().read_to_end(&mut doc).map(|_| ())
            } else {
                std::fs::File::open(f)
                    .and_then(|mut h| h.read_to_end(&mut doc))
                    .map(|_| ())
            };
            r.map_err(|e| {
                Failure::new(
                    DAEMON_ERROR,
                    format!("reading job file {}: {e}", f.display()),
                )
            })?;
            return Ok(doc);
        }
        if let Some(flag) = self.args.first().and_then(|a| unknown_flag(a)) {
            return Err(Failure::new(
                DAEMON_ERROR,
                format!("{flag}\nSee 'viking run --help'."),
            ));
        }
        let Some((image, command)) = self.args.split_first() else {
            return Err(Failure::new(
                DAEMON_ERROR,
                "\"viking run\" requires an image (or -f job.json)\nUsage: viking run [OPTIONS] IMAGE [COMMAND] [ARG...]",
            ));
        };
        let mut env = Vec::new();
        for file in &self.env_file {
            let text = std::fs::read_to_string(file).map_err(|e| {
                Failure::new(
                    DAEMON_ERROR,
                    format!("reading env file {}: {e}", file.display()),
                )
            })?;
            for line in text.lines().map(str::trim) {
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                env.push(resolve_env(line));
            }
        }
        env.extend(self.env.iter().map(|e| resolve_env(e)));
        let spec = JobSpec {
            name: self.name.clone(),
            image: image.clone(),
            command: (!command.is_empty()).then(|| StringOrList::List(command.to_vec())),
            entrypoint: self.entrypoint.clone().map(|e| StringOrList::List(vec![e])),
            workdir: self.workdir.clone(),
            env: (!env.is_empty()).then_some(EnvSpec::List(env)),
            ports: self.publish.clone(),
            volumes: self.volume.clone(),
            daemonize: self.detach.then_some(true),
            fixed: self.fixed.then_some(true),
            static_: self.static_.then_some(true),
            host: self.viking_host.clone(),
            filter: self.viking_filter.clone().map(StringOrList::One),
            tty: self.tty.then_some(true),
            links: self.link.clone(),
            pids_limit: self.pids_limit,
            memory: self.memory.clone().map(Quantity::Text),
            cpus: self.cpus.clone().map(Quantity::Text),
            replicas: self.replicas,
            service: None,
        };
        serde_json::to_vec(&spec).map_err(|e| Failure::new(DAEMON_ERROR, e.to_string()))
    }
}

/// The first of IMAGE [COMMAND] [ARG...] may not look like a flag: clap
/// hands on an unknown flag before the image as the image (the positional
/// takes hyphen values so that the command's own flags pass through), so
/// it is refused here, in docker's words. Flags after the image belong to
/// the command.
fn unknown_flag(first: &str) -> Option<String> {
    if let Some(long) = first.strip_prefix("--") {
        let name = long.split_once('=').map_or(long, |(n, _)| n);
        return (!name.is_empty()).then(|| format!("unknown flag: --{name}"));
    }
    let short = first.strip_prefix('-')?;
    let c = short.chars().next()?;
    Some(format!("unknown shorthand flag: '{c}' in {first}"))
}

/// `KEY` alone takes this shell's value, as docker does.
fn resolve_env(e: &str) -> String {
    if e.contains('=') {
        e.to_string()
    } else {
        format!("{e}={}", std::env::var(e).unwrap_or_default())
    }
}

/// Whether the document describes a daemonized job (the server decides for
/// real; this only picks the transport).
fn is_daemonized(doc: &[u8]) -> bool {
    let Ok(spec) = serde_json::from_slice::<JobSpec>(doc) else {
        // Let the server explain what is wrong with it.
        return true;
    };
    spec.daemonized()
}

pub async fn run(c: &Client, args: RunArgs) -> Result<i32, Failure> {
    let doc = args.to_document()?;
    let api_err = |e: viking_client::ClientError| Failure::new(DAEMON_ERROR, e.to_string());
    if args.dry_run {
        let d: DryRunResponse = c.dry_run(doc).await.map_err(api_err)?;
        match &d.host {
            Some(h) => println!("job {} would run on host {h}", d.job.name),
            None => println!("job {} cannot run on any host now", d.job.name),
        }
        for r in &d.rejected {
            println!("  {:<20} rejected: {}", r.host, r.reason);
        }
        return Ok(if d.host.is_some() { 0 } else { 1 });
    }
    if is_daemonized(&doc) {
        return run_daemon(c, doc, args.no_wait).await;
    }
    if args.no_wait {
        return Err(Failure::new(
            DAEMON_ERROR,
            "--no-wait needs a daemonized job (-d, or ports)".to_string(),
        ));
    }
    let io = c.run_attached(doc).await.map_err(api_err)?;
    let stdin_attached = args.interactive || !std::io::stdin().is_terminal();
    // -it on a terminal: keystrokes go straight to the container's TTY.
    let _raw = (args.tty && args.interactive)
        .then(crate::terminal::RawMode::enable)
        .flatten();
    attached(io, stdin_attached).await
}

async fn run_daemon(c: &Client, doc: Vec<u8>, no_wait: bool) -> Result<i32, Failure> {
    let r = if no_wait {
        c.run_no_wait(doc).await
    } else {
        c.run(doc, &|p| eprintln!("{p}")).await
    }
    .map_err(|e| Failure::new(DAEMON_ERROR, e.to_string()))?;
    match &r.ps {
        Some(_) => println!("{}", r.job.name),
        None => eprintln!(
            "{}: {}",
            r.job.name,
            r.waiting
                .as_deref()
                .unwrap_or("accepted; it will start when a host can take it")
        ),
    }
    Ok(0)
}

/// Read stdin on a plain thread (blocking reads are cheapest there) and hand
/// chunks to the async side; `None` marks the end.
fn spawn_stdin_reader(attached: bool) -> tokio::sync::mpsc::Receiver<Option<Vec<u8>>> {
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    std::thread::spawn(move || {
        if attached {
            let mut stdin = std::io::stdin().lock();
            loop {
                let mut chunk = vec![0u8; 256 * 1024];
                match stdin.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        chunk.truncate(n);
                        if tx.blocking_send(Some(chunk)).is_err() {
                            return;
                        }
                    }
                }
            }
        }
        let _ = tx.blocking_send(None);
    });
    rx
}

/// Pumps an attached stream (a run's or an exec's): stdin and Ctrl-C to
/// the server, output to stdout and stderr; the exit code.
pub(crate) async fn attached(
    io: viking_client::client::AttachedIo,
    stdin_attached: bool,
) -> Result<i32, Failure> {
    let (rd, mut wr) = tokio::io::split(io);
    let mut stdin = spawn_stdin_reader(stdin_attached);
    // stdin and Ctrl-C to the server.
    let writer = tokio::spawn(async move {
        let mut buf = BytesMut::with_capacity(300 * 1024);
        let mut stdin_open = true;
        loop {
            tokio::select! {
                chunk = stdin.recv(), if stdin_open => {
                    buf.clear();
                    match chunk {
                        Some(Some(data)) => Frame::new(frame::STDIN, data).encode(&mut buf),
                        _ => {
                            stdin_open = false;
                            Frame::new(frame::STDIN_EOF, bytes::Bytes::new()).encode(&mut buf);
                        }
                    }
                    if wr.write_all(&buf).await.is_err() {
                        return;
                    }
                }
                r = tokio::signal::ctrl_c() => {
                    if r.is_err() {
                        return;
                    }
                    buf.clear();
                    Frame::new(frame::SIGNAL, &b"SIGINT"[..]).encode(&mut buf);
                    if wr.write_all(&buf).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    let result = print_attached(rd).await;
    writer.abort();
    result
}

/// Copy output frames to stdout and stderr until the exit frame.
async fn print_attached<R: tokio::io::AsyncRead + Unpin>(rd: R) -> Result<i32, Failure> {
    let mut frames = FrameReader::new(rd);
    let mut error: Option<String> = None;
    let stdout = std::io::stdout();
    let stderr = std::io::stderr();
    loop {
        let f = frames.next().await.map_err(|e| {
            Failure::new(DAEMON_ERROR, format!("connection to the server lost: {e}"))
        })?;
        let Some(f) = f else {
            return Err(Failure::new(
                DAEMON_ERROR,
                "connection to the server lost before the job ended",
            ));
        };
        match f.kind {
            frame::STDOUT => {
                let mut out = stdout.lock();
                if out.write_all(&f.data).and_then(|_| out.flush()).is_err() {
                    // The reader of our stdout is gone (a closed pipe).
                    return Ok(141);
                }
            }
            frame::STDERR | frame::PROGRESS => {
                let mut err = stderr.lock();
                let _ = err.write_all(&f.data);
                if f.kind == frame::PROGRESS {
                    let _ = err.write_all(b"\n");
                }
            }
            frame::ERROR => {
                let body: Option<ErrorBody> = serde_json::from_slice(&f.data).ok();
                error = Some(
                    body.map(|b| b.error)
                        .unwrap_or_else(|| String::from_utf8_lossy(&f.data).into_owned()),
                );
            }
            frame::EXIT => {
                let code = f.exit_code().unwrap_or(DAEMON_ERROR as i64);
                if let Some(e) = error {
                    return Err(Failure::new(code as i32, e));
                }
                return Ok((code & 0xff) as i32);
            }
            _ => {}
        }
    }
}

/// Print a logs stream: frames over a chunked HTTP body.
pub async fn print_frames(body: hyper::body::Incoming) -> Result<(), Failure> {
    let mut frames = frame::body_frames(body);
    let stdout = std::io::stdout();
    let stderr = std::io::stderr();
    while let Some(f) = frames
        .next()
        .await
        .map_err(|e| Failure::new(1, format!("reading logs: {e}")))?
    {
        match f.kind {
            frame::STDERR => {
                let _ = stderr.lock().write_all(&f.data);
            }
            _ => {
                let mut out = stdout.lock();
                if out.write_all(&f.data).and_then(|_| out.flush()).is_err() {
                    return Ok(());
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        r: RunArgs,
    }

    fn doc(args: &[&str]) -> serde_json::Value {
        let t = T::try_parse_from(std::iter::once("run").chain(args.iter().copied())).unwrap();
        serde_json::from_slice(&t.r.to_document().unwrap()).unwrap()
    }

    #[test]
    fn docker_flags_make_a_job() {
        let d = doc(&[
            "--name",
            "web",
            "-d",
            "-p",
            "8080:80",
            "-e",
            "A=1",
            "-v",
            "/data",
            "--viking-filter",
            "ssd",
            "img",
            "sh",
            "-c",
            "x -y",
        ]);
        assert_eq!(d["name"], "web");
        assert_eq!(d["daemonize"], true);
        assert_eq!(d["ports"][0], "8080:80");
        assert_eq!(d["volumes"][0], "/data");
        assert_eq!(d["env"][0], "A=1");
        assert_eq!(d["filter"], "ssd");
        assert_eq!(d["image"], "img");
        assert_eq!(d["command"], serde_json::json!(["sh", "-c", "x -y"]));
        let d = doc(&["img"]);
        assert!(d.get("daemonize").is_none());
        assert!(!is_daemonized(&serde_json::to_vec(&d).unwrap()));
    }

    fn refused(args: &[&str]) -> Failure {
        let t = T::try_parse_from(std::iter::once("run").chain(args.iter().copied())).unwrap();
        t.r.to_document().unwrap_err()
    }

    #[test]
    fn an_unknown_flag_before_the_image_is_refused() {
        let f = refused(&["-d", "--name", "web", "--frobnicate", "3", "img"]);
        assert_eq!(f.code, DAEMON_ERROR);
        assert_eq!(f.message.lines().next(), Some("unknown flag: --frobnicate"));
        let f = refused(&["--frobnicate=3", "img"]);
        assert_eq!(f.message.lines().next(), Some("unknown flag: --frobnicate"));
        let f = refused(&["-z", "img"]);
        assert_eq!(
            f.message.lines().next(),
            Some("unknown shorthand flag: 'z' in -z")
        );
        // Known flags still work, and flags after the image are the command's.
        let d = doc(&["-d", "--name", "web", "img", "--frobnicate", "-z"]);
        assert_eq!(d["image"], "img");
        assert_eq!(d["command"], serde_json::json!(["--frobnicate", "-z"]));
    }

    #[test]
    fn the_transport_follows_the_daemonize_default() {
        let daemonized = |args: &[&str]| {
            let t = T::try_parse_from(std::iter::once("run").chain(args.iter().copied())).unwrap();
            is_daemonized(&t.r.to_document().unwrap())
        };
        assert!(!daemonized(&["img"]));
        assert!(daemonized(&["-d", "--name", "w", "img"]));
        assert!(daemonized(&["-p", "80", "--name", "w", "img"]));
        assert!(is_daemonized(
            br#"{"image":"b","ports":["80"],"daemonize":true}"#
        ));
        assert!(!is_daemonized(
            br#"{"image":"b","ports":["80"],"daemonize":false}"#
        ));
    }
}
