//! The buffers of the buffered byte pump, lent per transfer: a direction
//! takes one when its source is readable and gives it back once what it read
//! is written, so an idle connection holds none. A few free buffers are kept
//! for reuse (a bulk transfer takes and gives one per read), the rest are
//! freed.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Mutex, PoisonError};

/// Free buffers kept for reuse, at most.
const KEEP: usize = 16;

/// The buffers of one embassy, all of one size.
#[derive(Debug)]
pub(crate) struct BufferPool {
    size: usize,
    free: Mutex<Vec<Vec<u8>>>,
    /// Buffers taken and not given back.
    lent: AtomicUsize,
}

impl BufferPool {
    pub(crate) fn new(size: usize) -> Self {
        BufferPool {
            size,
            free: Mutex::new(Vec::new()),
            lent: AtomicUsize::new(0),
        }
    }

    /// A buffer of the pool's size: a kept one, or a new one.
    pub(crate) fn take(&self) -> Vec<u8> {
        self.lent.fetch_add(1, Relaxed);
        let kept = self
            .free
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        kept.unwrap_or_else(|| vec![0u8; self.size])
    }

    /// Gives a buffer back: kept for the next transfer, or freed.
    pub(crate) fn give(&self, buf: Vec<u8>) {
        self.lent.fetch_sub(1, Relaxed);
        if buf.len() != self.size {
            return;
        }
        let mut free = self.free.lock().unwrap_or_else(PoisonError::into_inner);
        if free.len() < KEEP {
            free.push(buf);
        }
    }

    /// Buffers taken and not given back: connections with bytes in transit.
    pub(crate) fn lent(&self) -> usize {
        self.lent.load(Relaxed)
    }

    /// Free buffers kept now.
    #[cfg(test)]
    pub(crate) fn kept(&self) -> usize {
        self.free
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_at_most_a_few_buffers() {
        let pool = BufferPool::new(1024);
        let bufs: Vec<_> = (0..KEEP + 5).map(|_| pool.take()).collect();
        assert!(bufs.iter().all(|b| b.len() == 1024));
        assert_eq!(pool.lent(), KEEP + 5);
        for b in bufs {
            pool.give(b);
        }
        assert_eq!(pool.kept(), KEEP);
        assert_eq!(pool.lent(), 0);
        // A kept buffer is lent again before a new one is made.
        let again = pool.take();
        assert_eq!((pool.kept(), pool.lent()), (KEEP - 1, 1));
        pool.give(again);
    }
}
