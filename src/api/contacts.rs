use tonic::{Request, Response, Status};

use super::{timestamp, unknown_id_first, watch};
use crate::{
    Error, Result,
    domain::{
        Assignment, AssignmentReason, BotId, CandidateLoad, Contact, ContactEvent,
        ContactEventType, ContactFilter, ContactStatus, Email, EventCursor, EventFilter,
        ExternalId, Lead, LeadIdentity, LeadName, NewContact, OperatorSourceStats, PageRequest,
        Phone, Registration, RequestId, SourceKey, SourcePending, StatsReport,
    },
    proto::{self as pb, contact_service_server::ContactService},
    repository::Repository,
};

pub struct ContactApi {
    repository: Repository,
}

impl ContactApi {
    pub fn new(repository: Repository) -> Self {
        Self { repository }
    }
}

#[tonic::async_trait]
impl ContactService for ContactApi {
    async fn register_contact(
        &self,
        request: Request<pb::RegisterContactRequest>,
    ) -> Result<Response<pb::RegisterContactResponse>, Status> {
        let pb::RegisterContactRequest {
            source,
            lead,
            request_id,
        } = request.into_inner();
        let request_id = RequestId::parse("request_id", &request_id)?;
        // Each field is parsed once; a malformed source is reported before
        // an invalid lead.
        let (source, invalid) = match (source_key(source), lead_identity(lead)) {
            (Ok(source), Ok(lead)) => {
                let new = NewContact {
                    source,
                    lead,
                    request_id,
                };
                return Ok(Response::new(
                    self.repository.register_contact(new).await?.into(),
                ));
            }
            (Ok(source), Err(invalid)) => (Some(source), invalid),
            (Err(invalid), _) => (None, invalid),
        };
        // A retry gets the first call's result whatever the rest of it says;
        // an invalid request does not use up its request_id.
        if let Some(request_id) = request_id
            && let Some(earlier) = self.repository.find_registration(request_id).await?
        {
            return Ok(Response::new(earlier.into()));
        }
        // The source is resolved before the lead is validated.
        let error = match source {
            Some(key) => unknown_id_first(invalid, self.repository.get_source(key)).await,
            None => invalid,
        };
        Err(error.into())
    }

    async fn get_contact(
        &self,
        request: Request<pb::GetContactRequest>,
    ) -> Result<Response<pb::Contact>, Status> {
        let pb::GetContactRequest { id } = request.into_inner();
        Ok(Response::new(self.repository.get_contact(id).await?.into()))
    }

    async fn list_contacts(
        &self,
        request: Request<pb::ListContactsRequest>,
    ) -> Result<Response<pb::ListContactsResponse>, Status> {
        let pb::ListContactsRequest {
            page_size,
            page_token,
            operator_id,
            source_id,
            lead_id,
            status,
        } = request.into_inner();
        let page = PageRequest::parse(page_size, &page_token)?;
        let filter = ContactFilter {
            operator_id,
            source_id,
            lead_id,
            status: ContactFilter::parse_status("status", status)?,
        };
        let page = self.repository.list_contacts(page, filter).await?;
        Ok(Response::new(pb::ListContactsResponse {
            contacts: page.items.into_iter().map(Into::into).collect(),
            next_page_token: page.next_page_token,
        }))
    }

    async fn close_contact(
        &self,
        request: Request<pb::CloseContactRequest>,
    ) -> Result<Response<pb::Contact>, Status> {
        let pb::CloseContactRequest { id } = request.into_inner();
        Ok(Response::new(
            self.repository.close_contact(id).await?.into(),
        ))
    }

    async fn accept_contact(
        &self,
        request: Request<pb::AcceptContactRequest>,
    ) -> Result<Response<pb::Contact>, Status> {
        let pb::AcceptContactRequest { id, operator_id } = request.into_inner();
        Ok(Response::new(
            self.repository
                .accept_contact(id, operator_id)
                .await?
                .into(),
        ))
    }

