//! WatchContactEvents: a task per stream reads the events after its cursor
//! from the database, a page at a time, and hands them to a small bounded
//! channel that tonic drains as the client reads. A slow client fills the
//! channel and the task waits: it never holds more than a page and the
//! channel, and catches up from the database. With nothing new it waits for
//! this replica's writers to publish
//! ([`EventHub`](crate::event_stream::EventHub)) or, for events other replicas
//! write, for the next poll.

use std::{pin::Pin, time::Duration};

use tokio::sync::mpsc;
use tokio_stream::{Stream, wrappers::ReceiverStream};
use tonic::Status;

use crate::{
    Result,
    domain::{EventCursor, EventFilter},
    proto as pb,
    repository::Repository,
};

/// How often an idle stream looks for events written by other replicas.
const POLL: Duration = Duration::from_millis(250);
/// Events read per query.
const PAGE: i64 = 100;
/// Events waiting for the client per stream.
const BUFFER: usize = 64;

pub type EventStream = Pin<Box<dyn Stream<Item = Result<pb::ContactEvent, Status>> + Send>>;

/// Checks the request (NOT_FOUND, OUT_OF_RANGE), then starts the stream.
pub(super) async fn start(
    repository: Repository,
    after: Option<EventCursor>,
    filter: EventFilter,
) -> Result<EventStream> {
    let cursor = repository.start_watch(after, filter).await?;
    let (sender, receiver) = mpsc::channel(BUFFER);
    tokio::spawn(feed(repository, cursor, filter, sender));
    Ok(Box::pin(ReceiverStream::new(receiver)))
}

async fn feed(
    repository: Repository,
    mut cursor: i64,
    filter: EventFilter,
    sender: mpsc::Sender<Result<pb::ContactEvent, Status>>,
) {
    let hub = repository.event_hub().clone();
    let mut published = hub.published_events();
    let mut closing = hub.closing();
    loop {
        if *closing.borrow() {
            let _ = sender
                .send(Err(Status::unavailable(
                    "the server is shutting down: reconnect with the last event id seen",
                )))
                .await;
            return;
        }
        // Marks what has been seen before reading, so that a publication
        // during the read wakes the wait below.
        published.borrow_and_update();
        let events = match repository.watch_events(cursor, filter, PAGE).await {
            Ok(events) => events,
            Err(error) => {
                let _ = sender.send(Err(error.into())).await;
                return;
            }
        };
        let full_page = events.len() as i64 == PAGE;
        for event in events {
            cursor = event.id;
            tokio::select! {
                sent = sender.send(Ok(event.into())) => if sent.is_err() { return },
                _ = closing.changed() => break,
            }
        }
        if full_page {
            continue;
        }
        tokio::select! {
            _ = published.changed() => {}
            _ = tokio::time::sleep(POLL) => {}
            _ = closing.changed() => {}
            () = sender.closed() => return,
        }
    }
}
