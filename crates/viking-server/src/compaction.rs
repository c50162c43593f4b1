//! compaction: the leader keeps the store's history short.
//!
//! etcd keeps every revision of every key until it is compacted, so
//! without this its database grows with every write until its quota, and
//! then refuses all writes (NOSPACE). While this server leads the
//! reconciler, it notes the store's revision every so often and compacts
//! the history older than `--compact-window` (default 10 minutes): a watch
//! that falls further behind than that gets `Compacted` and reads
//! everything again, which every watcher of viking does anyway after an
//! error. `viking mesh` also starts etcd with auto-compaction and a backend
//! quota as a second guard; compaction frees pages inside etcd's file,
//! `viking mesh defrag` gives them back to the disk.
//!
//! It owns nothing else: the decision of which revision to compact is the
//! pure [`due`], tested alone.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use viking_store::Revision;

use crate::Shared;

/// How often the revision is noted: a tenth of the window, within these.
const MIN_TICK: Duration = Duration::from_secs(1);
const MAX_TICK: Duration = Duration::from_secs(60);

/// The revision to compact at now, if any: the newest noted revision that
/// is at least `window` old, when it is beyond what was compacted already.
pub fn due(
    samples: &VecDeque<(Instant, Revision)>,
    now: Instant,
    window: Duration,
    compacted: Revision,
) -> Option<Revision> {
    samples
        .iter()
        .filter(|(at, _)| now.saturating_duration_since(*at) >= window)
        .map(|&(_, rev)| rev)
        .max()
        .filter(|&rev| rev > compacted)
}

/// Compact the store while this server leads; never returns (the leader's
/// loop drops it when leadership ends). A new leader starts with no notes,
/// so it compacts a window after it took over at the earliest.
pub async fn run(sh: Arc<Shared>) {
    let window = sh.config.compact_window;
    let tick = (window / 10).clamp(MIN_TICK, MAX_TICK);
    let mut samples: VecDeque<(Instant, Revision)> = VecDeque::new();
    let mut compacted: Revision = 0;
    let mut timer = tokio::time::interval(tick);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        timer.tick().await;
        let now = Instant::now();
        match sh.store.revision().await {
            Ok(rev) => samples.push_back((now, rev)),
            Err(e) => {
                tracing::warn!("compaction: reading the store's revision: {e}");
                continue;
            }
        }
        let Some(rev) = due(&samples, now, window, compacted) else {
            continue;
        };
        match sh.store.compact(rev).await {
            Ok(()) => {
                tracing::debug!(revision = rev, "compacted the store's history");
                compacted = rev;
                // The notes at or before it are of no more use.
                while samples.front().is_some_and(|&(_, r)| r <= rev) {
                    samples.pop_front();
                }
            }
            Err(e) => tracing::warn!(revision = rev, "compacting the store: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_revision_older_than_the_window_is_compacted_once() {
        let t0 = Instant::now();
        let s = |secs: u64, rev: Revision| (t0 + Duration::from_secs(secs), rev);
        let samples: VecDeque<_> = [s(0, 10), s(60, 20), s(120, 30)].into();
        let w = Duration::from_secs(600);
        // Nothing is a window old yet.
        assert_eq!(due(&samples, t0 + Duration::from_secs(599), w, 0), None);
        assert_eq!(due(&samples, t0 + Duration::from_secs(600), w, 0), Some(10));
        assert_eq!(due(&samples, t0 + Duration::from_secs(700), w, 0), Some(20));
        // Already compacted there: nothing to do.
        assert_eq!(due(&samples, t0 + Duration::from_secs(700), w, 20), None);
        assert_eq!(
            due(&samples, t0 + Duration::from_secs(10_000), w, 20),
            Some(30)
        );
        assert_eq!(due(&VecDeque::new(), t0, w, 0), None);
    }
}
