//! One tower layer around every gRPC call, so that no handler names itself.
//!
//! For each call the layer opens a span `rpc{method}`, where `method` is the
//! last segment of the request path (`/minicrm.v1.ContactService/RegisterContact`
//! gives `RegisterContact`, as the handlers used to write by hand). The handler
//! runs inside that span, and so does the body of the answer while it is
//! streamed, so every line logged on the call's behalf (including the writer
//! thread's, which captures `Span::current()`) carries the method.
//!
//! When the call ends, `record` is given one [`CallOutcome`]: it logs the one
//! line of the call, `handled code=… latency_us=…`, and counts and times the
//! call in the Prometheus metrics (`crate::metrics`). The call ends when its
//! gRPC status is known:
//! - an error of a unary call is answered "trailers-only": `grpc-status` is in
//!   the response headers, so the call ends when the handler returns;
//! - an OK answer (and any streamed answer) carries `grpc-status` in the
//!   trailers at the end of the body, so the call ends when the body yields
//!   them: the latency includes encoding the answer, and a stream's whole life;
//! - a call dropped before its status was sent (the client went away, or
//!   tonic's deadline expired) is `Cancelled`;
//! - an answer that ends without any `grpc-status`, or whose body fails, is
//!   `Unknown`.
//!
//! Health checks and reflection (services under `grpc.`) are logged at debug,
//! the service's own calls at info.

use std::{
    future::Future,
    mem,
    pin::Pin,
    task::{Context, Poll, ready},
    time::{Duration, Instant},
};

use http::{HeaderMap, Request, Response};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tonic::{Code, Status};
use tower::{Layer, Service};
use tracing::Span;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How one call ended: all that its log line (or a metrics recorder) needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallOutcome<'a> {
    /// The request path: `/minicrm.v1.ContactService/RegisterContact`.
    pub path: &'a str,
    /// The RPC's name: the last segment of the request path.
    pub method: &'a str,
    pub code: Code,
    /// From the request reaching the layer to the call's status being known.
    pub latency: Duration,
}

/// Reports a finished call, inside the call's span (which names the method):
/// the one place where calls are observed.
fn record(outcome: &CallOutcome<'_>, infrastructure: bool) {
    crate::metrics::call_finished(outcome);
    let code = outcome.code;
    let latency_us = u64::try_from(outcome.latency.as_micros()).unwrap_or(u64::MAX);
    if infrastructure {
        tracing::debug!(code = ?code, latency_us, "handled");
    } else {
        tracing::info!(code = ?code, latency_us, "handled");
    }
}

/// Wraps a service (tonic's router) in [`Observe`].
#[derive(Debug, Clone, Copy, Default)]
pub struct ObserveLayer;

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Observe<S> {
        Observe { inner }
    }
}

/// Logs one line per call; see the module documentation.
#[derive(Debug, Clone)]
pub struct Observe<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Observe<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Body,
    S::Error: Into<BoxError>,
{
    type Response = Response<ObservedBody<ResBody>>;
    type Error = BoxError;
    type Future = ObservedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let call = Call::start(request.uri().path());
        let inner = call.span.in_scope(|| self.inner.call(request));
        ObservedFuture {
            inner,
            in_flight: InFlight(Some(call)),
        }
    }
}

/// A call whose status is not known yet.
struct Call {
    path: Box<str>,
    /// Health checks and reflection: logged at debug.
    infrastructure: bool,
    span: Span,
    started: Instant,
}

/// The RPC's name: the last segment of the request path.
fn method_of(path: &str) -> &str {
    match path.rsplit_once('/') {
        Some((_, method)) if !method.is_empty() => method,
        _ => path,
    }
}

impl Call {
    fn start(path: &str) -> Self {
        let method = method_of(path);
        let infrastructure = path.starts_with("/grpc.");
        let span = if infrastructure {
            tracing::debug_span!("rpc", method)
        } else {
            tracing::info_span!("rpc", method)
        };
        Self {
            path: path.into(),
            infrastructure,
            span,
            started: Instant::now(),
        }
    }

    fn finish(self, code: Code) {
        let outcome = CallOutcome {
            path: &self.path,
            method: method_of(&self.path),
            code,
            latency: self.started.elapsed(),
        };
        self.span.in_scope(|| record(&outcome, self.infrastructure));
    }
}

/// The call until it is recorded, which happens exactly once: by `finish`, or
/// as `Cancelled` when dropped first.
#[derive(Default)]
struct InFlight(Option<Call>);

