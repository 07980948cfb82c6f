//! Thin tonic handlers: convert the request into domain types, make one
//! repository call, convert the answer back. Conversions destructure every
//! proto field, so a field added to a message breaks the build until handled.

pub mod contacts;
pub mod observe;
pub mod operators;
pub mod sources;

use std::time::Instant;

use tonic::{Code, Response, Status};
use tracing::Instrument;

use crate::{Error, Result, domain::Timestamp};

/// Runs one call inside its own span and logs one line for it: method, status
/// code and latency.
pub(crate) async fn observe<T>(
    method: &'static str,
    call: impl Future<Output = Result<T>>,
) -> Result<Response<T>, Status> {
    let span = tracing::info_span!("rpc", method);
    async move {
        let started = Instant::now();
        let outcome = call.await.map(Response::new).map_err(Status::from);
        let code = outcome.as_ref().err().map_or(Code::Ok, Status::code);
        let latency_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        tracing::info!(code = ?code, latency_us, "handled");
        outcome
    }
    .instrument(span)
    .await
}

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
