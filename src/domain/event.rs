//! Contact events: what happened to a contact, and why it went where it went.

use super::{Contact, Timestamp};
use crate::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContactEventType {
    Registered,
    Assigned,
    Accepted,
    Unassigned,
    Closed,
}

impl ContactEventType {
    /// The number stored in the database; the same as the proto enum's.
    pub fn code(self) -> i32 {
        match self {
            Self::Registered => 1,
            Self::Assigned => 2,
            Self::Accepted => 3,
            Self::Unassigned => 4,
            Self::Closed => 5,
        }
    }

    pub fn from_code(code: i32) -> Option<Self> {
        Some(match code {
            1 => Self::Registered,
            2 => Self::Assigned,
            3 => Self::Accepted,
            4 => Self::Unassigned,
            5 => Self::Closed,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AssignmentReason {
    WeightedDraw,
    Sticky,
    Transfer,
}

impl AssignmentReason {
    /// The number stored in the database; the same as the proto enum's.
    pub fn code(self) -> i32 {
        match self {
            Self::WeightedDraw => 1,
            Self::Sticky => 2,
            Self::Transfer => 3,
        }
    }

    pub fn from_code(code: i32) -> Option<Self> {
        Some(match code {
            1 => Self::WeightedDraw,
            2 => Self::Sticky,
            3 => Self::Transfer,
            _ => return None,
        })
    }
}

/// An operator that could have been drawn, with what it had just before the draw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CandidateLoad {
    pub operator_id: i64,
    pub weight: i32,
    pub active_load: i32,
    pub max_load: i32,
}

impl CandidateLoad {
    const PACKED: usize = 20;

    /// Packs candidates for storage: 20 bytes each, little-endian.
    pub fn pack(candidates: &[Self]) -> Vec<u8> {
        let mut packed = Vec::with_capacity(candidates.len() * Self::PACKED);
        for candidate in candidates {
            packed.extend_from_slice(&candidate.operator_id.to_le_bytes());
            packed.extend_from_slice(&candidate.weight.to_le_bytes());
            packed.extend_from_slice(&candidate.active_load.to_le_bytes());
            packed.extend_from_slice(&candidate.max_load.to_le_bytes());
        }
        packed
    }

    /// The inverse of [`Self::pack`]; `None` for bytes it did not make.
    pub fn unpack(packed: &[u8]) -> Option<Vec<Self>> {
        if !packed.len().is_multiple_of(Self::PACKED) {
            return None;
        }
        let i32_at = |chunk: &[u8], at: usize| {
            i32::from_le_bytes(chunk[at..at + 4].try_into().expect("4 bytes"))
        };
        Some(
            packed
                .chunks_exact(Self::PACKED)
                .map(|chunk| Self {
                    operator_id: i64::from_le_bytes(chunk[..8].try_into().expect("8 bytes")),
                    weight: i32_at(chunk, 8),
                    active_load: i32_at(chunk, 12),
                    max_load: i32_at(chunk, 16),
                })
                .collect(),
        )
    }
}

/// The operator a contact was given, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    pub reason: AssignmentReason,
    pub operator_id: i64,
    /// For a weighted draw, every candidate; empty otherwise.
    pub candidates: Vec<CandidateLoad>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContactEvent {
    pub id: i64,
    pub kind: ContactEventType,
    pub time: Timestamp,
    /// The contact right after the event.
    pub contact: Contact,
    pub previous_operator_id: Option<i64>,
    pub assignment: Option<Assignment>,
}

/// Which events a list or a watch wants; the filters combine with AND.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EventFilter {
    pub contact_id: Option<i64>,
    /// The contact's operator, or the previous one.
    pub operator_id: Option<i64>,
    pub source_id: Option<i64>,
}

/// Where a watch starts: after this event id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventCursor(i64);

impl EventCursor {
    pub fn parse(field: &str, after_event_id: i64) -> Result<Self> {
        if after_event_id < 0 {
            return Err(Error::invalid(field, "must not be negative"));
        }
        Ok(Self(after_event_id))
    }

    pub fn after(self) -> i64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_pack_and_unpack() {
        let candidates = vec![
            CandidateLoad {
                operator_id: i64::MAX,
                weight: 1_000_000,
                active_load: 0,
                max_load: i32::MAX,
            },
            CandidateLoad {
                operator_id: 7,
                weight: 1,
                active_load: 3,
                max_load: 5,
            },
        ];
        let packed = CandidateLoad::pack(&candidates);
        assert_eq!(packed.len(), 40);
        assert_eq!(CandidateLoad::unpack(&packed), Some(candidates));
        assert_eq!(CandidateLoad::unpack(&packed[..39]), None);
        assert_eq!(CandidateLoad::unpack(&[]), Some(Vec::new()));
    }
}