impl InFlight {
    fn finish(&mut self, code: Code) {
        if let Some(call) = self.0.take() {
            call.finish(code);
        }
    }

    fn span(&self) -> Option<&Span> {
        self.0.as_ref().map(|call| &call.span)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.finish(Code::Cancelled);
    }
}

fn grpc_status(headers: &HeaderMap) -> Option<Code> {
    headers
        .get(Status::GRPC_STATUS)
        .map(|value| Code::from_bytes(value.as_bytes()))
}

pin_project! {
    /// The inner service's future, polled inside the call's span.
    pub struct ObservedFuture<F> {
        #[pin]
        inner: F,
        in_flight: InFlight,
    }
}

impl<F, B: Body, E> Future for ObservedFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<ObservedBody<B>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = {
            let _entered = this.in_flight.span().map(Span::enter);
            ready!(this.inner.poll(cx))
        };
        match result {
            Ok(response) => {
                let mut in_flight = mem::take(this.in_flight);
                // Trailers-only: the status is in the headers, the body is
                // empty. An empty body without a status will not tell more.
                let code = grpc_status(response.headers())
                    .or_else(|| response.body().is_end_stream().then_some(Code::Unknown));
                if let Some(code) = code {
                    in_flight.finish(code);
                }
                Poll::Ready(Ok(response.map(|inner| ObservedBody { inner, in_flight })))
            }
            Err(error) => {
                let error = error.into();
                let code = error
                    .downcast_ref::<Status>()
                    .map_or(Code::Unknown, Status::code);
                this.in_flight.finish(code);
                Poll::Ready(Err(error))
            }
        }
    }
}

pin_project! {
    /// The answer's body, polled inside the call's span; the call ends with
    /// the `grpc-status` of its trailers.
    pub struct ObservedBody<B> {
        #[pin]
        inner: B,
        in_flight: InFlight,
    }
}

