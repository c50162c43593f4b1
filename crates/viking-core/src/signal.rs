//! The signals a job's process can be sent (`viking kill`, `docker kill`):
//! Linux's numbers and names, parsed as Docker parses them (`KILL`,
//! `SIGKILL`, `kill` or `9`).

use std::fmt;

/// A signal by Linux's number and its name without `SIG`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Signal {
    pub number: u8,
    pub name: &'static str,
}

/// `SIGKILL`: `kill`'s default, which stops the job for good.
pub const KILL: Signal = Signal {
    number: 9,
    name: "KILL",
};

/// Linux's standard signals (x86-64 and arm64 share these numbers).
const SIGNALS: &[(u8, &str)] = &[
    (1, "HUP"),
    (2, "INT"),
    (3, "QUIT"),
    (4, "ILL"),
    (5, "TRAP"),
    (6, "ABRT"),
    (7, "BUS"),
    (8, "FPE"),
    (9, "KILL"),
    (10, "USR1"),
    (11, "SEGV"),
    (12, "USR2"),
    (13, "PIPE"),
    (14, "ALRM"),
    (15, "TERM"),
    (16, "STKFLT"),
    (17, "CHLD"),
    (18, "CONT"),
    (19, "STOP"),
    (20, "TSTP"),
    (21, "TTIN"),
    (22, "TTOU"),
    (23, "URG"),
    (24, "XCPU"),
    (25, "XFSZ"),
    (26, "VTALRM"),
    (27, "PROF"),
    (28, "WINCH"),
    (29, "IO"),
    (30, "PWR"),
    (31, "SYS"),
];

/// Why a signal was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a signal (a name such as KILL, HUP or SIGTERM, or a number from 1 to 31)")]
pub struct BadSignal(pub String);

impl Signal {
    /// Docker's spellings: a name with or without `SIG` in any case, or a
    /// number. Real-time signals are not sent to jobs.
    pub fn parse(s: &str) -> Result<Signal, BadSignal> {
        let t = s.trim();
        let found = match t.parse::<u8>() {
            Ok(n) => SIGNALS.iter().find(|(num, _)| *num == n),
            Err(_) => {
                let up = t.to_ascii_uppercase();
                let bare = up.strip_prefix("SIG").unwrap_or(&up).to_string();
                SIGNALS.iter().find(|(_, name)| *name == bare)
            }
        };
        found
            .map(|&(number, name)| Signal { number, name })
            .ok_or_else(|| BadSignal(s.to_string()))
    }
}

/// The signal a request asks for: none is [`KILL`], `kill`'s default.
pub fn asked(s: Option<&str>) -> Result<Signal, BadSignal> {
    s.map_or(Ok(KILL), Signal::parse)
}

impl fmt::Display for Signal {
    /// `SIGNAME`, as Docker's engine takes it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SIG{}", self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_are_read_as_docker_reads_them() {
        for s in ["KILL", "SIGKILL", "kill", "sigkill", "9", " 9 "] {
            assert_eq!(Signal::parse(s), Ok(KILL), "{s}");
        }
        let hup = Signal::parse("HUP").unwrap();
        assert_eq!((hup.number, hup.to_string()), (1, "SIGHUP".to_string()));
        assert_eq!(Signal::parse("2").unwrap().name, "INT");
        for bad in ["", "0", "32", "64", "SIG", "NOPE", "KILL;rm", "-9", "RTMIN"] {
            assert!(Signal::parse(bad).is_err(), "{bad}");
        }
        assert!(BadSignal("NOPE".into()).to_string().contains("\"NOPE\""));
        assert_eq!(asked(None), Ok(KILL));
        assert_eq!(asked(Some("HUP")), Ok(hup));
    }
}
