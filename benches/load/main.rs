//! Load benchmark: starts the real `minicrm` binary (release build) on a fresh
//! database, seeds it, drives it with N concurrent in-flight calls over a few
//! HTTP/2 connections, and prints one table. Then checks the invariant.
//!
//! ```text
//! cargo bench --bench load -- --help
//! cargo bench --bench load -- [--concurrency 1,16,64] [--seconds 5] [--warmup 1]
//!     [--postgres URL] [--leads N] [--contacts N] [--connections 4] [--scenarios a,b]
//! cargo bench --bench load -- --scenarios soak --concurrency 64 --seconds 60 --warmup 0
//! ```

mod args;
mod db;
mod queue;
mod report;
mod run;
mod scenarios;
mod seed;
mod server;
mod soak;
#[path = "../../tests/support/test_db.rs"]
mod test_db;
mod watchers;

use std::sync::Arc;

use args::{Args, Scenario};
use clap::Parser as _;
use db::Sql;
use report::{RowHead, Table};
use run::{Progress, Run};
use server::{Clients, Server};
use soak::Soak;
use test_db::TestDb;

/// Lapses so far, from the stats counters.
fn lapses(db: &TestDb) -> i64 {
    Sql::connect(db)
        .number("SELECT CAST(COALESCE(SUM(lapsed), 0) AS BIGINT) AS n FROM contact_counts")
}

fn main() {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let db = match &args.postgres {
        Some(url) => TestDb::postgres_on(url.clone(), "minicrm_bench"),
        None => TestDb::sqlite(),
    };
    let server = Server::start(&db);
    let violated = runtime.block_on(async {
        server.wait_until_serving().await;
        let clients = Clients::connect(&server.address, args.connections).await;
        let fixture = Arc::new(seed::prepare(&args, &db, &clients).await);
        let events_before = Sql::connect(&db).number("SELECT last AS n FROM event_ids");
        let watchers = watchers::Watchers::start(&clients, args.watchers).await;
        let mut table = Table::new();
        let mut soak_log = String::new();
        let mut lapse_log = String::new();
        let mut number = 0;
        for &scenario in &args.scenarios {
            for &concurrency in &args.concurrency {
                number += 1;
                server.reset_peak_rss();
                let progress = Arc::new(Progress::default());
                let run = Run {
                    scenario,
                    concurrency,
                    warmup: args.warmup,
                    seconds: args.seconds,
                    number,
                    clients: &clients,
                    fixture: &fixture,
                    progress: &progress,
                };
                let lapsed_before = lapses(&db);
                let measured = if scenario == Scenario::Soak {
                    let soak = Soak {
                        db: &db,
                        server_pid: server.pid(),
                        sample_every: args.sample_every,
                        window: args.window,
                        settle: args.settle,
                    };
                    let (measured, log) = soak.go(&run).await;
                    soak_log.push_str(&log);
                    measured
                } else {
                    run.go().await
                };
                let head = RowHead {
                    scenario: &scenario.name(),
                    backend: db.backend(),
                    concurrency,
                    seconds: args.seconds,
                    peak_rss_mib: server.peak_rss_mib(),
                };
                table.add(&head, &measured, scenario.is_mixed());
                if scenario == Scenario::Accept {
                    let lapsed = lapses(&db) - lapsed_before;
                    let seconds = args.warmup + args.seconds;
                    lapse_log.push_str(&format!(
                        "accept at {concurrency} in flight: {lapsed} lapses handled in the \
                         {seconds} s of warm-up and run ({:.0}/s)\n",
                        lapsed as f64 / seconds
                    ));
                }
            }
        }
        println!("\n{}", table.text());
        if args.watchers > 0 {
            let written =
                Sql::connect(&db).number("SELECT last AS n FROM event_ids") - events_before;
            println!("{}", watchers.finish(written.unsigned_abs()).await);
        }
        if !lapse_log.is_empty() {
            println!("{lapse_log}");
        }
        if !soak_log.is_empty() {
            println!("{soak_log}");
        }
        let verdict = Sql::connect(&db).check_invariant();
        match &verdict {
            Ok(message) | Err(message) => println!("invariant: {message}"),
        }
        verdict.is_err()
    });
    drop(server);
    drop(db);
    if violated {
        std::process::exit(1);
    }
}
