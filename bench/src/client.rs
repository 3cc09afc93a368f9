//! One client connection to the gateway, over `/ws` or Socket.IO, with small buffers: a bench
//! that holds tens of thousands of sockets must not spend 128 KiB on each.
//!
//! Both transports carry the same events; only the framing differs, so the scenarios speak in
//! [`Incoming`] and [`Client::request`] / [`Client::frame`] and never see which one is in use.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use serde_json::value::RawValue;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Mutex;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// How long a connect (TCP, upgrade, and for Socket.IO the namespace handshake) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a request may wait for its acknowledgement.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// Plain WebSocket at `/ws`, one JSON object per frame.
    Ws,
    /// Socket.IO v4 (Engine.IO 4 over its websocket transport) at `/socket.io/`.
    #[value(name = "socketio")]
    SocketIo,
}

/// Where the gateway is, and where connections come from.
#[derive(Clone, Debug)]
pub struct Target {
    pub addr: SocketAddr,
    /// Local addresses to connect from, in turn: one address has only ~28k ephemeral ports.
    pub sources: Arc<[IpAddr]>,
    pub transport: Transport,
}

impl Target {
    pub fn source(&self, n: usize) -> IpAddr {
        self.sources[n % self.sources.len()]
    }
}

type Ws = WebSocketStream<TcpStream>;
pub type Writer = Arc<Mutex<SplitSink<Ws, Message>>>;

/// A connected, authenticated client.
pub struct Client {
    pub writer: Writer,
    pub reader: SplitStream<Ws>,
    pub transport: Transport,
    /// Events that came while [`request`](Self::request) waited for its answer, oldest
    /// first, for a reader that needs every one of them.
    pub skipped: Vec<String>,
    next_id: u64,
}

/// A frame from the server, whatever the transport.
pub enum Incoming<'a> {
    /// The answer to request `id`.
    Ack { id: u64, data: &'a RawValue },
    /// A server event.
    Event { name: &'a str, data: &'a RawValue },
    /// Engine.IO's ping: answer with a pong.
    Ping,
    /// Anything else (a handshake frame, an event without data).
    Other,
}

impl Client {
    /// Connects from `source` with `token` and completes the transport's handshake.
    pub async fn connect(target: &Target, source: IpAddr, token: &str) -> anyhow::Result<Client> {
        tokio::time::timeout(CONNECT_TIMEOUT, Self::connect_inner(target, source, token))
            .await
            .map_err(|_| anyhow!("connect timed out"))?
    }

    /// [`Client::connect`], coming back when a refusal says to (the gateway's connect rate), as
    /// a real client does, for up to two minutes.
    pub async fn connect_as_told(
        target: &Target,
        source: IpAddr,
        token: &str,
        seed: u64,
    ) -> anyhow::Result<Client> {
        let started = std::time::Instant::now();
        let mut tries = 0;
        loop {
            match Self::connect(target, source, token).await {
                Err(e) if started.elapsed() < Duration::from_secs(120) => {
                    tries += 1;
                    let Some(wait) = Self::told_to_wait(&e, seed + tries) else {
                        return Err(e);
                    };
                    tokio::time::sleep(wait).await;
                }
                other => return other,
            }
        }
    }

    /// How long a refused connect waits before it comes back, when the server said
    /// (`503`/`429` with `Retry-After`): spread by `seed` over the second `Retry-After` rounds
    /// to, so that the refused do not all come back at once.
    pub fn told_to_wait(error: &anyhow::Error, seed: u64) -> Option<Duration> {
        let response = match error.downcast_ref::<tokio_tungstenite::tungstenite::Error>()? {
            tokio_tungstenite::tungstenite::Error::Http(response) => response,
            _ => return None,
        };
        let secs: u64 = response
            .headers()
            .get("retry-after")?
            .to_str()
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let second = Duration::from_secs(1);
        Some(
            Duration::from_secs(secs).saturating_sub(second)
                + crate::reconnect::jitter(second, seed),
        )
    }

