//! Starts the real server on port 0 over a database of its own and talks to it
//! through the generated tonic clients.

use std::future::Future;

use diesel::{Connection, PgConnection};
use minicrm::{
    config::Settings,
    proto::{
        self as pb, contact_service_client::ContactServiceClient,
        operator_service_client::OperatorServiceClient, source_service_client::SourceServiceClient,
    },
    startup::Application,
};
use tokio::{sync::oneshot, task::JoinHandle};
use tonic::{Code, Status, transport::Channel};

use crate::test_db::POSTGRES_URL_VAR;
pub use crate::test_db::TestDb;

/// A lock held from outside the server, in a thread of its own, until
/// dropped: on SQLite the database's write lock (`BEGIN IMMEDIATE`), on
/// PostgreSQL the operator's row (`FOR UPDATE`). A write that changes that
/// operator waits for it: the writer is plugged, and the calls sent meanwhile
/// queue up and then run as one batch.
pub struct OutsideLock {
    release: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl OutsideLock {
    pub fn take(db: &TestDb, operator_id: i64) -> Self {
        let (locked, is_locked) = std::sync::mpsc::channel::<()>();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let url = db.url();
        let thread = std::thread::spawn(move || {
            use diesel::connection::SimpleConnection;
            let mut connection: Box<dyn SimpleConnection> = match url.strip_prefix("sqlite://") {
                Some(path) => {
                    let mut sqlite = diesel::SqliteConnection::establish(path).expect("sqlite");
                    sqlite.batch_execute("BEGIN IMMEDIATE").expect("lock");
                    Box::new(sqlite)
                }
                None => {
                    let mut pg = PgConnection::establish(&url).expect("postgres");
                    pg.batch_execute(&format!(
                        "BEGIN; SELECT id FROM operators WHERE id = {operator_id} FOR UPDATE"
                    ))
                    .expect("lock");
                    Box::new(pg)
                }
            };
            let _ = locked.send(());
            let _ = released.recv();
            let _ = connection.batch_execute("ROLLBACK");
        });
        is_locked.recv().expect("the lock is taken");
        Self {
            release: Some(release),
            thread: Some(thread),
        }
    }

    pub fn release(mut self) {
        self.release_now();
    }

    fn release_now(&mut self) {
        drop(self.release.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for OutsideLock {
    fn drop(&mut self) {
        self.release_now();
    }
}

pub struct TestApp {
    pub operators: OperatorServiceClient<Channel>,
    pub sources: SourceServiceClient<Channel>,
    pub contacts: ContactServiceClient<Channel>,
    pub channel: Channel,
    /// Stops when dropped.
    server: TestServer,
}

/// Settings for a test server: port 0 on loopback, over `db`. Tests add
/// their own (tokens, TLS) with `Settings { …, ..test_settings(&db) }`.
pub fn test_settings(db: &TestDb) -> Settings {
    Settings {
        listen: "127.0.0.1:0".into(),
        database_url: db.url(),
        ..Settings::default()
    }
}

fn init_test_logging() {
    // RUST_LOG=debug cargo test -- --nocapture shows the server's log.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .try_init();
}

/// The real server started in this process with any settings, for tests
/// that make their own clients (bearer tokens, TLS). Stops when dropped.
pub struct TestServer {
    pub address: std::net::SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<Result<(), tonic::transport::Error>>>,
}

impl TestServer {
    pub async fn start(settings: &Settings) -> Self {
        init_test_logging();
        let application = Application::build(settings).await.expect("server starts");
        let address = application.local_addr().expect("bound address");
        let (shutdown, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(application.run_until_stopped(async {
            let _ = stopped.await;
        }));
        Self {
            address,
            shutdown: Some(shutdown),
            server: Some(server),
        }
    }

    /// Stops the server gracefully and waits until it has.
    pub async fn stop(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(server) = self.server.take() {
            server.await.expect("server task").expect("server ran");
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

impl TestApp {
    pub async fn spawn(db: &TestDb) -> Self {
        Self::spawn_with(db, |_| {}).await
    }

    /// Like [`TestApp::spawn`], with settings changed by `adjust`.
    pub async fn spawn_with(db: &TestDb, adjust: impl FnOnce(&mut Settings)) -> Self {
        let mut settings = test_settings(db);
        adjust(&mut settings);
        let server = TestServer::start(&settings).await;
        let channel = Channel::from_shared(format!("http://{}", server.address))
            .expect("valid uri")
            .connect()
            .await
            .expect("client connects");
        Self {
            operators: OperatorServiceClient::new(channel.clone()),
            sources: SourceServiceClient::new(channel.clone()),
            contacts: ContactServiceClient::new(channel.clone()),
            channel,
            server,
        }
    }

    /// Stops the server gracefully and waits until it has.
    pub async fn stop(self) {
        self.server.stop().await;
    }

    pub async fn create_operator(&self, name: &str, max_load: i32) -> pb::Operator {
        self.operators
            .clone()
            .create_operator(pb::CreateOperatorRequest {
                name: name.into(),
                is_active: None,
                max_load,
            })
            .await
            .expect("create operator")
            .into_inner()
    }

    pub async fn create_source(&self, bot_id: &str) -> pb::Source {
        self.sources
            .clone()
            .create_source(pb::CreateSourceRequest {
                bot_id: bot_id.into(),
                name: format!("{bot_id} bot"),
                ..Default::default()
            })
            .await
            .expect("create source")
            .into_inner()
    }

    pub async fn set_weights(&self, source_id: i64, weights: &[(i64, i32)]) {
        self.sources
            .clone()
            .set_source_operators(pb::SetSourceOperatorsRequest {
                source_id,
                operators: weights
                    .iter()
                    .map(|&(operator_id, weight)| pb::OperatorWeight {
                        operator_id,
                        weight,
                    })
                    .collect(),
            })
            .await
            .expect("set weights");
    }

    /// A source served by `count` operators with the given load limit and weight 1.
    pub async fn source_with_operators(
        &self,
        bot_id: &str,
        count: usize,
        max_load: i32,
    ) -> (pb::Source, Vec<pb::Operator>) {
        let source = self.create_source(bot_id).await;
        let mut operators = Vec::new();
        for index in 0..count {
            operators.push(
                self.create_operator(&format!("{bot_id}-op{index}"), max_load)
                    .await,
            );
        }
        let weights: Vec<_> = operators.iter().map(|op| (op.id, 1)).collect();
        self.set_weights(source.id, &weights).await;
        (source, operators)
    }

    pub async fn register(
        &self,
        source_id: i64,
        lead: pb::LeadIdentity,
        request_id: &str,
    ) -> Result<pb::RegisterContactResponse, Status> {
        self.contacts
            .clone()
            .register_contact(pb::RegisterContactRequest {
                source: Some(pb::register_contact_request::Source::SourceId(source_id)),
                lead: Some(lead),
                request_id: request_id.into(),
            })
            .await
            .map(tonic::Response::into_inner)
    }

    pub async fn get_operator(&self, id: i64) -> pb::Operator {
        self.operators
            .clone()
            .get_operator(pb::GetOperatorRequest { id })
            .await
            .expect("get operator")
            .into_inner()
    }

    pub async fn get_contact(&self, id: i64) -> pb::Contact {
        self.contacts
            .clone()
            .get_contact(pb::GetContactRequest { id })
            .await
            .expect("get contact")
            .into_inner()
    }

    pub async fn close(&self, id: i64) -> Result<pb::Contact, Status> {
        self.contacts
            .clone()
            .close_contact(pb::CloseContactRequest { id })
            .await
            .map(tonic::Response::into_inner)
    }

    /// Every contact, following the page tokens to the end.
    pub async fn all_contacts(&self) -> Vec<pb::Contact> {
        all_contacts(self.contacts.clone()).await
    }

    /// Every recorded event (filtered), following the page tokens to the end.
    pub async fn all_events(&self, filter: pb::ListContactEventsRequest) -> Vec<pb::ContactEvent> {
        let mut events = Vec::new();
        let mut page_token = String::new();
        loop {
            let page = self
                .contacts
                .clone()
                .list_contact_events(pb::ListContactEventsRequest {
                    page_size: 1000,
                    page_token,
                    ..filter.clone()
                })
                .await
                .expect("list contact events")
                .into_inner();
            events.extend(page.events);
            if page.next_page_token.is_empty() {
                return events;
            }
            page_token = page.next_page_token;
        }
    }

    /// The record and the data agree: every contact's last event shows the
    /// contact exactly as it is, and event ids increase without gaps.
    pub async fn assert_events_match(&self, contacts: &[pb::Contact]) {
        use std::collections::BTreeMap;
        let events = self.all_events(Default::default()).await;
        for pair in events.windows(2) {
            assert_eq!(pair[1].id, pair[0].id + 1, "event ids have a gap");
        }
        let mut last: BTreeMap<i64, &pb::ContactEvent> = BTreeMap::new();
        for event in &events {
            let contact = event.contact.as_ref().expect("event contact");
            last.insert(contact.id, event);
        }
        assert_eq!(last.len(), contacts.len(), "every contact has events");
        // Turning a source's accept_timeout off clears the deadlines of its
        // waiting contacts without an event of their own.
        let timeout_off: std::collections::BTreeSet<i64> = self
            .all_sources()
            .await
            .into_iter()
            .filter(|source| source.accept_timeout.is_none())
            .map(|source| source.id)
            .collect();
        for contact in contacts {
            let event = last.get(&contact.id).expect("the contact's events");
            let mut recorded = event.contact.clone().expect("event contact");
            if contact.accept_deadline.is_none() && timeout_off.contains(&contact.source_id) {
                recorded.accept_deadline = None;
            }
            assert_eq!(
                &recorded, contact,
                "the last event of contact {} disagrees with it",
                contact.id
            );
        }
    }

    pub async fn all_sources(&self) -> Vec<pb::Source> {
        self.sources
            .clone()
            .list_sources(pb::ListSourcesRequest {
                page_size: 1000,
                ..Default::default()
            })
            .await
            .expect("list sources")
            .into_inner()
            .sources
    }

    pub async fn all_operators(&self) -> Vec<pb::Operator> {
        self.operators
            .clone()
            .list_operators(pb::ListOperatorsRequest {
                page_size: 1000,
                ..Default::default()
            })
            .await
            .expect("list operators")
            .into_inner()
            .operators
    }

    pub async fn all_leads(&self) -> Vec<pb::Lead> {
        self.contacts
            .clone()
            .list_leads(pb::ListLeadsRequest {
                page_size: 1000,
                ..Default::default()
            })
            .await
            .expect("list leads")
            .into_inner()
            .leads
    }

    /// Every operator's `active_load` equals its count of ACTIVE contacts.
    /// Returns the operators with their ACTIVE counts.
    pub async fn assert_loads_match(&self) -> Vec<(pb::Operator, usize)> {
        let contacts = self.all_contacts().await;
        let mut loads = Vec::new();
        for operator in self.all_operators().await {
            let active = contacts
                .iter()
                .filter(|c| {
                    c.operator_id == Some(operator.id)
                        && c.status == pb::ContactStatus::Active as i32
                })
                .count();
            assert_eq!(
                operator.active_load as usize, active,
                "operator {}: active_load {} but {} ACTIVE contacts",
                operator.id, operator.active_load, active
            );
            loads.push((operator, active));
        }
        self.assert_stats_match(&contacts).await;
        self.assert_events_match(&contacts).await;
        loads
    }

    /// GetOperatorStats agrees with the contacts it summarizes, and `lapsed`
    /// with the events: a lapse is an event whose contact shows `lapses`
    /// grown, taken from `previous_operator_id`.
    pub async fn assert_stats_match(&self, contacts: &[pb::Contact]) {
        use std::collections::BTreeMap;
        let mut pairs: BTreeMap<(i64, i64), (i64, i64, i64, i64)> = BTreeMap::new();
        let mut lapses_seen: BTreeMap<i64, i32> = BTreeMap::new();
        for event in self.all_events(Default::default()).await {
            let contact = event.contact.as_ref().expect("event contact");
            let seen = lapses_seen.entry(contact.id).or_default();
            if contact.lapses > *seen {
                assert_eq!(contact.lapses, *seen + 1, "one lapse at a time");
                let from = event
                    .previous_operator_id
                    .expect("a lapse names the operator it left");
                pairs.entry((from, contact.source_id)).or_default().3 += 1;
            }
            *seen = contact.lapses;
        }
        let mut pending: BTreeMap<i64, i64> = BTreeMap::new();
        for contact in contacts {
            if contact.status == pb::ContactStatus::Pending as i32 {
                *pending.entry(contact.source_id).or_default() += 1;
            }
            if let Some(operator_id) = contact.operator_id {
                let counts = pairs.entry((operator_id, contact.source_id)).or_default();
                if contact.status == pb::ContactStatus::Active as i32 {
                    counts.0 += 1;
                } else if contact.status == pb::ContactStatus::Closed as i32 {
                    counts.1 += 1;
                }
                counts.2 += 1;
            }
        }
        let expected = pb::GetOperatorStatsResponse {
            rows: pairs
                .into_iter()
                .map(
                    |((operator_id, source_id), (active, closed, total, lapsed))| {
                        pb::OperatorSourceStats {
                            operator_id,
                            source_id,
                            active,
                            closed,
                            total,
                            lapsed,
                        }
                    },
                )
                .collect(),
            pending: pending
                .into_iter()
                .map(|(source_id, pending)| pb::SourcePending { source_id, pending })
                .collect(),
        };
        let stats = self
            .contacts
            .clone()
            .get_operator_stats(pb::GetOperatorStatsRequest {})
            .await
            .expect("stats")
            .into_inner();
        assert_eq!(
            stats, expected,
            "GetOperatorStats disagrees with the contacts"
        );
    }

    /// The contract's invariant, checked from outside: loads match their
    /// ACTIVE counts and nobody holds more than `max_load`. Returns the number
    /// of ACTIVE contacts.
    pub async fn assert_invariant(&self) -> usize {
        let mut active_total = 0;
        for (operator, active) in self.assert_loads_match().await {
            assert!(
                operator.active_load <= operator.max_load,
                "operator {} over its limit: {} > {}",
                operator.id,
                operator.active_load,
                operator.max_load
            );
            active_total += active;
        }
        active_total
    }
}

pub fn phone_lead(phone: &str) -> pb::LeadIdentity {
    pb::LeadIdentity {
        phone: phone.into(),
        ..Default::default()
    }
}

pub fn assert_code<T: std::fmt::Debug>(result: Result<T, Status>, code: Code, field: &str) {
    match result {
        Ok(value) => panic!("expected {code:?}, got Ok({value:?})"),
        Err(status) => {
            assert_eq!(status.code(), code, "{}", status.message());
            assert!(
                status.message().contains(field),
                "message {:?} should name {field:?}",
                status.message()
            );
        }
    }
}

/// Runs the future once per backend: SQLite always, PostgreSQL when
/// `MINICRM_TEST_POSTGRES_URL` is set (skipped with a note otherwise).
pub async fn on_postgres<F, Fut>(test: F)
where
    F: FnOnce(TestDb) -> Fut,
    Fut: Future<Output = ()>,
{
    match TestDb::postgres() {
        Some(db) => test(db).await,
        None => eprintln!("skipped: set {POSTGRES_URL_VAR} to run this test on PostgreSQL"),
    }
}

/// Declares each listed `async fn name(db: TestDb)` as two tests,
/// `sqlite::name` and `postgres::name`.
#[macro_export]
macro_rules! backend_tests {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::helpers::TestDb::sqlite()).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    $crate::helpers::on_postgres(super::$name).await;
                }
            )*
        }
    };
}

#[test]
fn postgres_urls_are_pointed_at_the_test_database() {
    use crate::test_db::with_database;
    assert_eq!(
        with_database("postgres://postgres@127.0.0.1:5432/test", "t1"),
        "postgres://postgres@127.0.0.1:5432/t1"
    );
    assert_eq!(
        with_database("postgresql://u:p@h/db?sslmode=disable", "t2"),
        "postgresql://u:p@h/t2?sslmode=disable"
    );
    assert_eq!(
        with_database("postgres://h:5432", "t3"),
        "postgres://h:5432/t3"
    );
}

/// Every contact, following the page tokens to the end.
pub async fn all_contacts(mut client: ContactServiceClient<Channel>) -> Vec<pb::Contact> {
    let mut contacts = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_contacts(pb::ListContactsRequest {
                page_size: 1000,
                page_token,
                ..Default::default()
            })
            .await
            .expect("list contacts")
            .into_inner();
        contacts.extend(page.contacts);
        if page.next_page_token.is_empty() {
            return contacts;
        }
        page_token = page.next_page_token;
    }
}
