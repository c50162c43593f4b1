//! Containers that Docker's clients created and have not started yet.
//!
//! `docker run` creates, attaches, waits and only then starts, each on its
//! own request. viking has no "created" state of its own: a job is placed
//! and claimed when it starts. So a create is checked and held here, in
//! this server's memory (nothing is written, so a create that is never
//! started leaves no trace), until its start; the attach's hijacked
//! connection and the wait's exit code meet the job here.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::sync::{oneshot, watch};
use viking_core::Job;

/// How long a created container waits for its start before it is
/// forgotten.
const UNSTARTED: Duration = Duration::from_secs(300);

/// The client's hijacked attach connection.
pub type Hijacked = TokioIo<Upgraded>;

/// One created container.
pub struct Created {
    pub job: Job,
    pub tty: bool,
    /// Whether the client attaches (an interactive job).
    pub attached: bool,
    made: Instant,
    /// The attach connection, once its upgrade is done.
    attach: Option<oneshot::Receiver<Hijacked>>,
    /// The exit code, once the job has ended (interactive jobs).
    pub exit: watch::Sender<Option<i64>>,
    /// Set at start.
    pub started: bool,
}

/// What a created container's start needs, taken from its entry.
pub struct Starting {
    pub job: Job,
    /// Whether the client attaches (an interactive job).
    pub attached: bool,
    pub tty: bool,
    /// The attach connection's receiver, if the client attached.
    pub attach: Option<oneshot::Receiver<Hijacked>>,
    /// Where the exit code goes.
    pub exit: watch::Sender<Option<i64>>,
}

/// One exec created through the Docker API.
struct Exec {
    job: String,
    cmd: Vec<String>,
    tty: bool,
    made: Instant,
    started: bool,
    exit: watch::Sender<Option<i64>>,
}

/// The created containers (and execs) of this server, by id.
#[derive(Default)]
pub struct CreatedTable {
    entries: Mutex<HashMap<String, Created>>,
    execs: Mutex<HashMap<String, Exec>>,
}

/// The key of the entry under `id` (or named `name`, or whose id starts
/// with `id`, when only one does).
fn key_of(m: &HashMap<String, Created>, id_or_name: &str) -> Option<String> {
    if m.contains_key(id_or_name) {
        return Some(id_or_name.to_string());
    }
    let hits: Vec<&String> = m
        .iter()
        .filter(|(id, c)| {
            c.job.name == id_or_name || (id_or_name.len() >= 4 && id.starts_with(id_or_name))
        })
        .map(|(id, _)| id)
        .collect();
    match hits.as_slice() {
        [one] => Some((*one).clone()),
        _ => None,
    }
}

impl CreatedTable {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Created>> {
        // Every change is one insert, remove or field update.
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Holds `job` under `id` until it is started; false (and nothing
    /// held) if a job of its name is held already.
    pub fn insert(&self, id: String, job: Job, attached: bool, tty: bool) -> bool {
        let mut m = self.lock();
        m.retain(|_, c| c.started || c.made.elapsed() < UNSTARTED);
        if m.values().any(|c| c.job.name == job.name) {
            return false;
        }
        m.insert(
            id,
            Created {
                job,
                tty,
                attached,
                made: Instant::now(),
                attach: None,
                exit: watch::Sender::new(None),
                started: false,
            },
        );
        true
    }

    /// The job held under `id` (or named `name`): its id.
    pub fn find(&self, id_or_name: &str) -> Option<String> {
        key_of(&self.lock(), id_or_name)
    }

    /// The job held under `id` (or named `name`) and not started yet: its
    /// id. A started one is a viking job with records, which stop, kill,
    /// rm and inspect reach by its name.
    pub fn find_unstarted(&self, id_or_name: &str) -> Option<String> {
        let m = self.lock();
        key_of(&m, id_or_name).filter(|key| m.get(key).is_some_and(|c| !c.started))
    }

    /// A channel for the attach connection of `id`; `None` if there is no
    /// such container or it already has one.
    pub fn attach(&self, id: &str) -> Option<oneshot::Sender<Hijacked>> {
        let mut m = self.lock();
        let c = m.get_mut(id)?;
        if c.attach.is_some() || c.started {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        c.attach = Some(rx);
        Some(tx)
    }

    /// Marks `id` started and hands over what the start needs. `None`: no
    /// such container, or started.
    pub fn start(&self, id: &str) -> Option<Starting> {
        let mut m = self.lock();
        let c = m.get_mut(id)?;
        if c.started {
            return None;
        }
        c.started = true;
        Some(Starting {
            job: c.job.clone(),
            attached: c.attached,
            tty: c.tty,
            attach: c.attach.take(),
            exit: c.exit.clone(),
        })
    }

    /// The exit code of `id`, to wait for; `None` if not held here.
    pub fn exit(&self, id: &str) -> Option<(Job, bool, watch::Receiver<Option<i64>>)> {
        let m = self.lock();
        let c = m.get(id)?;
        Some((c.job.clone(), c.attached, c.exit.subscribe()))
    }

    fn execs(&self) -> std::sync::MutexGuard<'_, HashMap<String, Exec>> {
        self.execs.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Holds an exec of job `job` until its start; its new id.
    pub fn insert_exec(&self, job: String, cmd: Vec<String>, tty: bool) -> String {
        let id: String = (0..32)
            .map(|_| format!("{:02x}", rand::random::<u8>()))
            .collect();
        let mut m = self.execs();
        // An exec is inspected after it ends; forget old ones.
        m.retain(|_, e| e.made.elapsed() < UNSTARTED);
        m.insert(
            id.clone(),
            Exec {
                job,
                cmd,
                tty,
                made: Instant::now(),
                started: false,
                exit: watch::Sender::new(None),
            },
        );
        id
    }

    /// Marks exec `id` started: its job, command, tty and exit code's
    /// sender. `None`: no such exec, or started already.
    #[allow(clippy::type_complexity)]
    pub fn start_exec(
        &self,
        id: &str,
    ) -> Option<(String, Vec<String>, bool, watch::Sender<Option<i64>>)> {
        let mut m = self.execs();
        let e = m.get_mut(id)?;
        if e.started {
            return None;
        }
        e.started = true;
        Some((e.job.clone(), e.cmd.clone(), e.tty, e.exit.clone()))
    }

    /// Exec `id`: its job, command, tty, exit code (once ended) and
    /// whether it started.
    #[allow(clippy::type_complexity)]
    pub fn exec_state(&self, id: &str) -> Option<(String, Vec<String>, bool, Option<i64>, bool)> {
        let m = self.execs();
        let e = m.get(id)?;
        let code = *e.exit.borrow();
        Some((e.job.clone(), e.cmd.clone(), e.tty, code, e.started))
    }

    /// Forgets `id` (it ended, or it runs as a viking job now).
    pub fn remove(&self, id: &str) -> Option<Job> {
        self.lock().remove(id).map(|c| c.job)
    }
}