    async fn connect_inner(target: &Target, source: IpAddr, token: &str) -> anyhow::Result<Client> {
        let socket = match source {
            IpAddr::V4(_) => TcpSocket::new_v4()?,
            IpAddr::V6(_) => TcpSocket::new_v6()?,
        };
        socket
            .bind(SocketAddr::new(source, 0))
            .with_context(|| format!("bind {source}"))?;
        let tcp = socket.connect(target.addr).await.context("tcp connect")?;
        tcp.set_nodelay(true)?;
        let config = WebSocketConfig::default()
            .read_buffer_size(4 * 1024)
            .write_buffer_size(0)
            .max_write_buffer_size(1 << 20);
        let url = match target.transport {
            Transport::Ws => format!("ws://{}/ws?token={token}", target.addr),
            Transport::SocketIo => {
                format!("ws://{}/socket.io/?EIO=4&transport=websocket", target.addr)
            }
        };
        let (ws, _) = tokio_tungstenite::client_async_with_config(url, tcp, Some(config))
            .await
            .context("websocket upgrade")?;
        let (mut writer, mut reader) = ws.split();
        if target.transport == Transport::SocketIo {
            // Engine.IO open ("0{...}"), then the namespace connect with the auth payload.
            let open = next_text(&mut reader).await?;
            if !open.starts_with('0') {
                bail!("expected the Engine.IO open packet, got {open:.80}");
            }
            let auth = serde_json::json!({ "token": token });
            writer.send(Message::text(format!("40{auth}"))).await?;
            loop {
                let reply = next_text(&mut reader).await?;
                match reply.as_bytes() {
                    [b'4', b'0', ..] => break,
                    [b'4', b'4', ..] => bail!("refused: {reply:.200}"),
                    [b'2'] => writer.send(Message::text("3")).await?,
                    _ => {}
                }
            }
        }
        Ok(Client {
            writer: Arc::new(Mutex::new(writer)),
            reader,
            transport: target.transport,
            skipped: Vec::new(),
            next_id: 1,
        })
    }

    /// Sends a request and waits for its acknowledgement, answering pings and keeping the
    /// events that come meanwhile in `skipped`. Returns the reply's data.
    pub async fn request(&mut self, event: &str, data: &str) -> anyhow::Result<serde_json::Value> {
        let id = self.next_id;
        self.next_id += 1;
        let frame = encode(self.transport, Some(id), event, data);
        self.writer.lock().await.send(Message::text(frame)).await?;
        let transport = self.transport;
        let wait = async {
            loop {
                let text = next_text(&mut self.reader).await?;
                match parse(transport, &text) {
                    Incoming::Ack { id: got, data } if got == id => {
                        return Ok::<_, anyhow::Error>(serde_json::from_str(data.get())?);
                    }
                    Incoming::Ping => pong(&self.writer).await?,
                    Incoming::Event { .. } => self.skipped.push(text),
                    _ => {}
                }
            }
        };
        tokio::time::timeout(REQUEST_TIMEOUT, wait)
            .await
            .map_err(|_| anyhow!("no answer to {event} within {REQUEST_TIMEOUT:?}"))?
    }

    /// Like [`request`](Self::request), but an `{"ok": false}` reply is an error.
    pub async fn call(&mut self, event: &str, data: &str) -> anyhow::Result<serde_json::Value> {
        let reply = self.request(event, data).await?;
        if reply["ok"] != true {
            bail!("{event} refused: {}", reply["error"]);
        }
        Ok(reply)
    }
}

/// The next text frame; an error when the connection ends.
pub async fn next_text(reader: &mut SplitStream<Ws>) -> anyhow::Result<String> {
    loop {
        match reader.next().await {
            Some(Ok(Message::Text(t))) => return Ok(t.as_str().to_owned()),
            Some(Ok(Message::Close(frame))) => bail!("closed: {frame:?}"),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
            None => bail!("connection ended"),
        }
    }
}

