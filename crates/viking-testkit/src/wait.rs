//! Polling until a condition holds, with a deadline: the one poll-until
//! helper of every viking test crate. Tests wait for what they expect to see,
//! never for a fixed time; on timeout the message names what was awaited and
//! the last value observed.
//!
//! A probe returns an [`Outcome`]: a `bool`, an `Option<T>` or a
//! `Result<T, E>`. `false`, `None` and `Err(e)` mean "not yet"; `Err(e)`
//! also records `e` as the last observation, so return
//! `Err(format!("ps = {ps:?}"))` to see the state in the failure message.
//!
//! ```no_run
//! use std::time::Duration;
//! use viking_testkit::{eventually, POLL};
//! let mut n = 0;
//! let seen = eventually("n to reach 3", Duration::from_secs(5), POLL, || {
//!     n += 1;
//!     if n >= 3 { Ok(n) } else { Err(format!("n = {n}")) }
//! });
//! assert_eq!(seen, 3);
//! ```

use anyhow::{anyhow, Result};
use std::fmt::Debug;
use std::future::Future;
use std::time::{Duration, Instant};

/// A usual polling interval for end-to-end tests.
pub const POLL: Duration = Duration::from_millis(100);

/// What one look at a condition found: done (with a value), or not yet (with
/// what was observed, for the timeout message).
pub trait Outcome {
    /// The value handed back when the condition holds.
    type Value;
    /// `Ok(value)` when the condition holds; `Err(observation)` otherwise.
    fn check(self) -> Result<Self::Value, String>;
}

impl Outcome for bool {
    type Value = ();
    fn check(self) -> Result<(), String> {
        if self {
            Ok(())
        } else {
            Err("the condition was false".into())
        }
    }
}

impl<T> Outcome for Option<T> {
    type Value = T;
    fn check(self) -> Result<T, String> {
        self.ok_or_else(|| "None".into())
    }
}

impl<T, E: Debug> Outcome for Result<T, E> {
    type Value = T;
    fn check(self) -> Result<T, String> {
        self.map_err(|e| format!("{e:?}"))
    }
}

fn timed_out(what: &str, timeout: Duration, seen: &str) -> String {
    format!("timed out after {timeout:?} waiting for {what}; last observed: {seen}")
}

/// Calls `probe` every `interval` until its outcome is done and returns the
/// value; fails after `timeout` with `what` and the last observation.
pub fn wait_until<O: Outcome>(
    what: &str,
    timeout: Duration,
    interval: Duration,
    mut probe: impl FnMut() -> O,
) -> Result<O::Value> {
    let start = Instant::now();
    loop {
        let seen = match probe().check() {
            Ok(v) => return Ok(v),
            Err(seen) => seen,
        };
        if start.elapsed() >= timeout {
            return Err(anyhow!(timed_out(what, timeout, &seen)));
        }
        std::thread::sleep(interval);
    }
}

/// Like [`wait_until`] but panics on timeout: for test bodies.
#[track_caller]
pub fn eventually<O: Outcome>(
    what: &str,
    timeout: Duration,
    interval: Duration,
    probe: impl FnMut() -> O,
) -> O::Value {
    match wait_until(what, timeout, interval, probe) {
        Ok(v) => v,
        Err(e) => panic!("{e:#}"),
    }
}

/// [`eventually`] for async probes (sleeps with tokio's timer, so it also
/// works under `tokio::time::pause()`).
#[track_caller]
pub fn eventually_async<O, F>(
    what: &str,
    timeout: Duration,
    interval: Duration,
    mut probe: impl FnMut() -> F,
) -> impl Future<Output = O::Value>
where
    O: Outcome,
    F: Future<Output = O>,
{
    let caller = std::panic::Location::caller();
    let what = what.to_string();
    async move {
        let start = tokio::time::Instant::now();
        loop {
            let seen = match probe().await.check() {
                Ok(v) => return v,
                Err(seen) => seen,
            };
            if start.elapsed() >= timeout {
                panic!("{} (at {caller})", timed_out(&what, timeout, &seen));
            }
            tokio::time::sleep(interval).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_the_value_once_the_condition_holds() {
        let mut n = 0;
        let v = wait_until("n", Duration::from_secs(1), Duration::ZERO, || {
            n += 1;
            (n == 3).then_some(n)
        });
        assert_eq!(v.unwrap(), 3);
    }

    #[test]
    fn timeout_names_the_wait_and_the_last_observation() {
        let mut n = 0;
        let e = wait_until(
            "n to be negative",
            Duration::from_millis(30),
            Duration::from_millis(5),
            || {
                n += 1;
                if n < 0 {
                    Ok(())
                } else {
                    Err(format!("n = {n}"))
                }
            },
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("waiting for n to be negative"), "{e}");
        assert!(e.contains(&format!("last observed: \"n = {n}\"")), "{e}");
    }

    #[test]
    #[should_panic(expected = "waiting for nothing")]
    fn eventually_panics_on_timeout() {
        eventually("nothing", Duration::from_millis(10), Duration::ZERO, || {
            false
        });
    }

    #[tokio::test]
    async fn the_async_form_polls_until_the_value_comes() {
        let start = tokio::time::Instant::now();
        let v = eventually_async(
            "50 ms",
            Duration::from_secs(5),
            Duration::from_millis(5),
            || async { (start.elapsed() >= Duration::from_millis(50)).then_some(7) },
        )
        .await;
        assert_eq!(v, 7);
    }
}
