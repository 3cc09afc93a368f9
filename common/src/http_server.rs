//! The HTTP server under every port Parley listens on (the gateway's and each role's admin
//! port), in place of `axum::serve`, which has no header or idle timeout: a client that sends
//! its headers a byte at a time (slowloris), or opens connections and sends nothing, would hold
//! a task and a socket for as long as it liked.
//!
//! - **Header-read timeout** ([`HttpLimits::header_read_timeout`]): the request head must be in
//!   within it, or the connection is closed without an answer. Hyper starts it whenever it waits
//!   for a head, so it also ends an HTTP/1.1 keep-alive connection left idle between requests.
//! - **Idle timeout** ([`HttpLimits::idle_timeout`]): a connection on which no byte moves either
//!   way for this long is closed: a stalled upload, or a client that stopped reading a
//!   response. Not upgraded WebSockets: once upgraded, a socket is the transport's (which pings
//!   and has its own idle limit).
//! - **Write deadline** ([`HttpLimits::write_timeout`]): a write to the client that cannot
//!   finish within it (the client stopped reading and its window is shut) fails, upgraded
//!   sockets included, so a stalled reader is dropped rather than waited on for ever (a
//!   WebSocket library whose writer has no deadline of its own, such as Socket.IO's, gets one).
//! - **Connections per address** ([`HttpLimits::max_connections_per_address`]): TCP
//!   connections open at once from one peer IP, WebSockets included. Past it a new connection
//!   gets `429` with `Retry-After` and is closed. An [`Exempt`] predicate lifts it for some
//!   addresses (a trusted proxy carries many clients' connections).
//!
//! Shutdown is axum's: stop accepting, let each connection finish its request (an idle one
//! closes at once), then return; upgraded sockets are the caller's to drain.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{ConfigError, Env};

/// What one client connection may hold (the settings of DESIGN §9 for HTTP).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpLimits {
    /// `PARLEY_HTTP_HEADER_TIMEOUT_SECONDS`, default 10.
    pub header_read_timeout: Duration,
    /// `PARLEY_HTTP_IDLE_TIMEOUT_SECONDS`, default 60 (at least 30: Socket.IO's long polls wait
    /// up to its 25 s ping interval with nothing to send).
    pub idle_timeout: Duration,
    /// `PARLEY_MAX_CONNECTIONS_PER_ADDRESS`, default 256; 0 lifts the cap.
    pub max_connections_per_address: usize,
    /// `PARLEY_WRITE_TIMEOUT_SECONDS`, default 10: one write to a client that takes longer
    /// fails and the connection ends.
    pub write_timeout: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections_per_address: 256,
            write_timeout: Duration::from_secs(10),
        }
    }
}

impl HttpLimits {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let d = Self::default();
        let header: u64 = env.parse_or(
            "PARLEY_HTTP_HEADER_TIMEOUT_SECONDS",
            d.header_read_timeout.as_secs(),
        )?;
        if !(1..=300).contains(&header) {
            return Err(ConfigError::Invalid {
                name: "PARLEY_HTTP_HEADER_TIMEOUT_SECONDS",
                reason: "must be 1 to 300 seconds".into(),
            });
        }
        let idle: u64 =
            env.parse_or("PARLEY_HTTP_IDLE_TIMEOUT_SECONDS", d.idle_timeout.as_secs())?;
        if !(30..=3600).contains(&idle) {
            return Err(ConfigError::Invalid {
                name: "PARLEY_HTTP_IDLE_TIMEOUT_SECONDS",
                reason: "must be 30 to 3600 seconds".into(),
            });
        }
        let write: u64 = env.parse_or("PARLEY_WRITE_TIMEOUT_SECONDS", d.write_timeout.as_secs())?;
        if write == 0 {
            return Err(ConfigError::Invalid {
                name: "PARLEY_WRITE_TIMEOUT_SECONDS",
                reason: "must be at least 1".into(),
            });
        }
        Ok(Self {
            write_timeout: Duration::from_secs(write),
            header_read_timeout: Duration::from_secs(header),
            idle_timeout: Duration::from_secs(idle),
            max_connections_per_address: env.parse_or(
                "PARLEY_MAX_CONNECTIONS_PER_ADDRESS",
                d.max_connections_per_address,
            )?,
        })
    }
}

/// Addresses not held to the per-address cap (e.g. trusted proxies).
pub type Exempt = Arc<dyn Fn(IpAddr) -> bool + Send + Sync>;

