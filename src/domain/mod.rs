//! Validated domain types: each is built only by `parse`, so a value that
//! reaches the repository has already passed every rule of the contract.

mod contact;
mod event;
mod lead;
mod operator;
mod page;
mod source;
mod text;
mod time;

pub use contact::{
    Contact, ContactFilter, ContactStatus, Lead, NewContact, OperatorSourceStats, Registration,
    RequestId, SourcePending, StatsReport,
};
pub use event::{
    Assignment, AssignmentReason, CandidateLoad, ContactEvent, ContactEventType, EventCursor,
    EventFilter,
};
pub use lead::{Email, ExternalId, LeadIdentity, LeadName, Phone};
pub use operator::{MaxLoad, NewOperator, Operator, OperatorChanges, OperatorName};
pub use page::{Page, PageRequest, page_token_after};
pub use source::{
    BotId, NewSource, RoutingSetting, Source, SourceChanges, SourceKey, SourceName, Weight,
    WeightEntry, WeightTable,
};
pub use text::MAX_TEXT_CHARS;
pub use time::Timestamp;
