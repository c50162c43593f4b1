//! The graceful-shutdown signal threaded through every task (mini-redis
//! style): a `watch` channel that flips to `true` on `Embassy::shutdown` or is
//! dropped with the `Embassy`; tasks also hold a clone of a `mpsc::Sender` so
//! that `shutdown` can wait until the last of them has finished.

use tokio::sync::{mpsc, watch};

/// Listens for the shutdown signal. Cancel-safe.
#[derive(Debug, Clone)]
pub(crate) struct Shutdown {
    is_shutdown: bool,
    notify: watch::Receiver<bool>,
}

impl Shutdown {
    pub(crate) fn new(notify: watch::Receiver<bool>) -> Self {
        let is_shutdown = *notify.borrow();
        Shutdown {
            is_shutdown,
            notify,
        }
    }

    /// Waits until shutdown is signalled (or the sender is gone).
    pub(crate) async fn recv(&mut self) {
        while !self.is_shutdown {
            match self.notify.changed().await {
                Ok(()) => self.is_shutdown = *self.notify.borrow_and_update(),
                Err(_) => self.is_shutdown = true,
            }
        }
    }
}

/// Held by every task; `Embassy::shutdown` waits until all are dropped.
pub(crate) type TaskGuard = mpsc::Sender<()>;