/// Connections the kernel queues for a listener before it accepts them. tokio's default (1,024)
/// overflows when thousands of clients come back at once after a restart; a connection past
/// the queue waits out a SYN retransmit (a second or more) instead of being accepted.
pub const LISTEN_BACKLOG: u32 = 4096;

/// Binds `addr` (`host:port`, the host resolved) with [`LISTEN_BACKLOG`].
pub async fn bind(addr: &str) -> io::Result<TcpListener> {
    let mut last = None;
    for sa in tokio::net::lookup_host(addr).await? {
        let socket = if sa.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        match socket.bind(sa).and_then(|()| socket.listen(LISTEN_BACKLOG)) {
            Ok(listener) => return Ok(listener),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{addr} resolves to no address"),
        )
    }))
}

/// Serves `router` on `listener` until `shutdown` resolves, then lets open requests finish.
/// Requests carry `ConnectInfo<SocketAddr>` (the TCP peer), as with axum's
/// `into_make_service_with_connect_info`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: HttpLimits,
    exempt: Option<Exempt>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let slots = Arc::new(AddressSlots {
        open: Mutex::new(HashMap::new()),
        max: limits.max_connections_per_address,
        exempt,
    });
    let connections = TaskTracker::new();
    let closing = CancellationToken::new();
    let mut shutdown = pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    // Out of file descriptors, most likely: wait rather than spin.
                    tracing::error!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            },
        };
        let Some(slot) = slots.take(peer.ip()) else {
            tracing::debug!(%peer, "refused a connection: too many from this address");
            // A fresh socket's send buffer takes the answer at once; no task waits on a client
            // that is over its share already.
            let _ = tcp.try_write(TOO_MANY);
            continue;
        };
        if let Err(e) = tcp.set_nodelay(true) {
            // Without it Nagle holds small frames back up to the client's delayed-ack timeout.
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        connections.spawn(connection(
            Tracked::new(tcp, slot, limits.write_timeout),
            peer,
            router.clone(),
            limits.clone(),
            closing.clone(),
        ));
    }
    drop(listener);
    closing.cancel();
    connections.close();
    connections.wait().await;
    Ok(())
}

async fn connection(
    io: Tracked,
    peer: SocketAddr,
    router: Router,
    limits: HttpLimits,
    closing: CancellationToken,
) {
    let activity = io.activity.clone();
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        let mut router = router.clone();
        async move { tower_service::Service::call(&mut router, request).await }
    });
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let mut conn = pin!(
        http.serve_connection(TokioIo::new(io), service)
            .with_upgrades()
    );
    let mut draining = false;
    loop {
        let quiet_until = activity.last() + limits.idle_timeout;
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(%peer, error = %e, "connection ended");
                }
                return;
            }
            () = closing.cancelled(), if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
            () = tokio::time::sleep_until(quiet_until) => {
                if activity.last() + limits.idle_timeout <= Instant::now() {
                    tracing::debug!(%peer, "closing an idle connection");
                    return;
                }
            }
        }
    }
}

/// The answer to a connection over the per-address cap, written before it is closed.
const TOO_MANY: &[u8] = b"HTTP/1.1 429 Too Many Requests\r\n\
content-type: application/json\r\n\
retry-after: 1\r\n\
connection: close\r\n\
content-length: 84\r\n\r\n\
{\"error\":{\"code\":\"rate_limited\",\"message\":\"too many connections from this address\"}}";

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// Connections open per peer address.
struct AddressSlots {
    open: Mutex<HashMap<IpAddr, usize>>,
    max: usize,
    exempt: Option<Exempt>,
}

impl AddressSlots {
    /// A place for one more connection from `ip`, or `None` when it has its share.
    fn take(self: &Arc<Self>, ip: IpAddr) -> Option<Slot> {
        if self.max == 0 || self.exempt.as_ref().is_some_and(|exempt| exempt(ip)) {
            return Some(Slot(None));
        }
        let mut open = self.open.lock().expect("slots lock");
        let n = open.entry(ip).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(Slot(Some((self.clone(), ip))))
    }
}

/// One counted connection; dropped with the socket (after an upgrade too).
struct Slot(Option<(Arc<AddressSlots>, IpAddr)>);

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some((slots, ip)) = self.0.take() {
            let mut open = slots.open.lock().expect("slots lock");
            if let Some(n) = open.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    open.remove(&ip);
                }
            }
        }
    }
}

