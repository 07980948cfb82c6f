//! One call of each scenario.

use minicrm::proto::{
    self as pb, contact_service_client::ContactServiceClient, register_contact_request::Source,
};
use tonic::transport::Channel;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::{
    args::Scenario,
    queue::{CloseQueue, Offer},
    seed::{Fixture, MIX_SOURCES, SEED_PHONE_BASE},
};

/// Phones of new leads: `+` this plus the run's number times
/// `NEW_PHONES_PER_RUN` plus the registration's number.
const NEW_PHONE_BASE: u64 = 5_000_000_000;
const NEW_PHONES_PER_RUN: u64 = 100_000_000;
/// accept: how long a call waits for a registration to give it an offer.
const OFFER_WAIT_MS: u32 = 1_000;

/// What a call was, for the split of mixed runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Registration,
    Close,
    Accept,
    Other,
}

/// The kind of call number `n` (of the whole run) in `scenario`.
pub fn kind(scenario: Scenario, n: u64) -> Kind {
    match scenario {
        Scenario::Register | Scenario::RegisterFull => Kind::Registration,
        Scenario::CloseDispatch => Kind::Close,
        Scenario::Mix | Scenario::Soak if n.is_multiple_of(2) => Kind::Registration,
        Scenario::Mix | Scenario::Soak => Kind::Close,
        // Two registrations, then an accept of the first of them.
        Scenario::Accept if n % 3 == 2 => Kind::Accept,
        Scenario::Accept => Kind::Registration,
        Scenario::Noop | Scenario::Stats | Scenario::List => Kind::Other,
    }
}

/// Call number `n` of run number `run` (runs are numbered from 1 across the
/// whole benchmark, so that request ids and new phones never repeat).
pub async fn call(
    scenario: Scenario,
    channel: Channel,
    fixture: &Fixture,
    n: u64,
    run: u64,
) -> Result<(), String> {
    let mut contacts = ContactServiceClient::new(channel.clone());
    match scenario {
        Scenario::Noop => answered(
            HealthClient::new(channel)
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await,
        ),
        Scenario::Register => register(&mut contacts, fixture, fixture.register_source, n, run)
            .await
            .map(drop),
        Scenario::RegisterFull => register(&mut contacts, fixture, fixture.full_source, n, run)
            .await
            .map(drop),
        Scenario::CloseDispatch => close(&mut contacts, &fixture.close_queue).await,
        Scenario::Stats => answered(
            contacts
                .get_operator_stats(pb::GetOperatorStatsRequest {})
                .await,
        ),
        Scenario::List => answered(
            contacts
                .list_contacts(pb::ListContactsRequest {
                    page_size: 100,
                    page_token: fixture.deep_token.clone(),
                    ..Default::default()
                })
                .await,
        ),
        Scenario::Mix | Scenario::Soak => match kind(scenario, n) {
            Kind::Registration => {
                // Registrations are the even calls: number them 0, 1, 2…
                let k = n / 2;
                let source = fixture.mix_sources[(k / 2) as usize % MIX_SOURCES];
                let response = register(&mut contacts, fixture, source, k, run).await?;
                // PENDING behind the seeded ones: dispatched, and then closed,
                // once the queue reaches it.
                if let Some(contact) = response.contact {
                    fixture.mix_queue.push(contact.id);
                }
                Ok(())
            }
            Kind::Close | Kind::Accept | Kind::Other => {
                close(&mut contacts, &fixture.mix_queue).await
            }
        },
        Scenario::Accept => match kind(scenario, n) {
            Kind::Registration => {
                let response =
                    register(&mut contacts, fixture, fixture.accept_source, n, run).await?;
                // Every second one is accepted; the others lapse.
                if n.is_multiple_of(3)
                    && let Some(contact) = response.contact
                {
                    let operator_id = contact
                        .operator_id
                        .ok_or_else(|| format!("contact {} was not offered", contact.id))?;
                    fixture.accept_queue.push(Offer {
                        contact_id: contact.id,
                        operator_id,
                    });
                }
                Ok(())
            }
            Kind::Close | Kind::Accept | Kind::Other => accept(&mut contacts, fixture).await,
        },
    }
}

/// RegisterContact number `k` of the run with a unique `request_id`: even
/// ones for new people, odd ones for seeded leads.
async fn register(
    contacts: &mut ContactServiceClient<Channel>,
    fixture: &Fixture,
    source_id: i64,
    k: u64,
    run: u64,
) -> Result<pb::RegisterContactResponse, String> {
    let phone = if k.is_multiple_of(2) {
        NEW_PHONE_BASE + run * NEW_PHONES_PER_RUN + k
    } else {
        SEED_PHONE_BASE + 1 + (k / 2) % fixture.existing_leads
    };
    contacts
        .register_contact(pb::RegisterContactRequest {
            source: Some(Source::SourceId(source_id)),
            lead: Some(pb::LeadIdentity {
                phone: format!("+{phone}"),
                ..Default::default()
            }),
            request_id: format!("bench-{run}-{k}"),
        })
        .await
        .map(tonic::Response::into_inner)
        .map_err(describe)
}

/// Closes the next contact of the queue, which must have been ACTIVE (a
/// closed contact keeps its operator; a closed PENDING one has none), so
/// that the close freed a slot and dispatched.
async fn close(
    contacts: &mut ContactServiceClient<Channel>,
    queue: &CloseQueue,
) -> Result<(), String> {
    let Some(id) = queue.pop() else {
        return Err("ran out of contacts to close".into());
    };
    let closed = contacts
        .close_contact(pb::CloseContactRequest { id })
        .await
        .map_err(describe)?
        .into_inner();
    match closed.operator_id {
        Some(_) => Ok(()),
        None => Err(format!(
            "contact {id} was PENDING when closed: no slot freed, nothing dispatched"
        )),
    }
}

/// Accepts the oldest offer registered to be accepted, waiting a little for
/// one when the registrations are behind.
async fn accept(
    contacts: &mut ContactServiceClient<Channel>,
    fixture: &Fixture,
) -> Result<(), String> {
    let mut waited = 0;
    let offer = loop {
        match fixture.accept_queue.pop() {
            Some(offer) => break offer,
            None if waited < OFFER_WAIT_MS => {
                waited += 1;
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
            None => return Err("no offer to accept".into()),
        }
    };
    answered(
        contacts
            .accept_contact(pb::AcceptContactRequest {
                id: offer.contact_id,
                operator_id: offer.operator_id,
            })
            .await,
    )
}

fn answered<T>(outcome: Result<T, tonic::Status>) -> Result<(), String> {
    outcome.map(drop).map_err(describe)
}

fn describe(status: tonic::Status) -> String {
    format!("{:?}: {}", status.code(), status.message())
}
