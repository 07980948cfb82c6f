use std::{collections::HashSet, time::Duration};

use super::{
    Timestamp,
    text::{self, Kind},
};
use crate::{Error, Result};

/// A bot's identifier: trimmed, never blank, at most 255 characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BotId(String);

impl BotId {
    pub fn parse(field: &str, raw: &str) -> Result<Self> {
        text::required(field, raw, Kind::Plain).map(Self)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A source's display name: trimmed, may be empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceName(String);

impl SourceName {
    pub fn parse(field: &str, raw: &str) -> Result<Self> {
        text::bounded_trimmed(field, raw, Kind::Name).map(|name| Self(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// How a request names a source.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SourceKey {
    Id(i64),
    BotId(BotId),
}

#[derive(Debug, Clone)]
pub struct NewSource {
    pub bot_id: BotId,
    pub name: SourceName,
    pub accept_timeout: Option<Duration>,
    pub sticky_window: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub id: i64,
    pub bot_id: String,
    pub name: String,
    pub created_at: Timestamp,
    /// Absent: contacts need no acceptance.
    pub accept_timeout: Option<Duration>,
    /// Absent: no sticky routing.
    pub sticky_window: Option<Duration>,
}

/// The routing settings of a source (API.md "Acceptance, lapses and
/// transfers", "Sticky routing") and their ranges.
pub struct RoutingSetting;

impl RoutingSetting {
    pub const ACCEPT_TIMEOUT_MAX: Duration = Duration::from_secs(24 * 3600);
    pub const STICKY_WINDOW_MAX: Duration = Duration::from_secs(366 * 24 * 3600);
    const MIN: Duration = Duration::from_secs(1);

    /// A duration given as protobuf's seconds and nanos: `None` for zero
    /// (the feature off), else it must lie in 1 s..=`max`.
    pub fn parse(field: &str, seconds: i64, nanos: i32, max: Duration) -> Result<Option<Duration>> {
        let range = || {
            Error::invalid(
                field,
                format!("must lie in 1s..={} when present", describe(max)),
            )
        };
        if !(-999_999_999..=999_999_999).contains(&nanos)
            || (seconds > 0 && nanos < 0)
            || (seconds < 0 && nanos > 0)
        {
            return Err(Error::invalid(field, "is not a valid duration"));
        }
        if seconds == 0 && nanos == 0 {
            return Ok(None);
        }
        if seconds < 0 || nanos < 0 {
            return Err(range());
        }
        let duration = Duration::new(seconds.unsigned_abs(), nanos.unsigned_abs());
        if duration < Self::MIN || duration > max {
            return Err(range());
        }
        Ok(Some(duration))
    }

    /// Like [`Self::parse`] for a setting that must be on (CreateSource).
    pub fn parse_present(field: &str, seconds: i64, nanos: i32, max: Duration) -> Result<Duration> {
        Self::parse(field, seconds, nanos, max)?.ok_or_else(|| {
            Error::invalid(
                field,
                format!("must lie in 1s..={} when present", describe(max)),
            )
        })
    }
}

fn describe(max: Duration) -> String {
    let hours = max.as_secs() / 3600;
    if hours >= 48 {
        format!("{} days", hours / 24)
    } else {
        format!("{hours}h")
    }
}

/// An UpdateSource: the fields present; at least one is.
#[derive(Debug, Clone)]
pub struct SourceChanges {
    pub name: Option<SourceName>,
    /// `Some(None)`: turn acceptance off.
    pub accept_timeout: Option<Option<Duration>>,
    /// `Some(None)`: turn sticky routing off.
    pub sticky_window: Option<Option<Duration>>,
}

impl SourceChanges {
    pub fn new(
        name: Option<SourceName>,
        accept_timeout: Option<Option<Duration>>,
        sticky_window: Option<Option<Duration>>,
    ) -> Result<Self> {
        if name.is_none() && accept_timeout.is_none() && sticky_window.is_none() {
            return Err(Error::invalid(
                "name, accept_timeout, sticky_window",
                "at least one field to change must be present",
            ));
        }
        Ok(Self {
            name,
            accept_timeout,
            sticky_window,
        })
    }
}

/// An operator's relative share of a source's flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Weight(i32);

impl Weight {
    pub const MAX: i32 = 1_000_000;

    pub fn parse(field: &str, raw: i32) -> Result<Self> {
        if !(1..=Self::MAX).contains(&raw) {
            return Err(Error::invalid(
                field,
                format!("must be between 1 and {}, got {raw}", Self::MAX),
            ));
        }
        Ok(Self(raw))
    }

    pub fn get(self) -> i32 {
        self.0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WeightEntry {
    pub operator_id: i64,
    pub weight: Weight,
}

/// A source's complete weight table: each operator at most once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeightTable(Vec<WeightEntry>);

impl WeightTable {
    /// `field` names the repeated field, for messages like `operators[2].weight`.
    pub fn parse(field: &str, entries: impl IntoIterator<Item = (i64, i32)>) -> Result<Self> {
        let mut seen = HashSet::new();
        let mut table = Vec::new();
        for (index, (operator_id, weight)) in entries.into_iter().enumerate() {
            if !seen.insert(operator_id) {
                return Err(Error::invalid(
                    format!("{field}[{index}].operator_id"),
                    format!("operator {operator_id} is listed more than once"),
                ));
            }
            let weight = Weight::parse(&format!("{field}[{index}].weight"), weight)?;
            table.push(WeightEntry {
                operator_id,
                weight,
            });
        }
        table.sort_by_key(|entry| entry.operator_id);
        Ok(Self(table))
    }

    pub fn entries(&self) -> &[WeightEntry] {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weight_range_is_inclusive() {
        assert!(Weight::parse("w", 0).is_err());
        assert!(Weight::parse("w", -5).is_err());
        assert_eq!(Weight::parse("w", 1).unwrap().get(), 1);
        assert_eq!(Weight::parse("w", 1_000_000).unwrap().get(), 1_000_000);
        assert!(Weight::parse("w", 1_000_001).is_err());
    }

    #[test]
    fn weight_table_rejects_duplicates_and_names_the_entry() {
        let err = WeightTable::parse("operators", [(1, 5), (2, 5), (1, 7)]).unwrap_err();
        assert!(
            err.to_string().starts_with("operators[2].operator_id:"),
            "{err}"
        );
        let err = WeightTable::parse("operators", [(1, 5), (2, 0)]).unwrap_err();
        assert!(err.to_string().starts_with("operators[1].weight:"), "{err}");
    }

    #[test]
    fn weight_table_is_sorted_by_operator() {
        let table = WeightTable::parse("operators", [(9, 1), (3, 2)]).unwrap();
        let ids: Vec<_> = table.entries().iter().map(|e| e.operator_id).collect();
        assert_eq!(ids, [3, 9]);
        assert!(
            WeightTable::parse("operators", [])
                .unwrap()
                .entries()
                .is_empty()
        );
    }

    #[test]
    fn routing_settings_lie_in_their_ranges() {
        let max = RoutingSetting::ACCEPT_TIMEOUT_MAX;
        let parse = |seconds, nanos| RoutingSetting::parse("accept_timeout", seconds, nanos, max);
        assert_eq!(parse(0, 0).unwrap(), None);
        assert_eq!(parse(1, 0).unwrap(), Some(Duration::from_secs(1)));
        assert_eq!(parse(86_400, 0).unwrap(), Some(max));
        assert_eq!(
            parse(1, 500_000_000).unwrap(),
            Some(Duration::from_millis(1500))
        );
        for (seconds, nanos) in [(0, 999_999_999), (86_400, 1), (-1, 0), (0, -5), (1, -1)] {
            let error = parse(seconds, nanos).unwrap_err();
            assert!(error.to_string().starts_with("accept_timeout:"), "{error}");
        }
        assert!(RoutingSetting::parse_present("sticky_window", 0, 0, max).is_err());
        let year = RoutingSetting::STICKY_WINDOW_MAX;
        assert!(RoutingSetting::parse("sticky_window", 366 * 86_400, 0, year).is_ok());
        assert!(RoutingSetting::parse("sticky_window", 366 * 86_400 + 1, 0, year).is_err());
    }

    #[test]
    fn bot_id_is_trimmed_and_required() {
        assert_eq!(BotId::parse("bot_id", " bot-1 ").unwrap().as_str(), "bot-1");
        assert!(BotId::parse("bot_id", "   ").is_err());
        assert_eq!(SourceName::parse("name", "  ").unwrap().as_str(), "");
    }
}
