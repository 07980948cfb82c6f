//! Graceful shutdown (API.md, "Limits and faults"): on SIGTERM health turns
//! NOT_SERVING, new calls are refused, in-flight unary calls finish, streams
//! end with UNAVAILABLE (so that clients reconnect to another replica), and
//! the process exits within `--shutdown-grace` whatever clients hold open.
//!
//! tonic's graceful shutdown waits for every open HTTP/2 stream to end, so a
//! client holding a stream open (a `grpc.health.v1.Health/Watch`, say) would
//! keep the process alive forever. [`DrainLayer`] ends them: once [`Drain`]
//! is started, a response body that waits for its next message ends instead,
//! with an UNAVAILABLE status in its trailers. A unary answer never waits
//! (its one message is ready with it), so it is never cut; a call that comes
//! in after the start is answered UNAVAILABLE at once, health checks aside.
//!
//! The layer also counts the calls in flight, so that tonic's own shutdown
//! (GOAWAY, then closing connections) starts only once they are done
//! ([`Drain::idle`]): until then a client's new call on an open connection
//! gets an explicit UNAVAILABLE, which every client retries elsewhere, rather
//! than a connection closing under it.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    task::{Context, Poll, ready},
};

use http::{HeaderMap, Request, Response};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::sync::Notify;
use tower::{Layer, Service};

/// Starts the drain; cheap to clone. Plain atomics on the path of every
/// call; the notification is only for the shutdown's waiters.
#[derive(Debug, Clone, Default)]
pub struct Drain(Arc<Shared>);

#[derive(Debug, Default)]
struct Shared {
    started: AtomicBool,
    /// Calls whose answer is not sent yet.
    in_flight: AtomicUsize,
    changed: Notify,
}

impl Drain {
    /// Ends every waiting stream and refuses new calls from now on.
    pub fn start(&self) {
        self.0.started.store(true, Ordering::SeqCst);
        self.0.changed.notify_waiters();
    }

    pub fn is_started(&self) -> bool {
        self.0.started.load(Ordering::SeqCst)
    }

    /// Resolves once [`Drain::start`] has been called.
    pub fn started(&self) -> impl Future<Output = ()> + Send + 'static {
        self.until(|shared| shared.started.load(Ordering::SeqCst))
    }

    /// Resolves once the drain has started and no call is in flight.
    pub fn idle(&self) -> impl Future<Output = ()> + Send + 'static {
        self.until(|shared| {
            shared.started.load(Ordering::SeqCst) && shared.in_flight.load(Ordering::SeqCst) == 0
        })
    }

    fn until(
        &self,
        done: impl Fn(&Shared) -> bool + Send + 'static,
    ) -> impl Future<Output = ()> + Send + 'static {
        let shared = Arc::clone(&self.0);
        async move {
            loop {
                let changed = shared.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                if done(&shared) {
                    return;
                }
                changed.await;
            }
        }
    }

    fn enter(&self) -> InFlight {
        self.0.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(self.clone())
    }

    pub fn layer(&self) -> DrainLayer {
        DrainLayer {
            drain: self.clone(),
        }
    }
}

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct DrainLayer {
    drain: Drain,
}

impl<S> Layer<S> for DrainLayer {
    type Service = Drained<S>;

    fn layer(&self, inner: S) -> Drained<S> {
        Drained {
            inner,
            drain: self.drain.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Drained<S> {
    inner: S,
    drain: Drain,
}

/// A call in flight, until its answer is sent (or dropped).
#[derive(Debug)]
struct InFlight(Drain);

impl Drop for InFlight {
    fn drop(&mut self) {
        let shared = &(self.0).0;
        if shared.in_flight.fetch_sub(1, Ordering::SeqCst) == 1
            && shared.started.load(Ordering::SeqCst)
        {
            shared.changed.notify_waiters();
        }
    }
}

fn shutting_down() -> tonic::Status {
    tonic::Status::unavailable("the server is shutting down; try another replica")
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Drained<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Body + Default + Send + 'static,
{
    type Response = Response<DrainBody<ResBody>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let drain = self.drain.clone();
        // Health answers NOT_SERVING meanwhile, which is worth hearing.
        if drain.is_started() && !request.uri().path().starts_with("/grpc.health.v1.Health/") {
            let refused = shutting_down().into_http::<ResBody>();
            return Box::pin(std::future::ready(Ok(
                refused.map(|body| DrainBody::new(body, drain, None))
            )));
        }
        let in_flight = drain.enter();
        let call = self.inner.call(request);
        Box::pin(async move {
            let response = call.await?;
            Ok(response.map(|body| DrainBody::new(body, drain, Some(in_flight))))
        })
    }
}

pin_project! {
    /// A response body that ends, with UNAVAILABLE, when it waits for its
    /// next frame after the drain started.
    pub struct DrainBody<B> {
        #[pin]
        inner: B,
        drain: Drain,
        // Made the first time the body waits: unary answers never need it.
        started: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
        ended: bool,
        in_flight: Option<InFlight>,
    }
}

impl<B> DrainBody<B> {
    fn new(inner: B, drain: Drain, in_flight: Option<InFlight>) -> Self {
        Self {
            inner,
            drain,
            started: None,
            ended: false,
            in_flight,
        }
    }
}

impl<B: Body> Body for DrainBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.project();
        if *this.ended {
            return Poll::Ready(None);
        }
        if let Poll::Ready(frame) = this.inner.poll_frame(cx) {
            if frame.is_none() {
                this.in_flight.take();
            }
            return Poll::Ready(frame);
        }
        let started = this
            .started
            .get_or_insert_with(|| Box::pin(this.drain.started()));
        ready!(started.as_mut().poll(cx));
        *this.ended = true;
        this.in_flight.take();
        let mut trailers = HeaderMap::new();
        // A status always makes a header map; nothing to do if not.
        let _ = shutting_down().add_header(&mut trailers);
        Poll::Ready(Some(Ok(Frame::trailers(trailers))))
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        if self.ended {
            SizeHint::with_exact(0)
        } else {
            self.inner.size_hint()
        }
    }
}
