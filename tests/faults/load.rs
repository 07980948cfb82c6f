//! Concurrent callers that register (and close) contacts until stopped,
//! recording every answer and how long it took.

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use minicrm::proto::{self as pb, contact_service_client::ContactServiceClient};
use tokio::task::JoinSet;
use tonic::{Code, transport::Channel};

/// A caller gives up on an answer after this long (and records it as such):
/// far beyond anything the contract allows.
const HUNG: Duration = Duration::from_secs(15);

#[derive(Debug, Clone)]
pub enum Call {
    Register { request_id: String },
    Close { contact_id: i64 },
    Read,
}

#[derive(Debug, Clone)]
pub struct Record {
    pub call: Call,
    /// Since the load started.
    pub at: Duration,
    pub latency: Duration,
    /// `Code::Ok` for an answer; `Code::DeadlineExceeded` for one that never came.
    pub code: Code,
    pub registered: Option<pb::RegisterContactResponse>,
}

pub struct Load {
    stop: Arc<AtomicBool>,
    tasks: JoinSet<Vec<Record>>,
    pub started: Instant,
}

/// Unique phone numbers across every load of a test process.
static NEXT_PHONE: AtomicU64 = AtomicU64::new(1);

impl Load {
    /// `writers` callers register contacts on `source_id` with request ids
    /// `{tag}-{caller}-{n}`, closing every third contact they registered;
    /// `readers` callers read (GetOperatorStats).
    pub fn start(
        channel: &Channel,
        source_id: i64,
        tag: &str,
        writers: usize,
        readers: usize,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let mut tasks = JoinSet::new();
        for caller in 0..writers {
            let client = ContactServiceClient::new(channel.clone());
            let stop = Arc::clone(&stop);
            let tag = format!("{tag}-{caller}");
            tasks.spawn(write(client, stop, started, source_id, tag));
        }
        for _ in 0..readers {
            let client = ContactServiceClient::new(channel.clone());
            let stop = Arc::clone(&stop);
            tasks.spawn(read(client, stop, started));
        }
        Self {
            stop,
            tasks,
            started,
        }
    }

    /// Lets the callers run for `after`, then stops them.
    pub async fn stop_after(self, after: Duration) -> Vec<Record> {
        tokio::time::sleep(after).await;
        self.stop().await
    }

    /// Stops the callers and returns every record, in no particular order.
    pub async fn stop(mut self) -> Vec<Record> {
        self.stop.store(true, Ordering::Relaxed);
        let mut records = Vec::new();
        while let Some(joined) = self.tasks.join_next().await {
            records.extend(joined.expect("caller"));
        }
        records
    }
}

