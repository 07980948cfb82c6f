use std::time::{SystemTime, UNIX_EPOCH};

/// A point in time, in microseconds since the Unix epoch (UTC): the unit the
/// database stores on both backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timestamp(i64);

impl Timestamp {
    pub fn now() -> Self {
        let micros = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_micros());
        Self(i64::try_from(micros).unwrap_or(i64::MAX))
    }

    pub fn from_micros(micros: i64) -> Self {
        Self(micros)
    }

    pub fn as_micros(self) -> i64 {
        self.0
    }
}
