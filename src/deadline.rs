//! Client deadlines. A gRPC client may send `grpc-timeout`; a call whose
//! deadline has passed before its work starts is not carried out and
//! answers DEADLINE_EXCEEDED (API.md, "Limits and faults").
//!
//! [`DeadlineLayer`] reads the header, makes the deadline known to the
//! handler's task ([`current`]: the writer thread checks it before it runs
//! each unit of work, reads before they take a connection), and answers
//! DEADLINE_EXCEEDED itself when the deadline passes while the call waits.
//! tonic cancels a call at its `grpc-timeout` too, on both sides, with
//! CANCELLED; this layer's timer is set a little earlier (a tenth of the
//! timeout, at most 20 ms) so that its answer gets to the client first.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use http::{Request, Response};
use tokio::time::Instant;
use tower::{Layer, Service};

tokio::task_local! {
    static DEADLINE: Option<Instant>;
}

/// How much earlier than tonic's own timers this layer's fires, at most.
const MAX_AHEAD: Duration = Duration::from_millis(20);

/// The deadline of the call this task serves, if its client set one.
pub fn current() -> Option<Instant> {
    DEADLINE.try_with(|deadline| *deadline).ok().flatten()
}

/// Whether the deadline of the call this task serves has passed.
pub fn passed() -> bool {
    has_passed(current())
}

pub(crate) fn has_passed(deadline: Option<Instant>) -> bool {
    deadline.is_some_and(|deadline| Instant::now() >= deadline)
}

/// Runs `work` as a call with this deadline: for tests of what honours it.
pub async fn with_deadline<F: Future>(deadline: Option<Instant>, work: F) -> F::Output {
    DEADLINE.scope(deadline, work).await
}

/// See the module documentation.
#[derive(Debug, Clone, Copy, Default)]
pub struct DeadlineLayer;

impl<S> Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;

    fn layer(&self, inner: S) -> Deadline<S> {
        Deadline { inner }
    }
}

#[derive(Debug, Clone)]
pub struct Deadline<S> {
    inner: S,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Deadline<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Response<ResBody>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let Some(timeout) = grpc_timeout(request.headers()) else {
            return Box::pin(DEADLINE.scope(None, self.inner.call(request)));
        };
        let ahead = (timeout / 10).min(MAX_AHEAD);
        let deadline = Instant::now() + (timeout - ahead);
        if timeout.is_zero() {
            return Box::pin(std::future::ready(Ok(exceeded())));
        }
        let call = DEADLINE.scope(Some(deadline), self.inner.call(request));
        Box::pin(async move {
            tokio::select! {
                biased;
                answer = call => answer,
                () = tokio::time::sleep_until(deadline) => Ok(exceeded()),
            }
        })
    }
}

fn exceeded<B: Default>() -> Response<B> {
    tonic::Status::deadline_exceeded("the call's deadline passed before it was done").into_http()
}

/// The `grpc-timeout` header: up to 8 digits and a unit (H, M, S, m, u, n).
fn grpc_timeout(headers: &http::HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount.saturating_mul(3600)),
        "M" => Duration::from_secs(amount.saturating_mul(60)),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(value: &str) -> Option<Duration> {
        let mut headers = http::HeaderMap::new();
        headers.insert("grpc-timeout", value.parse().unwrap());
        grpc_timeout(&headers)
    }

    #[test]
    fn grpc_timeouts_parse() {
        assert_eq!(parse("1S"), Some(Duration::from_secs(1)));
        assert_eq!(parse("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse("3M"), Some(Duration::from_secs(180)));
        assert_eq!(parse("10u"), Some(Duration::from_micros(10)));
        assert_eq!(parse("99999999n"), Some(Duration::from_nanos(99_999_999)));
        assert_eq!(parse("123456789S"), None, "at most 8 digits");
        assert_eq!(parse("5x"), None);
        assert_eq!(parse("S"), None);
        assert_eq!(grpc_timeout(&http::HeaderMap::new()), None);
    }

    #[tokio::test]
    async fn the_deadline_is_known_to_the_task() {
        assert_eq!(current(), None);
        let soon = Instant::now() + Duration::from_secs(1);
        with_deadline(Some(soon), async {
            assert_eq!(current(), Some(soon));
            assert!(!passed());
        })
        .await;
        let past = Instant::now() - Duration::from_millis(1);
        with_deadline(Some(past), async { assert!(passed()) }).await;
    }
}