    async fn transfer_contact(
        &self,
        request: Request<pb::TransferContactRequest>,
    ) -> Result<Response<pb::Contact>, Status> {
        let pb::TransferContactRequest { id, operator_id } = request.into_inner();
        Ok(Response::new(
            self.repository
                .transfer_contact(id, operator_id)
                .await?
                .into(),
        ))
    }

    async fn get_lead(
        &self,
        request: Request<pb::GetLeadRequest>,
    ) -> Result<Response<pb::Lead>, Status> {
        let pb::GetLeadRequest { id } = request.into_inner();
        Ok(Response::new(self.repository.get_lead(id).await?.into()))
    }

    async fn list_leads(
        &self,
        request: Request<pb::ListLeadsRequest>,
    ) -> Result<Response<pb::ListLeadsResponse>, Status> {
        let pb::ListLeadsRequest {
            page_size,
            page_token,
        } = request.into_inner();
        let page = PageRequest::parse(page_size, &page_token)?;
        let page = self.repository.list_leads(page).await?;
        Ok(Response::new(pb::ListLeadsResponse {
            leads: page.items.into_iter().map(Into::into).collect(),
            next_page_token: page.next_page_token,
        }))
    }

    async fn get_operator_stats(
        &self,
        request: Request<pb::GetOperatorStatsRequest>,
    ) -> Result<Response<pb::GetOperatorStatsResponse>, Status> {
        let pb::GetOperatorStatsRequest {} = request.into_inner();
        Ok(Response::new(
            self.repository.operator_stats().await?.into(),
        ))
    }

    async fn list_contact_events(
        &self,
        request: Request<pb::ListContactEventsRequest>,
    ) -> Result<Response<pb::ListContactEventsResponse>, Status> {
        let pb::ListContactEventsRequest {
            page_size,
            page_token,
            contact_id,
            operator_id,
            source_id,
        } = request.into_inner();
        let page = PageRequest::parse(page_size, &page_token)?;
        let filter = EventFilter {
            contact_id,
            operator_id,
            source_id,
        };
        let page = self.repository.list_contact_events(page, filter).await?;
        Ok(Response::new(pb::ListContactEventsResponse {
            events: page.items.into_iter().map(Into::into).collect(),
            next_page_token: page.next_page_token,
        }))
    }

    type WatchContactEventsStream = watch::EventStream;

    async fn watch_contact_events(
        &self,
        request: Request<pb::WatchContactEventsRequest>,
    ) -> Result<Response<Self::WatchContactEventsStream>, Status> {
        let pb::WatchContactEventsRequest {
            after_event_id,
            operator_id,
            source_id,
        } = request.into_inner();
        let after = after_event_id
            .map(|id| EventCursor::parse("after_event_id", id))
            .transpose()?;
        let filter = EventFilter {
            contact_id: None,
            operator_id,
            source_id,
        };
        let stream = watch::start(self.repository.clone(), after, filter).await?;
        Ok(Response::new(stream))
    }
}

fn lead_identity(lead: Option<pb::LeadIdentity>) -> Result<LeadIdentity> {
    let pb::LeadIdentity {
        external_id,
        phone,
        email,
        name,
    } = lead.unwrap_or_default();
    LeadIdentity::new(
        ExternalId::parse("lead.external_id", &external_id)?,
        Phone::parse("lead.phone", &phone)?,
        Email::parse("lead.email", &email)?,
        LeadName::parse("lead.name", &name)?,
        "lead",
    )
}

fn source_key(source: Option<pb::register_contact_request::Source>) -> Result<SourceKey> {
    match source {
        Some(pb::register_contact_request::Source::SourceId(id)) => Ok(SourceKey::Id(id)),
        Some(pb::register_contact_request::Source::BotId(bot_id)) => {
            Ok(SourceKey::BotId(BotId::parse("bot_id", &bot_id)?))
        }
        None => Err(Error::invalid("source", "set either source_id or bot_id")),
    }
}

impl From<Registration> for pb::RegisterContactResponse {
    fn from(registration: Registration) -> Self {
        let Registration {
            contact,
            lead,
            lead_created,
        } = registration;
        Self {
            contact: Some(contact.into()),
            lead: Some(lead.into()),
            lead_created,
        }
    }
}

