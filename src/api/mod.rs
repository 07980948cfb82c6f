//! Thin tonic handlers: convert the request into domain types, make one
//! repository call, convert the answer back. Conversions destructure every
//! proto field, so a field added to a message breaks the build until handled.
//! Logging each call (its span, method, code and latency) is not theirs: the
//! [`observe`] layer does it around all of them.

pub mod contacts;
pub mod observe;
pub mod operators;
pub mod sources;
mod watch;

use crate::{Error, Result, domain::Timestamp};

/// The error for a request that is invalid: NOT_FOUND instead when the id it
/// names does not exist ("any call that names an id that does not exist
/// answers NOT_FOUND"), which `lookup` finds out.
pub(crate) async fn unknown_id_first<T>(
    invalid: Error,
    lookup: impl Future<Output = Result<T>>,
) -> Error {
    match lookup.await {
        Err(missing @ Error::NotFound(_)) => missing,
        _ => invalid,
    }
}

pub(crate) fn timestamp(time: Timestamp) -> prost_types::Timestamp {
    let micros = time.as_micros();
    prost_types::Timestamp {
        seconds: micros.div_euclid(1_000_000),
        // rem_euclid keeps this in 0..1_000_000, so the product fits an i32.
        nanos: (micros.rem_euclid(1_000_000) * 1_000) as i32,
    }
}

pub(crate) fn duration(duration: std::time::Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(duration.as_secs()).unwrap_or(i64::MAX),
        // Below 1_000_000_000, so it fits an i32.
        nanos: duration.subsec_nanos() as i32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_keep_microseconds() {
        let converted = timestamp(Timestamp::from_micros(1_700_000_000_123_456));
        assert_eq!(converted.seconds, 1_700_000_000);
        assert_eq!(converted.nanos, 123_456_000);
        let before_epoch = timestamp(Timestamp::from_micros(-1));
        assert_eq!(
            (before_epoch.seconds, before_epoch.nanos),
            (-1, 999_999_000)
        );
    }
}
