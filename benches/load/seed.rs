//! What the scenarios work on, created before the timed runs: sources and
//! operators through the API, leads and contacts by plain SQL.

use std::time::Instant;

use minicrm::{
    domain::page_token_after,
    proto::{
        self as pb, operator_service_client::OperatorServiceClient,
        source_service_client::SourceServiceClient,
    },
};

use crate::{
    args::{Args, Scenario},
    db::{ACTIVE, CLOSED, PENDING, Sql},
    queue::{CloseQueue, Offer, Queue},
    server::Clients,
    test_db::TestDb,
};

/// Leads created up front for "existing lead" calls when `--leads` is 0.
const WARM_LEADS: u64 = 1_000;
/// Phones of the seeded leads are `+` this plus 1..=leads.
pub const SEED_PHONE_BASE: u64 = 2_000_000_000;
/// `created_at` and the like of seeded rows, in microseconds.
const SEED_TIME_US: i64 = 1_700_000_000_000_000;
/// A load limit no run reaches.
const AMPLE_LOAD: i32 = 1_000_000_000;
const OPERATORS_PER_SOURCE: i32 = 10;

/// close+dispatch: every operator of its source is full at this load.
const CLOSE_OPERATOR_LOAD: i32 = 100;
/// close+dispatch: pending contacts seeded per second of each of its runs,
/// more than it can close.
const CLOSES_PER_SECOND_BOUND: f64 = 25_000.0;

/// mix and soak: this many sources whose operators are all full at
/// `MIX_OPERATOR_LOAD`, with `MIX_WAITING_PER_SOURCE` contacts pending on each.
/// The registrations of the runs (PENDING) keep the pending contacts as many
/// as their closes dispatch.
pub const MIX_SOURCES: usize = 4;
const MIX_OPERATOR_LOAD: i32 = 5;
const MIX_WAITING_PER_SOURCE: u64 = 1_000;
/// accept: the offer's time, as short as API.md allows, so that the
/// contacts left unaccepted lapse within a run.
const ACCEPT_TIMEOUT_SECONDS: i64 = 1;
/// The pending contacts of the mix sources are seeded in this many rounds of
/// the four, so that the close queue meets each source in turn.
const MIX_WAITING_BLOCKS: usize = 20;

pub struct Fixture {
    pub register_source: i64,
    pub full_source: i64,
    /// close+dispatch: the contacts of its source.
    pub close_queue: CloseQueue,
    /// mix and soak: the sources the registrations go to…
    pub mix_sources: Vec<i64>,
    /// …and the contacts of those sources; registrations join at the back.
    pub mix_queue: CloseQueue,
    /// accept: a source whose contacts must be accepted within
    /// `ACCEPT_TIMEOUT_SECONDS`…
    pub accept_source: i64,
    /// …and the contacts of it registered to be accepted.
    pub accept_queue: Queue<Offer>,
    pub deep_token: String,
    pub existing_leads: u64,
}

/// A source served by `OPERATORS_PER_SOURCE` new operators, weights by
/// `weight(1..)`. Returns the source's id and the first operator's: their
/// ids follow one another.
async fn source_with_operators(
    clients: &Clients,
    bot_id: &str,
    max_load: i32,
    weight: impl Fn(i32) -> i32,
) -> (i64, i64) {
    let mut operators = OperatorServiceClient::new(clients.channel(0));
    let mut sources = SourceServiceClient::new(clients.channel(0));
    let source = sources
        .create_source(pb::CreateSourceRequest {
            bot_id: bot_id.into(),
            name: bot_id.into(),
            ..Default::default()
        })
        .await
        .expect("create source")
        .into_inner();
    let mut table = Vec::new();
    for index in 1..=OPERATORS_PER_SOURCE {
        let op = operators
            .create_operator(pb::CreateOperatorRequest {
                name: format!("{bot_id}-{index}"),
                is_active: Some(true),
                max_load,
            })
            .await
            .expect("create operator")
            .into_inner();
        table.push(pb::OperatorWeight {
            operator_id: op.id,
            weight: weight(index),
        });
    }
    let first = table[0].operator_id;
    assert!(
        table.iter().zip(first..).all(|(w, id)| w.operator_id == id),
        "the operators' ids of {bot_id} do not follow one another"
    );
    sources
        .set_source_operators(pb::SetSourceOperatorsRequest {
            source_id: source.id,
            operators: table,
        })
        .await
        .expect("set weights");
    (source.id, first)
}

