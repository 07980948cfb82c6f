//! Tells watch streams that events were committed, and that the server is
//! stopping. Writer threads publish the last event id they committed; each
//! stream waits for a change, then reads what is new from the database.
//! Nothing here holds events, so a slow stream costs no memory here.

use std::sync::Arc;

use tokio::sync::watch;

#[derive(Clone)]
pub struct EventHub {
    last: Arc<watch::Sender<i64>>,
    closing: Arc<watch::Sender<bool>>,
}

impl Default for EventHub {
    fn default() -> Self {
        Self {
            last: Arc::new(watch::channel(0).0),
            closing: Arc::new(watch::channel(false).0),
        }
    }
}

impl EventHub {
    /// Events up to `last` are committed. Callable from any thread.
    pub(crate) fn published(&self, last: i64) {
        self.last.send_if_modified(|known| {
            let newer = last > *known;
            if newer {
                *known = last;
            }
            newer
        });
    }

    /// Wakes on every publication.
    pub(crate) fn published_events(&self) -> watch::Receiver<i64> {
        self.last.subscribe()
    }

    /// The server is stopping: streams end (with UNAVAILABLE).
    pub fn close(&self) {
        self.closing.send_replace(true);
    }

    /// Turns true when the server stops.
    pub(crate) fn closing(&self) -> watch::Receiver<bool> {
        self.closing.subscribe()
    }
}
