//! What this host's containers really use, for floki: the CPU over the
//! last minute, from each container's cumulative CPU time as its cgroup
//! counts it (the memory is read as it is now, in the agent's resync).
//!
//! A sample per resync; a container that appears counts from its second
//! sample, one that goes stops counting, so the figure never jumps by a
//! container's whole lifetime.

use std::collections::{HashMap, VecDeque};

/// How far back the CPU figure looks.
pub const WINDOW_MS: u64 = 60_000;

/// The CPU time seen in the last minute's samples.
#[derive(Default)]
pub struct CpuWindow {
    /// Each container's cumulative CPU time at the last sample, in µs.
    last: HashMap<String, u64>,
    /// When the last sample was taken.
    last_at: Option<u64>,
    /// (when, CPU µs used since the sample before, ms since it).
    steps: VecDeque<(u64, u64, u64)>,
}

impl CpuWindow {
    /// Take a sample at `now_ms` of each running container's cumulative
    /// CPU time (µs); the CPU used over the window, in thousandths of a CPU.
    pub fn sample(&mut self, now_ms: u64, usage: impl IntoIterator<Item = (String, u64)>) -> u64 {
        let now: HashMap<String, u64> = usage.into_iter().collect();
        let used: u64 = now
            .iter()
            .filter_map(|(id, u)| self.last.get(id).map(|before| u.saturating_sub(*before)))
            .sum();
        if let Some(at) = self.last_at {
            let elapsed = now_ms.saturating_sub(at);
            if elapsed > 0 {
                self.steps.push_back((now_ms, used, elapsed));
            }
        }
        self.last = now;
        self.last_at = Some(now_ms);
        while self
            .steps
            .front()
            .is_some_and(|(at, _, _)| now_ms.saturating_sub(*at) > WINDOW_MS)
        {
            self.steps.pop_front();
        }
        let (us, ms) = self
            .steps
            .iter()
            .fold((0u64, 0u64), |(u, m), (_, du, dm)| (u + du, m + dm));
        // µs of CPU per ms of wall time is thousandths of a CPU.
        us.checked_div(ms).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_of_the_last_minute_in_thousandths() {
        let mut w = CpuWindow::default();
        let c = |a: u64, b: u64| vec![("a".to_string(), a), ("b".to_string(), b)];
        assert_eq!(w.sample(0, c(0, 5_000_000)), 0, "one sample says nothing");
        // 10 s later: a used 5 s of CPU (half a CPU), b a whole CPU.
        assert_eq!(w.sample(10_000, c(5_000_000, 15_000_000)), 1500);
        // A new container counts from its second sample; a gone one stops.
        let mut next = c(10_000_000, 15_000_000);
        next.push(("new".into(), 99_000_000));
        next.retain(|(id, _)| id != "b");
        assert_eq!(w.sample(20_000, next), (15_000_000 + 5_000_000) / 20_000);
        // After a minute of idling, the busy start has left the window.
        for t in 3..=9 {
            w.sample(t * 10_000, vec![("a".to_string(), 10_000_000)]);
        }
        assert_eq!(w.sample(100_000, vec![("a".to_string(), 10_000_000)]), 0);
    }
}