async fn timed<T>(
    started: Instant,
    call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> (Duration, Duration, Result<T, Code>) {
    let at = started.elapsed();
    let begun = Instant::now();
    let outcome = match tokio::time::timeout(HUNG, call).await {
        Ok(Ok(response)) => Ok(response.into_inner()),
        Ok(Err(status)) => Err(status.code()),
        Err(_) => Err(Code::DeadlineExceeded),
    };
    (at, begun.elapsed(), outcome)
}

async fn write(
    mut client: ContactServiceClient<Channel>,
    stop: Arc<AtomicBool>,
    started: Instant,
    source_id: i64,
    tag: String,
) -> Vec<Record> {
    let mut records = Vec::new();
    let mut registered = Vec::new();
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let request_id = format!("{tag}-{n}");
        let phone = format!("+1{:010}", NEXT_PHONE.fetch_add(1, Ordering::Relaxed));
        let request = pb::RegisterContactRequest {
            source: Some(pb::register_contact_request::Source::SourceId(source_id)),
            lead: Some(pb::LeadIdentity {
                phone,
                ..Default::default()
            }),
            request_id: request_id.clone(),
        };
        let (at, latency, outcome) = timed(started, client.register_contact(request)).await;
        let code = outcome.as_ref().err().copied().unwrap_or(Code::Ok);
        if let Ok(response) = &outcome {
            registered.push(response.contact.as_ref().expect("contact").id);
        }
        records.push(Record {
            call: Call::Register { request_id },
            at,
            latency,
            code,
            registered: outcome.ok(),
        });
        if code != Code::Ok && code != Code::Unavailable {
            // The server is gone (kill -9): nothing more to learn.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if n % 3 == 0
            && let Some(contact_id) = registered.pop()
        {
            let (at, latency, outcome) = timed(
                started,
                client.close_contact(pb::CloseContactRequest { id: contact_id }),
            )
            .await;
            records.push(Record {
                call: Call::Close { contact_id },
                at,
                latency,
                code: outcome.err().unwrap_or(Code::Ok),
                registered: None,
            });
        }
    }
    records
}

async fn read(
    mut client: ContactServiceClient<Channel>,
    stop: Arc<AtomicBool>,
    started: Instant,
) -> Vec<Record> {
    let mut records = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let (at, latency, outcome) = timed(
            started,
            client.get_operator_stats(pb::GetOperatorStatsRequest {}),
        )
        .await;
        records.push(Record {
            call: Call::Read,
            at,
            latency,
            code: outcome.err().unwrap_or(Code::Ok),
            registered: None,
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    records
}

/// How many records ended with each code.
pub fn codes(records: &[Record]) -> BTreeMap<String, usize> {
    let mut codes = BTreeMap::new();
    for record in records {
        *codes.entry(format!("{:?}", record.code)).or_default() += 1;
    }
    codes
}

/// Every acknowledged registration is there, with the contact and lead it
/// was answered with, and every acknowledged close left its contact CLOSED.
/// Returns (registrations, closes) checked.
pub async fn assert_acknowledged_present(channel: &Channel, records: &[Record]) -> (usize, usize) {
    let contacts: BTreeMap<i64, pb::Contact> =
        crate::helpers::all_contacts(ContactServiceClient::new(channel.clone()))
            .await
            .into_iter()
            .map(|contact| (contact.id, contact))
            .collect();
    let mut registrations = 0;
    let mut closes = 0;
    for record in records.iter().filter(|record| record.code == Code::Ok) {
        match &record.call {
            Call::Register { request_id } => {
                let answered = record.registered.as_ref().expect("answer");
                let contact = answered.contact.as_ref().expect("contact");
                let stored = contacts.get(&contact.id).unwrap_or_else(|| {
                    panic!("acknowledged contact {} ({request_id}) lost", contact.id)
                });
                assert_eq!(&stored.request_id, request_id);
                assert_eq!(stored.lead_id, contact.lead_id);
                registrations += 1;
            }
            Call::Close { contact_id } => {
                let stored = contacts
                    .get(contact_id)
                    .unwrap_or_else(|| panic!("closed contact {contact_id} lost"));
                assert_eq!(
                    stored.status,
                    pb::ContactStatus::Closed as i32,
                    "acknowledged close of contact {contact_id} lost"
                );
                closes += 1;
            }
            Call::Read => {}
        }
    }
    (registrations, closes)
}

/// A source served by `operators` operators with the given load limit.
pub async fn seed(channel: &Channel, bot_id: &str, operators: usize, max_load: i32) -> i64 {
    let mut sources = pb::source_service_client::SourceServiceClient::new(channel.clone());
    let mut operator_client =
        pb::operator_service_client::OperatorServiceClient::new(channel.clone());
    let source = sources
        .create_source(pb::CreateSourceRequest {
            bot_id: bot_id.into(),
            name: bot_id.into(),
            ..Default::default()
        })
        .await
        .expect("create source")
        .into_inner();
    let mut weights = Vec::new();
    for index in 0..operators {
        let operator = operator_client
            .create_operator(pb::CreateOperatorRequest {
                name: format!("{bot_id}-{index}"),
                is_active: None,
                max_load,
            })
            .await
            .expect("create operator")
            .into_inner();
        weights.push(pb::OperatorWeight {
            operator_id: operator.id,
            weight: 1 + index as i32,
        });
    }
    sources
        .set_source_operators(pb::SetSourceOperatorsRequest {
            source_id: source.id,
            operators: weights,
        })
        .await
        .expect("set weights");
    source.id
}