impl From<ContactStatus> for pb::ContactStatus {
    fn from(status: ContactStatus) -> Self {
        match status {
            ContactStatus::Active => Self::Active,
            ContactStatus::Pending => Self::Pending,
            ContactStatus::Closed => Self::Closed,
        }
    }
}

impl From<Contact> for pb::Contact {
    fn from(contact: Contact) -> Self {
        let Contact {
            id,
            lead_id,
            source_id,
            operator_id,
            status,
            created_at,
            assigned_at,
            closed_at,
            request_id,
            accepted_at,
            accept_deadline,
            lapses,
        } = contact;
        Self {
            id,
            lead_id,
            source_id,
            operator_id,
            status: pb::ContactStatus::from(status).into(),
            created_at: Some(timestamp(created_at)),
            assigned_at: assigned_at.map(timestamp),
            closed_at: closed_at.map(timestamp),
            request_id: request_id.unwrap_or_default(),
            accepted_at: accepted_at.map(timestamp),
            accept_deadline: accept_deadline.map(timestamp),
            lapses,
        }
    }
}

impl From<Lead> for pb::Lead {
    fn from(lead: Lead) -> Self {
        let Lead {
            id,
            external_id,
            phone,
            email,
            name,
            created_at,
        } = lead;
        Self {
            id,
            external_id: external_id.unwrap_or_default(),
            phone: phone.unwrap_or_default(),
            email: email.unwrap_or_default(),
            name,
            created_at: Some(timestamp(created_at)),
        }
    }
}

impl From<StatsReport> for pb::GetOperatorStatsResponse {
    fn from(report: StatsReport) -> Self {
        let StatsReport { rows, pending } = report;
        Self {
            rows: rows
                .into_iter()
                .map(|row| {
                    let OperatorSourceStats {
                        operator_id,
                        source_id,
                        active,
                        closed,
                        total,
                        lapsed,
                    } = row;
                    pb::OperatorSourceStats {
                        operator_id,
                        source_id,
                        active,
                        closed,
                        total,
                        lapsed,
                    }
                })
                .collect(),
            pending: pending
                .into_iter()
                .map(|SourcePending { source_id, pending }| pb::SourcePending {
                    source_id,
                    pending,
                })
                .collect(),
        }
    }
}

impl From<ContactEvent> for pb::ContactEvent {
    fn from(event: ContactEvent) -> Self {
        let ContactEvent {
            id,
            kind,
            time,
            contact,
            previous_operator_id,
            assignment,
        } = event;
        Self {
            id,
            r#type: pb::ContactEventType::from(kind).into(),
            time: Some(timestamp(time)),
            contact: Some(contact.into()),
            previous_operator_id,
            assignment: assignment.map(Into::into),
        }
    }
}

impl From<ContactEventType> for pb::ContactEventType {
    fn from(kind: ContactEventType) -> Self {
        match kind {
            ContactEventType::Registered => Self::Registered,
            ContactEventType::Assigned => Self::Assigned,
            ContactEventType::Accepted => Self::Accepted,
            ContactEventType::Unassigned => Self::Unassigned,
            ContactEventType::Closed => Self::Closed,
        }
    }
}

impl From<Assignment> for pb::Assignment {
    fn from(assignment: Assignment) -> Self {
        let Assignment {
            reason,
            operator_id,
            candidates,
        } = assignment;
        let reason = match reason {
            AssignmentReason::WeightedDraw => pb::AssignmentReason::WeightedDraw,
            AssignmentReason::Sticky => pb::AssignmentReason::Sticky,
            AssignmentReason::Transfer => pb::AssignmentReason::Transfer,
        };
        Self {
            reason: reason.into(),
            operator_id,
            candidates: candidates
                .into_iter()
                .map(
                    |CandidateLoad {
                         operator_id,
                         weight,
                         active_load,
                         max_load,
                     }| pb::Candidate {
                        operator_id,
                        weight,
                        active_load,
                        max_load,
                    },
                )
                .collect(),
        }
    }
}