/// When a byte last moved on a connection.
#[derive(Clone)]
struct Activity {
    start: Instant,
    /// Milliseconds since `start`.
    last: Arc<AtomicU64>,
}

impl Activity {
    fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last.store(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.start + Duration::from_millis(self.last.load(Ordering::Relaxed))
    }
}

/// A TCP stream that notes when bytes move, fails a write stuck past its deadline, and holds
/// its address's slot.
struct Tracked {
    tcp: TcpStream,
    activity: Activity,
    write_timeout: Duration,
    /// Armed while a write waits for the client's window to open.
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
    _slot: Slot,
}

impl Tracked {
    fn new(tcp: TcpStream, slot: Slot, write_timeout: Duration) -> Self {
        Self {
            tcp,
            activity: Activity {
                start: Instant::now(),
                last: Arc::new(AtomicU64::new(0)),
            },
            write_timeout,
            stalled: None,
            _slot: slot,
        }
    }

    /// What a write came to: progress disarms the deadline; waiting arms it, and past it the
    /// write fails (the timer wakes the writer, which would otherwise wait for a window that
    /// never opens).
    fn deadline<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if polled.is_ready() {
            self.stalled = None;
            return polled;
        }
        let timeout = self.write_timeout;
        let stalled = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match stalled.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client did not read within the write timeout",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.tcp).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.tcp).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        self.deadline(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        self.deadline(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.tcp).poll_flush(cx);
        self.deadline(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_write_to_a_client_that_does_not_read_fails_at_the_deadline() {
        use tokio::io::AsyncWriteExt;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let mut io = Tracked::new(server, Slot(None), Duration::from_millis(200));
        // The client never reads: once its window and our send buffer are full, a write waits,
        // and then fails.
        let chunk = vec![0u8; 64 * 1024];
        let error = loop {
            if let Err(e) = io.write_all(&chunk).await {
                break e;
            }
        };
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        drop(client);
    }

    #[tokio::test]
    async fn a_reading_client_gets_everything_whatever_the_deadline() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let mut io = Tracked::new(server, Slot(None), Duration::from_millis(200));
        let reader = tokio::spawn(async move {
            let mut all = Vec::new();
            client.read_to_end(&mut all).await.unwrap();
            all.len()
        });
        let chunk = vec![7u8; 64 * 1024];
        for _ in 0..64 {
            io.write_all(&chunk)
                .await
                .expect("a reader keeps the window open");
        }
        io.shutdown().await.unwrap();
        drop(io);
        assert_eq!(reader.await.unwrap(), 64 * 64 * 1024);
    }

    #[test]
    fn the_refusal_is_a_complete_http_response() {
        let (head, body) = std::str::from_utf8(TOO_MANY)
            .unwrap()
            .split_once("\r\n\r\n")
            .unwrap();
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let parsed: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(parsed["error"]["code"], "rate_limited");
    }

    #[test]
    fn an_address_gets_its_share_and_no_more_and_exempt_ones_are_not_counted() {
        let slots = Arc::new(AddressSlots {
            open: Mutex::new(HashMap::new()),
            max: 2,
            exempt: Some(Arc::new(|ip: IpAddr| ip.is_loopback())),
        });
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let first = slots.take(a).unwrap();
        let _second = slots.take(a).unwrap();
        assert!(slots.take(a).is_none());
        assert!(slots.take(b).is_some());
        drop(first);
        assert!(slots.take(a).is_some());
        let local: IpAddr = "127.0.0.1".parse().unwrap();
        let held: Vec<_> = (0..5).map(|_| slots.take(local).unwrap()).collect();
        assert_eq!(held.len(), 5);
    }

    #[test]
    fn limits_come_from_the_environment_within_bounds() {
        let env = Env::from_pairs([
            ("PARLEY_HTTP_HEADER_TIMEOUT_SECONDS", "3"),
            ("PARLEY_MAX_CONNECTIONS_PER_ADDRESS", "0"),
        ]);
        let limits = HttpLimits::from_env(&env).unwrap();
        assert_eq!(limits.header_read_timeout, Duration::from_secs(3));
        assert_eq!(limits.max_connections_per_address, 0);
        let env = Env::from_pairs([("PARLEY_HTTP_IDLE_TIMEOUT_SECONDS", "5")]);
        assert!(HttpLimits::from_env(&env).is_err());
    }
}
