//! Defences of the REST and client gRPC listeners against connections that hold a socket and
//! never ask for anything (issue 18: 20,000 connections that never finished their headers held
//! every file descriptor, and `/healthz` stopped answering).
//!
//! * **A connection limit per listener** ([`Limits::max_connections`]): the listener accepts
//!   only while it holds fewer connections; more wait in the kernel's backlog.
//! * **A header timeout** ([`Limits::header_timeout`]): REST closes a connection that has not
//!   sent a complete request within the timeout of being opened or of its last request ending
//!   (a request counts from the moment it reaches the router, so trickling a header one byte at
//!   a time does not help). gRPC is HTTP/2 under tonic, where streams legitimately stay open for
//!   hours: there the client must send its first bytes (the HTTP/2 preface, or its TLS hello)
//!   within the timeout, and HTTP/2 keep-alive pings close connections whose peer has gone.
//!
//! The timeout is enforced in the socket wrapper ([`GuardedIo`]): a read that would wait past
//! the deadline fails with `TimedOut`, and the server drops the connection.
//!
//! The same wrapper gives the answers hyper makes by itself a body: a request line or headers
//! over hyper's limits (a URI over 64 KiB: 414; headers over ~400 KiB or more than 100 of them:
//! 431) are refused by hyper before any route sees them, with an empty body. The wrapper keeps
//! the first bytes of each request it reads and replaces such an empty refusal with the JSON
//! error of the route's shape ([`muster_api::rest::refused_request`]).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::Request;
use axum::response::Response;
use axum::serve::{IncomingStream, Listener};
use axum::Router;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

/// Bytes of the HTTP/2 client preface: a gRPC connection that has sent this many is past its
/// header deadline.
const H2_PREFACE_BYTES: u64 = 24;

/// How much of each request's start a REST connection keeps: enough for the method and the
/// path's first segments, which pick the shape of an error hyper answers by itself.
const HEAD_KEPT: usize = 512;

/// The limits of one listener.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub header_timeout: Duration,
}

/// What a connection is doing, shared by its socket wrapper and its request counter.
#[derive(Debug)]
struct Activity {
    opened: Instant,
    /// Requests being handled (REST only).
    in_flight: AtomicUsize,
    /// Milliseconds after `opened` since which the connection waits for a request.
    idle_since_ms: AtomicU64,
    read_bytes: AtomicU64,
}

impl Activity {
    fn new() -> Arc<Activity> {
        Arc::new(Activity {
            opened: Instant::now(),
            in_flight: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
            read_bytes: AtomicU64::new(0),
        })
    }

    fn mark_idle(&self) {
        let ms = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.idle_since_ms.store(ms, Ordering::Relaxed);
    }
}

/// How a connection's deadline is armed.
#[derive(Debug, Clone, Copy)]
enum Mode {
    /// While no request is in flight (HTTP/1 and HTTP/2 REST).
    Requests,
    /// Until the first bytes of the HTTP/2 preface arrived (gRPC).
    Preface,
}

/// A socket with a header deadline, holding its listener's connection permit until dropped.
#[derive(Debug)]
pub struct GuardedIo<T> {
    inner: T,
    activity: Arc<Activity>,
    mode: Mode,
    timeout: Duration,
    sleep: Pin<Box<Sleep>>,
    _permit: OwnedSemaphorePermit,
    /// REST: the first bytes of the request being read (see the module docs).
    head: Vec<u8>,
    /// An answer was written since `head` was filled: the next read starts the next request.
    answered: bool,
    /// REST: the JSON refusal written in place of hyper's empty one, and how much of it is out.
    rewritten: Option<(Vec<u8>, usize)>,
}