/// Answers an Engine.IO ping.
pub async fn pong(writer: &Writer) -> anyhow::Result<()> {
    writer.lock().await.send(Message::text("3")).await?;
    Ok(())
}

/// A request (with `id`) or a fire-and-forget event, framed for the transport. `data` is JSON.
pub fn encode(transport: Transport, id: Option<u64>, event: &str, data: &str) -> String {
    match (transport, id) {
        (Transport::Ws, Some(id)) => format!(r#"{{"type":"{event}","id":{id},"data":{data}}}"#),
        (Transport::Ws, None) => format!(r#"{{"type":"{event}","data":{data}}}"#),
        (Transport::SocketIo, Some(id)) => format!(r#"42{id}["{event}",{data}]"#),
        (Transport::SocketIo, None) => format!(r#"42["{event}",{data}]"#),
    }
}

/// Reads a server frame without copying its data.
pub fn parse(transport: Transport, text: &str) -> Incoming<'_> {
    match transport {
        Transport::Ws => parse_ws(text),
        Transport::SocketIo => parse_socketio(text),
    }
}

fn parse_ws(text: &str) -> Incoming<'_> {
    #[derive(serde::Deserialize)]
    struct Frame<'a> {
        #[serde(rename = "type", borrow)]
        kind: &'a str,
        id: Option<u64>,
        #[serde(borrow)]
        data: Option<&'a RawValue>,
    }
    let Ok(frame) = serde_json::from_str::<Frame<'_>>(text) else {
        return Incoming::Other;
    };
    match (frame.kind, frame.id, frame.data) {
        ("ack", Some(id), Some(data)) => Incoming::Ack { id, data },
        (name, _, Some(data)) => Incoming::Event { name, data },
        _ => Incoming::Other,
    }
}

fn parse_socketio(text: &str) -> Incoming<'_> {
    if text == "2" {
        return Incoming::Ping;
    }
    let Some(rest) = text.strip_prefix('4') else {
        return Incoming::Other;
    };
    let (kind, rest) = rest.split_at(rest.len().min(1));
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    let (id, body) = rest.split_at(digits);
    match kind {
        "2" => match serde_json::from_str::<(&str, &RawValue)>(body) {
            Ok((name, data)) => Incoming::Event { name, data },
            Err(_) => Incoming::Other,
        },
        "3" => match (id.parse(), serde_json::from_str::<(&RawValue,)>(body)) {
            (Ok(id), Ok((data,))) => Incoming::Ack { id, data },
            _ => Incoming::Other,
        },
        _ => Incoming::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_through_both_framings() {
        let ws = encode(Transport::Ws, Some(7), "message:send", r#"{"a":1}"#);
        assert_eq!(ws, r#"{"type":"message:send","id":7,"data":{"a":1}}"#);
        let sio = encode(Transport::SocketIo, Some(7), "message:send", r#"{"a":1}"#);
        assert_eq!(sio, r#"427["message:send",{"a":1}]"#);

        match parse(Transport::Ws, r#"{"type":"ack","id":7,"data":{"ok":true}}"#) {
            Incoming::Ack { id, data } => assert_eq!((id, data.get()), (7, r#"{"ok":true}"#)),
            _ => panic!("not an ack"),
        }
        match parse(Transport::SocketIo, r#"437[{"ok":true}]"#) {
            Incoming::Ack { id, data } => assert_eq!((id, data.get()), (7, r#"{"ok":true}"#)),
            _ => panic!("not an ack"),
        }
        match parse(Transport::SocketIo, r#"42["message:new",{"seq":1}]"#) {
            Incoming::Event { name, data } => {
                assert_eq!((name, data.get()), ("message:new", r#"{"seq":1}"#));
            }
            _ => panic!("not an event"),
        }
        assert!(matches!(parse(Transport::SocketIo, "2"), Incoming::Ping));
        assert!(matches!(parse(Transport::Ws, "not json"), Incoming::Other));
        assert!(matches!(parse(Transport::SocketIo, "43x"), Incoming::Other));
    }
}
