//! The SQLite write-ahead log stays bounded under writes that never pause, and
//! shrinks back once they stop (see the `Checkpointer` in src/db/connection.rs).

use std::{
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use minicrm::proto as pb;
use tokio::task::JoinSet;

use crate::helpers::{TestApp, TestDb};

/// How long the writes go on. With no WAL restarts the log grows by tens of
/// MiB a second even in a debug build, well past [`WAL_BOUND`].
const LOAD: Duration = Duration::from_secs(6);
const CALLERS: usize = 48;
/// Readers on the log too, which a restart must wait out (few: they take CPU
/// from the writes, and a writer that pauses lets even the old code restart).
const READERS: usize = 2;
/// The restart threshold (32 MiB) plus what one checkpointer tick can add.
const WAL_BOUND: u64 = 48 << 20;
/// What the WAL may keep once writes stopped, and how soon.
const WAL_AT_REST: u64 = 1 << 20;
const SETTLE: Duration = Duration::from_secs(5);

/// A new lead whose keys land all over their unique indexes, as real ones
/// do: each registration dirties pages of its own, which the WAL takes.
fn scattered_lead(caller: usize, n: u64) -> pb::LeadIdentity {
    let key = ((caller as u64) << 32 | n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    pb::LeadIdentity {
        external_id: format!("{key:016x}"),
        phone: format!("+1{:010}", key % 10_000_000_000),
        email: format!("{:x}@example.com", key.rotate_left(17)),
        name: String::new(),
    }
}

fn file_size(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |metadata| metadata.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_wal_stays_bounded_under_sustained_writes_and_shrinks_after() {
    let db = TestDb::sqlite();
    let TestDb::Sqlite(dir) = &db else {
        unreachable!()
    };
    let wal = dir.path().join("minicrm.db-wal");
    let app = TestApp::spawn(&db).await;
    let (source, _) = app.source_with_operators("bot", 4, 1_000_000_000).await;

    let stop = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicU64::new(0));
    let mut callers = JoinSet::new();
    for caller in 0..CALLERS {
        let mut contacts = app.contacts.clone();
        let (stop, calls) = (Arc::clone(&stop), Arc::clone(&calls));
        callers.spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let registered = contacts
                    .register_contact(pb::RegisterContactRequest {
                        source: Some(pb::register_contact_request::Source::SourceId(source.id)),
                        lead: Some(scattered_lead(caller, n)),
                        request_id: format!("wal-{caller}-{n}"),
                    })
                    .await
                    .expect("register")
                    .into_inner();
                if n.is_multiple_of(2) {
                    let id = registered.contact.expect("a contact").id;
                    contacts
                        .close_contact(pb::CloseContactRequest { id })
                        .await
                        .expect("close");
                }
                calls.fetch_add(1, Ordering::Relaxed);
            }
        });
    }

    for _ in 0..READERS {
        let mut contacts = app.contacts.clone();
        let stop = Arc::clone(&stop);
        callers.spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                contacts
                    .list_contacts(pb::ListContactsRequest {
                        page_size: 100,
                        ..Default::default()
                    })
                    .await
                    .expect("list");
            }
        });
    }

    let started = Instant::now();
    let mut largest = 0;
    while started.elapsed() < LOAD {
        tokio::time::sleep(Duration::from_millis(20)).await;
        largest = largest.max(file_size(&wal));
        assert!(
            largest <= WAL_BOUND,
            "the WAL reached {} MiB after {:.1} s of writes ({} registrations); bound {} MiB",
            largest >> 20,
            started.elapsed().as_secs_f64(),
            calls.load(Ordering::Relaxed),
            WAL_BOUND >> 20
        );
    }
    stop.store(true, Ordering::Relaxed);
    while let Some(caller) = callers.join_next().await {
        caller.expect("caller");
    }
    let registered = calls.load(Ordering::Relaxed);
    eprintln!(
        "{registered} registrations in {:.1} s, WAL at most {:.1} MiB",
        started.elapsed().as_secs_f64(),
        largest as f64 / f64::from(1 << 20)
    );
    assert!(registered > 0);

    let stopped = Instant::now();
    while file_size(&wal) > WAL_AT_REST {
        assert!(
            stopped.elapsed() < SETTLE,
            "the WAL is still {} KiB {:.1} s after the writes stopped",
            file_size(&wal) >> 10,
            stopped.elapsed().as_secs_f64()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app.stop().await;
}