pub async fn prepare(args: &Args, db: &TestDb, clients: &Clients) -> Fixture {
    let started = Instant::now();
    let (register_source, first_register_op) =
        source_with_operators(clients, "bench-register", AMPLE_LOAD, |i| i).await;
    let (full_source, _) = source_with_operators(clients, "bench-full", 0, |i| i).await;
    let (close_source, first_close_op) =
        source_with_operators(clients, "bench-close", CLOSE_OPERATOR_LOAD, |_| 1).await;
    let (accept_source, _) =
        source_with_operators(clients, "bench-accept", AMPLE_LOAD, |i| i).await;
    SourceServiceClient::new(clients.channel(0))
        .update_source(pb::UpdateSourceRequest {
            id: accept_source,
            accept_timeout: Some(prost_types::Duration {
                seconds: ACCEPT_TIMEOUT_SECONDS,
                nanos: 0,
            }),
            ..Default::default()
        })
        .await
        .expect("set the accept timeout");
    let mut mix = Vec::new();
    for k in 0..MIX_SOURCES {
        let bot_id = format!("bench-mix-{k}");
        mix.push(source_with_operators(clients, &bot_id, MIX_OPERATOR_LOAD, |_| 1).await);
    }

    // Pre-existing leads (and the warm pool when none are asked for).
    let leads = if args.leads > 0 {
        args.leads
    } else {
        WARM_LEADS
    };
    let mut seeder = Seeder::new(Sql::connect(db), leads);
    // Pre-existing contacts: closed, spread over the register source's operators.
    if args.contacts > 0 {
        let operator = format!("{first_register_op} + (i % {OPERATORS_PER_SOURCE})");
        let source = register_source.to_string();
        seeder.assigned(args.contacts, &source, &operator, CLOSED);
    }
    // close+dispatch: every slot of its source is taken, and enough contacts
    // wait that each close in its runs hands its slot on.
    let waiting = (CLOSES_PER_SECOND_BOUND * (args.seconds + args.warmup)) as u64
        * args.runs_of(Scenario::CloseDispatch);
    let close_slots = seeder.full_source(close_source, first_close_op, CLOSE_OPERATOR_LOAD);
    seeder.pending(waiting, &close_source.to_string());
    // mix and soak: the same on four sources with small operators.
    let mix_sources: Vec<i64> = mix.iter().map(|&(source, _)| source).collect();
    let mut mix_slots = 0;
    for &(source, first_op) in &mix {
        mix_slots += seeder.full_source(source, first_op, MIX_OPERATOR_LOAD);
    }
    // Interleaved, as the registrations of the runs will be.
    let mix_waiting = MIX_WAITING_PER_SOURCE * MIX_SOURCES as u64;
    for &(source, _) in mix.iter().cycle().take(MIX_SOURCES * MIX_WAITING_BLOCKS) {
        seeder.pending(
            MIX_WAITING_PER_SOURCE / MIX_WAITING_BLOCKS as u64,
            &source.to_string(),
        );
    }

    let mut sql = seeder.sql;
    sql.recount();
    if let Sql::Postgres(_) = sql {
        // Vacuum now, or autovacuum does it on the seeded rows during the run.
        sql.run("VACUUM ANALYZE");
    }
    let close_queue = CloseQueue::of_sources(&mut sql, &[close_source]);
    let mix_queue = CloseQueue::of_sources(&mut sql, &mix_sources);
    let max_id = sql.number("SELECT COALESCE(MAX(id), 0) AS n FROM contacts");
    eprintln!(
        "seeded in {:.1}s: {leads} leads, {} closed contacts; close+dispatch: {close_slots} \
         active + {waiting} pending; mix: {mix_slots} active + {mix_waiting} pending",
        started.elapsed().as_secs_f64(),
        args.contacts,
    );
    Fixture {
        register_source,
        full_source,
        close_queue,
        mix_sources,
        mix_queue,
        accept_source,
        accept_queue: Queue::default(),
        deep_token: page_token_after(max_id / 2),
        existing_leads: leads,
    }
}

/// Inserts contacts by plain SQL, `n` at a time numbered by `i` from 1, with
/// the seeded leads in turn.
struct Seeder {
    sql: Sql,
    lead: String,
}

impl Seeder {
    /// Creates the leads.
    fn new(mut sql: Sql, leads: u64) -> Self {
        sql.run(&format!(
            "INSERT INTO leads (phone, name, created_at) {}",
            sql.series(
                leads,
                &format!("'+' || ({SEED_PHONE_BASE} + i), '', {SEED_TIME_US}")
            )
        ));
        let first = sql.number("SELECT MIN(id) AS n FROM leads");
        let lead = format!("{first} + (i % {leads})");
        Self { sql, lead }
    }

    /// Contacts with an operator, ACTIVE or CLOSED; `source` and `operator`
    /// are SQL expressions of `i`.
    fn assigned(&mut self, n: u64, source: &str, operator: &str, status: i32) {
        let (lead, now) = (&self.lead, SEED_TIME_US);
        let closed_at = if status == CLOSED {
            now.to_string()
        } else {
            "NULL".to_owned()
        };
        let rows = self.sql.series(
            n,
            &format!("{lead}, {source}, {operator}, {status}, {now}, {now}, {closed_at}, false"),
        );
        self.sql.run(&format!(
            "INSERT INTO contacts (lead_id, source_id, operator_id, status, created_at, \
             assigned_at, closed_at, lead_created) {rows}"
        ));
    }

    fn pending(&mut self, n: u64, source: &str) {
        if n == 0 {
            return;
        }
        let (lead, now) = (&self.lead, SEED_TIME_US);
        let rows = self
            .sql
            .series(n, &format!("{lead}, {source}, {PENDING}, {now}, false"));
        self.sql.run(&format!(
            "INSERT INTO contacts (lead_id, source_id, status, created_at, lead_created) {rows}"
        ));
    }

    /// Fills every slot of the source's operators (made by
    /// `source_with_operators`) with ACTIVE contacts; returns how many.
    fn full_source(&mut self, source: i64, first_op: i64, load: i32) -> u64 {
        let ops = OPERATORS_PER_SOURCE;
        let slots = (ops * load) as u64;
        let operator = format!("{first_op} + (i % {ops})");
        self.assigned(slots, &source.to_string(), &operator, ACTIVE);
        self.sql.run(&format!(
            "UPDATE operators SET active_load = {load} WHERE id BETWEEN {first_op} AND {}",
            first_op + i64::from(ops) - 1
        ));
        slots
    }
}
