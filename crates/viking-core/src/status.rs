//! A job's status in viking-ps: viking's own states and Docker's.
//!
//! Stored and sent as the lowercase word Docker uses (`running`, `exited`,
//! ...) or viking's own (`starting`, `failed`, `missing`, `waiting`), so the
//! records and the API read the same as before the type existed; a word
//! this version does not know is kept as it is.

use std::fmt;

use serde::{Deserialize, Serialize};

/// What viking-ps says of a job's container.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum Status {
    /// Placed; its container is being made (viking's).
    Starting,
    /// Created, not started yet (Docker's; also an attached job's claim).
    Created,
    Running,
    Restarting,
    Paused,
    /// The container ended.
    Exited,
    Dead,
    Removing,
    /// It could not be started (viking's).
    Failed,
    /// Its container vanished (viking's).
    Missing,
    /// Its host is gone and the job is fixed to it (viking's).
    Waiting,
    /// A state this version does not know.
    Other(String),
}

impl Status {
    pub fn as_str(&self) -> &str {
        match self {
            Status::Starting => "starting",
            Status::Created => "created",
            Status::Running => "running",
            Status::Restarting => "restarting",
            Status::Paused => "paused",
            Status::Exited => "exited",
            Status::Dead => "dead",
            Status::Removing => "removing",
            Status::Failed => "failed",
            Status::Missing => "missing",
            Status::Waiting => "waiting",
            Status::Other(s) => s,
        }
    }

    /// A container that is there and not finished: running, restarting or
    /// paused.
    pub fn is_live(&self) -> bool {
        matches!(self, Status::Running | Status::Restarting | Status::Paused)
    }
}

impl From<&str> for Status {
    fn from(s: &str) -> Self {
        match s {
            "starting" => Status::Starting,
            "created" => Status::Created,
            "running" => Status::Running,
            "restarting" => Status::Restarting,
            "paused" => Status::Paused,
            "exited" => Status::Exited,
            "dead" => Status::Dead,
            "removing" => Status::Removing,
            "failed" => Status::Failed,
            "missing" => Status::Missing,
            "waiting" => Status::Waiting,
            other => Status::Other(other.to_string()),
        }
    }
}

impl From<String> for Status {
    fn from(s: String) -> Self {
        Status::from(s.as_str())
    }
}

impl From<Status> for String {
    fn from(s: Status) -> Self {
        match s {
            Status::Other(s) => s,
            known => known.as_str().to_string(),
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_words_round_trip() {
        for s in [
            "starting",
            "created",
            "running",
            "restarting",
            "paused",
            "exited",
            "dead",
            "removing",
            "failed",
            "missing",
            "waiting",
        ] {
            let st = Status::from(s);
            assert!(!matches!(st, Status::Other(_)), "{s} is known");
            assert_eq!(String::from(st), s);
        }
    }

    proptest! {
        #[test]
        fn any_word_survives_json(s in "[a-z]{0,12}") {
            let st = Status::from(s.as_str());
            let json = serde_json::to_string(&st).unwrap();
            prop_assert_eq!(json, serde_json::to_string(&s).unwrap());
            let back: Status = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
            prop_assert_eq!(back.as_str(), s.as_str());
        }
    }
}