impl<B: Body> Body for ObservedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        let frame = {
            let _entered = this.in_flight.span().map(Span::enter);
            ready!(this.inner.as_mut().poll_frame(cx))
        };
        match &frame {
            Some(Ok(frame)) => {
                if let Some(trailers) = frame.trailers_ref() {
                    this.in_flight
                        .finish(grpc_status(trailers).unwrap_or(Code::Unknown));
                } else if this.inner.is_end_stream() {
                    // The last data frame, and no trailers will follow.
                    this.in_flight.finish(Code::Unknown);
                }
            }
            Some(Err(_)) | None => this.in_flight.finish(Code::Unknown),
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::{
        collections::VecDeque,
        convert::Infallible,
        future::poll_fn,
        sync::{Arc, Mutex},
    };

    use prost::Message;
    use tonic::codegen::Bytes;
    use tracing::subscriber::DefaultGuard;

    use super::*;

    /// Everything logged on this thread while the guard lives, as the
    /// service's log would show it.
    #[derive(Clone, Default)]
    struct Logs(Arc<Mutex<Vec<u8>>>);

    impl Logs {
        fn capture() -> (Self, DefaultGuard) {
            let logs = Self::default();
            let writer = logs.clone();
            let subscriber = tracing_subscriber::fmt()
                .with_max_level(tracing::Level::DEBUG)
                .with_ansi(false)
                .without_time()
                .with_writer(move || writer.clone())
                .finish();
            (logs, tracing::subscriber::set_default(subscriber))
        }

        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }

        /// The lines logged at the end of calls.
        fn handled(&self) -> Vec<String> {
            self.text()
                .lines()
                .filter(|line| line.contains(" handled "))
                .map(str::to_owned)
                .collect()
        }

        /// Exactly one call has ended, at `level`, with `method` and `code`.
        fn assert_one_call(&self, level: &str, method: &str, code: Code) {
            let handled = self.handled();
            assert_eq!(handled.len(), 1, "one line per call: {}", self.text());
            let line = &handled[0];
            assert!(line.trim_start().starts_with(level), "{line}");
            assert!(
                line.contains(&format!("rpc{{method=\"{method}\"}}")),
                "{line}"
            );
            assert!(line.contains(&format!("code={code:?} ")), "{line}");
            assert!(line.contains("latency_us="), "{line}");
        }

        /// Every line containing `needle` is logged inside the span of `method`.
        fn assert_in_span(&self, needle: &str, method: &str) {
            let text = self.text();
            let lines: Vec<_> = text.lines().filter(|line| line.contains(needle)).collect();
            assert!(!lines.is_empty(), "{needle} was logged: {text}");
            for line in lines {
                assert!(
                    line.contains(&format!("rpc{{method=\"{method}\"}}")),
                    "{line}"
                );
            }
        }
    }

    impl std::io::Write for Logs {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A body that yields its frames one by one, logging each data frame.
    #[derive(Default)]
    struct TestBody(VecDeque<Frame<Bytes>>);

    impl TestBody {
        fn data(chunks: usize) -> Self {
            Self(
                (0..chunks)
                    .map(|_| Frame::data(Bytes::from_static(b"chunk")))
                    .collect(),
            )
        }

        fn then_status(mut self, code: Code) -> Self {
            let mut trailers = HeaderMap::new();
            trailers.insert(Status::GRPC_STATUS, (code as i32).into());
            self.0.push_back(Frame::trailers(trailers));
            self
        }
    }

    impl Body for TestBody {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            let frame = self.0.pop_front();
            if frame.as_ref().is_some_and(Frame::is_data) {
                tracing::info!("chunk streamed");
            }
            Poll::Ready(frame.map(Ok))
        }

        fn is_end_stream(&self) -> bool {
            self.0.is_empty()
        }
    }

    /// Stands for tonic's router: answers by the method in the path, after
    /// logging from inside the handler and yielding once.
    #[derive(Clone)]
    struct Handlers;

    impl Service<Request<TestBody>> for Handlers {
        type Response = Response<TestBody>;
        type Error = Infallible;
        type Future = Pin<Box<dyn Future<Output = Result<Response<TestBody>, Infallible>> + Send>>;

        fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, request: Request<TestBody>) -> Self::Future {
            let path = request.uri().path().to_owned();
            Box::pin(async move {
                tracing::info!("in the handler");
                tokio::task::yield_now().await;
                tracing::info!("in the handler");
                Ok(match path.rsplit('/').next() {
                    Some("GetContact") => Response::new(TestBody::data(1).then_status(Code::Ok)),
                    Some("WatchContactEvents") => {
                        Response::new(TestBody::data(3).then_status(Code::FailedPrecondition))
                    }
                    Some("NoStatus") => Response::new(TestBody::data(1)),
                    Some("RegisterContact") => Status::not_found("no such source").into_http(),
                    _ => Status::unimplemented("").into_http(),
                })
            })
        }
    }

    fn request_with(path: &str, body: TestBody) -> Request<TestBody> {
        Request::post(path)
            .header("content-type", "application/grpc")
            .body(body)
            .unwrap()
    }

    fn request(path: &str) -> Request<TestBody> {
        request_with(path, TestBody::default())
    }

    async fn next_frame<B>(body: &mut ObservedBody<B>) -> Option<Frame<B::Data>>
    where
        B: Body + Unpin,
        B::Error: std::fmt::Debug,
    {
        poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx))
            .await
            .map(|frame| frame.expect("the body does not fail"))
    }

    /// Reads the body to its end, as hyper does; returns its frames.
    async fn drain<B>(body: &mut ObservedBody<B>) -> Vec<Frame<B::Data>>
    where
        B: Body + Unpin,
        B::Error: std::fmt::Debug,
    {
        let mut frames = Vec::new();
        while let Some(frame) = next_frame(body).await {
            frames.push(frame);
        }
        frames
    }

    /// Calls `service` as tonic does: once it is ready.
    async fn call<S, B>(service: &mut S, request: Request<B>) -> S::Response
    where
        S: Service<Request<B>, Error = BoxError>,
    {
        poll_fn(|cx| service.poll_ready(cx)).await.unwrap();
        service.call(request).await.unwrap()
    }

    #[tokio::test]
    async fn ok_unary_call_is_logged_once_when_its_trailers_are_read() {
        let (logs, _guard) = Logs::capture();
        let mut service = ObserveLayer.layer(Handlers);
        let response = call(
            &mut service,
            request("/minicrm.v1.ContactService/GetContact"),
        )
        .await;
        assert!(logs.handled().is_empty(), "the status is not known yet");

        let mut body = response.into_body();
        let frames = drain(&mut body).await;
        assert_eq!(frames.len(), 2, "the data and the trailers pass through");
        assert!(frames[1].is_trailers());
        logs.assert_one_call("INFO", "GetContact", Code::Ok);
        logs.assert_in_span("in the handler", "GetContact");
        drop(body);
        assert_eq!(logs.handled().len(), 1, "dropping adds nothing");
    }

    #[tokio::test]
    async fn error_answered_trailers_only_is_logged_when_the_handler_returns() {
        let (logs, _guard) = Logs::capture();
        let mut service = ObserveLayer.layer(Handlers);
        let response = call(
            &mut service,
            request("/minicrm.v1.ContactService/RegisterContact"),
        )
        .await;
        logs.assert_one_call("INFO", "RegisterContact", Code::NotFound);
        logs.assert_in_span("in the handler", "RegisterContact");

        let mut body = response.into_body();
        assert!(drain(&mut body).await.is_empty());
        drop(body);
        assert_eq!(
            logs.handled().len(),
            1,
            "reading the empty body adds nothing"
        );
    }

    #[tokio::test]
    async fn streamed_call_is_logged_when_the_stream_ends() {
        let (logs, _guard) = Logs::capture();
        let mut service = ObserveLayer.layer(Handlers);
        let response = call(
            &mut service,
            request("/minicrm.v1.ContactService/WatchContactEvents"),
        )
        .await;
        let mut body = response.into_body();
        for _ in 0..3 {
            assert!(next_frame(&mut body).await.unwrap().is_data());
            assert!(logs.handled().is_empty(), "the stream goes on");
        }
        assert!(next_frame(&mut body).await.unwrap().is_trailers());
        logs.assert_one_call("INFO", "WatchContactEvents", Code::FailedPrecondition);
        logs.assert_in_span("chunk streamed", "WatchContactEvents");
        assert!(next_frame(&mut body).await.is_none());
        assert_eq!(logs.handled().len(), 1);
    }

    #[tokio::test]
    async fn call_dropped_before_its_status_is_cancelled() {
        let (logs, _guard) = Logs::capture();
        let mut service = ObserveLayer.layer(Handlers);

        // The client goes away while the handler runs.
        let mut pending = Box::pin(service.call(request("/minicrm.v1.ContactService/GetContact")));
        let polled = poll_fn(|cx| Poll::Ready(pending.as_mut().poll(cx).is_pending())).await;
        assert!(polled, "the handler yields once");
        drop(pending);
        logs.assert_one_call("INFO", "GetContact", Code::Cancelled);

        // The client goes away while the answer is streamed.
        let (logs, _guard) = Logs::capture();
        let response = call(
            &mut service,
            request("/minicrm.v1.ContactService/WatchContactEvents"),
        )
        .await;
        let mut body = response.into_body();
        assert!(next_frame(&mut body).await.unwrap().is_data());
        drop(body);
        logs.assert_one_call("INFO", "WatchContactEvents", Code::Cancelled);
    }

    #[tokio::test]
    async fn answer_without_status_is_unknown() {
        let (logs, _guard) = Logs::capture();
        let mut service = ObserveLayer.layer(Handlers);
        let response = call(&mut service, request("/minicrm.v1.ContactService/NoStatus")).await;
        let mut body = response.into_body();
        // Like hyper, stop at the frame after which the body says it has ended.
        assert!(next_frame(&mut body).await.unwrap().is_data());
        assert!(body.is_end_stream());
        logs.assert_one_call("INFO", "NoStatus", Code::Unknown);
    }

    /// tonic's own generated server, here the health service: an OK answer
    /// has its status in the body's trailers, an error in the headers; both
    /// are logged at debug, being health checks.
    #[tokio::test]
    async fn health_checks_through_tonic_are_logged_at_debug() {
        let (_reporter, health) = tonic_health::server::health_reporter();
        let mut service = ObserveLayer.layer(health);
        let check = |service_name: &str| {
            let message = tonic_health::pb::HealthCheckRequest {
                service: service_name.into(),
            }
            .encode_to_vec();
            let mut framed = vec![0];
            framed.extend_from_slice(&u32::try_from(message.len()).unwrap().to_be_bytes());
            framed.extend_from_slice(&message);
            let body = TestBody([Frame::data(Bytes::from(framed))].into());
            request_with("/grpc.health.v1.Health/Check", body)
        };

        let (logs, _guard) = Logs::capture();
        let response = call(&mut service, check("")).await;
        assert!(logs.handled().is_empty(), "the status is not known yet");
        let frames = drain(&mut response.into_body()).await;
        assert!(frames.last().is_some_and(Frame::is_trailers));
        logs.assert_one_call("DEBUG", "Check", Code::Ok);

        let (logs, _guard) = Logs::capture();
        let response = call(&mut service, check("minicrm.v1.Nothing")).await;
        logs.assert_one_call("DEBUG", "Check", Code::NotFound);
        assert!(drain(&mut response.into_body()).await.is_empty());
        assert_eq!(logs.handled().len(), 1);
    }
}