impl<T> GuardedIo<T> {
    fn new(inner: T, mode: Mode, timeout: Duration, permit: OwnedSemaphorePermit) -> Self {
        let activity = Activity::new();
        let sleep = Box::pin(tokio::time::sleep_until(activity.opened + timeout));
        GuardedIo {
            inner,
            activity,
            mode,
            timeout,
            sleep,
            _permit: permit,
            head: Vec::new(),
            answered: false,
            rewritten: None,
        }
    }

    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    /// The deadline that applies now, if any.
    fn deadline(&self) -> Option<Instant> {
        match self.mode {
            Mode::Preface => (self.activity.read_bytes.load(Ordering::Relaxed) < H2_PREFACE_BYTES)
                .then(|| self.activity.opened + self.timeout),
            Mode::Requests => (self.activity.in_flight.load(Ordering::Relaxed) == 0).then(|| {
                self.activity.opened
                    + Duration::from_millis(self.activity.idle_since_ms.load(Ordering::Relaxed))
                    + self.timeout
            }),
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for GuardedIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                let n = (buf.filled().len() - before) as u64;
                self.activity.read_bytes.fetch_add(n, Ordering::Relaxed);
                if matches!(self.mode, Mode::Requests) && n > 0 {
                    let me = &mut *self;
                    if me.answered {
                        me.answered = false;
                        me.head.clear();
                    }
                    let room = HEAD_KEPT.saturating_sub(me.head.len());
                    let new = &buf.filled()[before..];
                    me.head.extend_from_slice(&new[..new.len().min(room)]);
                }
                Poll::Ready(r)
            }
            Poll::Pending => {
                let Some(deadline) = self.deadline() else {
                    return Poll::Pending;
                };
                if self.sleep.deadline() != deadline {
                    self.sleep.as_mut().reset(deadline);
                }
                match self.sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "no request within the header timeout",
                    ))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

/// hyper's own refusal of a request it could not read (status 414 or 431, no body): the whole
/// answer's head, as hyper writes it in one piece.
fn hyper_refusal(buf: &[u8]) -> Option<u16> {
    let status = match buf.get(..13)? {
        b"HTTP/1.1 414 " | b"HTTP/1.0 414 " => 414,
        b"HTTP/1.1 431 " | b"HTTP/1.0 431 " => 431,
        _ => return None,
    };
    let text = std::str::from_utf8(buf).ok()?.to_ascii_lowercase();
    (text.ends_with("\r\n\r\n")
        && text.contains("\r\ncontent-length: 0\r\n")
        && !text.contains("\r\ncontent-type:"))
    .then_some(status)
}

/// The path of a request line's start (`GET /jobs/v2/x?... HTTP/1.1`), as far as it was read.
fn request_path(head: &[u8]) -> String {
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let target = line.split(|b| *b == b' ').nth(1).unwrap_or_default();
    let path = target.split(|b| *b == b'?').next().unwrap_or_default();
    String::from_utf8_lossy(path).into_owned()
}

impl<T: AsyncWrite + Unpin> GuardedIo<T> {
    /// Writes what is left of a rewritten refusal; `Ready(Ok)` once it is all out.
    fn drain_rewritten(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while let Some((bytes, done)) = &mut self.rewritten {
            if *done >= bytes.len() {
                self.rewritten = None;
                break;
            }
            match Pin::new(&mut self.inner).poll_write(cx, &bytes[*done..]) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
                }
                Poll::Ready(Ok(n)) => *done += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Takes the write of `buf` in place of hyper when it is hyper's empty refusal (see the
    /// module docs): the JSON one is queued instead and `buf` counts as written.
    fn rewrite(&mut self, buf: &[u8]) -> bool {
        if !matches!(self.mode, Mode::Requests) || self.rewritten.is_some() {
            return false;
        }
        let Some(status) = hyper_refusal(buf) else {
            return false;
        };
        let path = request_path(&self.head);
        self.rewritten = Some((muster_api::rest::refused_request(status, &path), 0));
        true
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for GuardedIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        std::task::ready!(self.drain_rewritten(cx))?;
        self.answered = true;
        if self.rewrite(buf) {
            // `buf` is taken; what is left of the rewrite goes out on the next write or flush.
            if let Poll::Ready(Err(e)) = self.drain_rewritten(cx) {
                return Poll::Ready(Err(e));
            }
            return Poll::Ready(Ok(buf.len()));
        }
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            // The tail of an answer is still being written: a slow reader is not idle.
            self.activity.mark_idle();
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        std::task::ready!(self.drain_rewritten(cx))?;
        self.answered = true;
        // hyper's refusal is one buffer (a head with no body).
        if let [only] = bufs {
            if self.rewrite(only) {
                if let Poll::Ready(Err(e)) = self.drain_rewritten(cx) {
                    return Poll::Ready(Err(e));
                }
                return Poll::Ready(Ok(only.len()));
            }
        }
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.mark_idle();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        std::task::ready!(self.drain_rewritten(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        std::task::ready!(self.drain_rewritten(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for GuardedIo<TcpStream> {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

/// The gRPC listener's accepted connections: at most `max_connections` at once, each with the
/// preface deadline and `TCP_NODELAY` (a small answer written in two parts otherwise waits for
/// the client's delayed ACK: a 20-row `ListJobs` took 44 ms).
pub fn grpc_incoming(
    listener: TcpListener,
    limits: Limits,
) -> impl futures::Stream<Item = std::io::Result<GuardedIo<TcpStream>>> {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    futures::stream::unfold((listener, slots), move |(listener, slots)| async move {
        let (tcp, permit) = accept(&listener, &slots, "gRPC").await;
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!("TCP_NODELAY: {e}");
        }
        let io = GuardedIo::new(tcp, Mode::Preface, limits.header_timeout, permit);
        Some((Ok(io), (listener, slots)))
    })
}

/// Waits for a free connection slot (saying so once when it has to wait).
async fn take_slot(slots: &Arc<Semaphore>, what: &str) -> OwnedSemaphorePermit {
    if let Ok(p) = slots.clone().try_acquire_owned() {
        return p;
    }
    tracing::warn!("{what}: connection limit reached; new connections wait for a free slot");
    loop {
        // Never closed, so this never fails; were it to, waiting again is harmless.
        match slots.clone().acquire_owned().await {
            Ok(p) => return p,
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Waits for a free slot, then for a connection.
async fn accept(
    listener: &TcpListener,
    slots: &Arc<Semaphore>,
    what: &str,
) -> (TcpStream, OwnedSemaphorePermit) {
    let permit = take_slot(slots, what).await;
    loop {
        match listener.accept().await {
            Ok((tcp, _)) => return (tcp, permit),
            Err(e) => {
                // Out of file descriptors and the like: as axum's own listener does.
                tracing::warn!("{what}: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// A REST listener (plain TCP or [`crate::tls::TlsListener`]) under [`Limits`].
#[derive(Debug)]
pub struct Guarded<L> {
    inner: L,
    slots: Arc<Semaphore>,
    timeout: Duration,
}

impl<L> Guarded<L> {
    pub fn new(inner: L, limits: Limits) -> Self {
        Guarded {
            inner,
            slots: Arc::new(Semaphore::new(limits.max_connections.max(1))),
            timeout: limits.header_timeout,
        }
    }
}

impl Listener for Guarded<TcpListener> {
    type Io = GuardedIo<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (tcp, permit) = accept(&self.inner, &self.slots, "REST").await;
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!("TCP_NODELAY: {e}");
        }
        let addr = tcp
            .peer_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        (
            GuardedIo::new(tcp, Mode::Requests, self.timeout, permit),
            addr,
        )
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

impl Listener for Guarded<crate::tls::TlsListener> {
    type Io = GuardedIo<tokio_rustls::server::TlsStream<TcpStream>>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        // The slot is taken before the handshake's result is awaited, so connections stuck in
        // their handshake count too (the handshake has its own 10 s limit).
        let permit = take_slot(&self.slots, "REST").await;
        let (tls, addr) = self.inner.accept().await;
        (
            GuardedIo::new(tls, Mode::Requests, self.timeout, permit),
            addr,
        )
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// Makes a connection's request handler from its socket.
pub trait PerConnection<Io>: Clone + Send + 'static {
    type Service: tower::Service<Request, Response = Response, Error = Infallible>
        + Clone
        + Send
        + 'static;
    fn service(&self, io: &Io) -> Self::Service;
}

impl<Io> PerConnection<Io> for Router {
    type Service = Router;
    fn service(&self, _: &Io) -> Router {
        self.clone()
    }
}

/// The make-service of a [`Guarded`] listener: each connection's handler counts its requests
/// in flight, which arms and disarms the header deadline.
#[derive(Debug, Clone)]
pub struct Tracked<P>(pub P);

impl<'a, L, P> tower::Service<IncomingStream<'a, Guarded<L>>> for Tracked<P>
where
    Guarded<L>: Listener<Io = GuardedIo<<L as Listener>::Io>>,
    L: Listener,
    P: PerConnection<<L as Listener>::Io>,
{
    type Response = Counted<P::Service>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, stream: IncomingStream<'a, Guarded<L>>) -> Self::Future {
        let io = stream.io();
        std::future::ready(Ok(Counted {
            inner: self.0.service(io.get_ref()),
            activity: io.activity.clone(),
        }))
    }
}

/// One connection's handler (see [`Tracked`]).
#[derive(Debug, Clone)]
pub struct Counted<S> {
    inner: S,
    activity: Arc<Activity>,
}

/// A request in flight; when the last one ends the connection waits for the next.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn enter(activity: &Arc<Activity>) -> InFlight {
        activity.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(activity.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.0.mark_idle();
        }
    }
}

impl<S> tower::Service<Request> for Counted<S>
where
    S: tower::Service<Request, Response = Response, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let guard = InFlight::enter(&self.activity);
        let fut = self.inner.call(req);
        Box::pin(async move {
            let r = fut.await;
            drop(guard);
            r
        })
    }
}
