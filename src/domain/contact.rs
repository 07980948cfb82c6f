use super::{LeadIdentity, SourceKey, Timestamp, text};
use crate::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContactStatus {
    Active,
    Pending,
    Closed,
}

impl ContactStatus {
    /// The number stored in the database; the same as the proto enum's.
    pub fn code(self) -> i32 {
        match self {
            Self::Active => 1,
            Self::Pending => 2,
            Self::Closed => 3,
        }
    }

    pub fn from_code(code: i32) -> Option<Self> {
        match code {
            1 => Some(Self::Active),
            2 => Some(Self::Pending),
            3 => Some(Self::Closed),
            _ => None,
        }
    }
}

/// An idempotency key: non-empty, at most 255 characters, kept verbatim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(String);

impl RequestId {
    /// `None` for an empty key: the call is not idempotent.
    pub fn parse(field: &str, raw: &str) -> Result<Option<Self>> {
        text::check_controls(field, raw, text::Kind::Plain)?;
        text::check_length(field, raw)?;
        Ok((!raw.is_empty()).then(|| Self(raw.to_owned())))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[derive(Debug, Clone)]
pub struct NewContact {
    pub source: SourceKey,
    pub lead: LeadIdentity,
    pub request_id: Option<RequestId>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contact {
    pub id: i64,
    pub lead_id: i64,
    pub source_id: i64,
    pub operator_id: Option<i64>,
    pub status: ContactStatus,
    pub created_at: Timestamp,
    pub assigned_at: Option<Timestamp>,
    pub closed_at: Option<Timestamp>,
    pub request_id: Option<String>,
    pub accepted_at: Option<Timestamp>,
    /// Set while an ACTIVE contact waits to be accepted.
    pub accept_deadline: Option<Timestamp>,
    /// How many times an operator let it lapse.
    pub lapses: i32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lead {
    pub id: i64,
    pub external_id: Option<String>,
    pub phone: Option<String>,
    pub email: Option<String>,
    pub name: String,
    pub created_at: Timestamp,
}

/// What RegisterContact answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    pub contact: Contact,
    pub lead: Lead,
    pub lead_created: bool,
}

/// ListContacts filters; `None` means "any".
#[derive(Debug, Clone, Default)]
pub struct ContactFilter {
    pub operator_id: Option<i64>,
    pub source_id: Option<i64>,
    pub lead_id: Option<i64>,
    pub status: Option<ContactStatus>,
}

impl ContactFilter {
    pub fn parse_status(field: &str, code: i32) -> Result<Option<ContactStatus>> {
        if code == 0 {
            return Ok(None);
        }
        ContactStatus::from_code(code)
            .map(Some)
            .ok_or_else(|| Error::invalid(field, format!("unknown contact status {code}")))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OperatorSourceStats {
    pub operator_id: i64,
    pub source_id: i64,
    pub active: i64,
    pub closed: i64,
    pub total: i64,
    pub lapsed: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourcePending {
    pub source_id: i64,
    pub pending: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatsReport {
    pub rows: Vec<OperatorSourceStats>,
    pub pending: Vec<SourcePending>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes_round_trip() {
        for status in [
            ContactStatus::Active,
            ContactStatus::Pending,
            ContactStatus::Closed,
        ] {
            assert_eq!(ContactStatus::from_code(status.code()), Some(status));
        }
        assert_eq!(ContactStatus::from_code(0), None);
    }

    #[test]
    fn status_filter_zero_means_any_and_unknown_is_rejected() {
        assert_eq!(ContactFilter::parse_status("status", 0).unwrap(), None);
        assert_eq!(
            ContactFilter::parse_status("status", 2).unwrap(),
            Some(ContactStatus::Pending)
        );
        assert!(ContactFilter::parse_status("status", 9).is_err());
    }

    #[test]
    fn request_id_empty_is_none_and_long_is_rejected() {
        assert_eq!(RequestId::parse("request_id", "").unwrap(), None);
        assert_eq!(
            RequestId::parse("request_id", "r-1")
                .unwrap()
                .unwrap()
                .as_str(),
            "r-1"
        );
        assert!(RequestId::parse("request_id", &"r".repeat(256)).is_err());
    }
}
