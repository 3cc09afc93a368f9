//! What every handler shares, behind one `Arc`.

use std::sync::Arc;

use async_nats::jetstream;
use parley_auth::Verifier;
use parley_common::subjects::Subjects;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::addresses::AddressCounter;
use crate::auth::AllowedOrigins;
use crate::chat::ChatClient;
use crate::config::Limits;
use crate::fanout::Fanout;
use crate::jwks::JwksCache;
use crate::limits::UserRates;
use crate::metrics::GatewayMetrics;
use crate::presence::Presence;
use crate::typing::Typing;

pub type AppState = Arc<Shared>;

pub struct Shared {
    pub subjects: Subjects,
    pub js: jetstream::Context,
    pub verifier: Verifier,
    pub jwks: Arc<JwksCache>,
    pub chat: ChatClient,
    pub fanout: Arc<Fanout>,
    pub presence: Arc<Presence>,
    pub typing: Arc<Typing>,
    pub limits: Limits,
    /// Sockets per client address (`PARLEY_MAX_SOCKETS_PER_ADDRESS`).
    pub addresses: Arc<AddressCounter>,
    /// Every user's request budget on this gateway, for the HTTP API (and sockets).
    pub rates: UserRates,
    /// New connections admitted per second ([`crate::limits::ConnectGate`]).
    pub connects: crate::limits::Connects,
    pub metrics: Arc<GatewayMetrics>,
    /// Cancelled when the gateway drains: every socket says goodbye and closes.
    pub draining: CancellationToken,
    /// Every socket task, so shutdown can wait for them.
    pub sockets: TaskTracker,
    /// The origins whose pages may authenticate with the session cookie.
    pub origins: AllowedOrigins,
}
