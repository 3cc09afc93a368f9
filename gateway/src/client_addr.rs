//! Who is on the other end of a request: the client address that per-address limits count
//! (failed sign-ins and sign-ups in the auth role, connections per address).
//!
//! The address is the TCP peer, unless the peer is one of `PARLEY_TRUSTED_PROXIES` (an
//! ingress or load balancer), in which case it is read from `X-Forwarded-For`: the rightmost
//! entry that is not itself a trusted proxy. Each proxy appends the address it saw, so entries
//! to the right of the first untrusted one were written by our proxies and entries to its left
//! by the client, who can write anything there. Without this, every client behind the ingress
//! shares the ingress's address, and 100 wrong passwords from anyone lock everyone out (issue
//! 15, finding 8); trusting the header from anyone would let every client pick its address.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::HeaderMap;
use axum::http::request::Parts;
use ipnet::IpNet;
use parley_common::config::{ConfigError, Env};

use crate::state::AppState;

/// `X-Forwarded-For` entries examined at most, from the right.
const MAX_HOPS: usize = 32;

/// The networks whose connections may name the client in `X-Forwarded-For`
/// (`PARLEY_TRUSTED_PROXIES`: comma-separated CIDRs or addresses; default none).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// Trusts nobody: the client is always the TCP peer.
    pub fn none() -> Self {
        Self::default()
    }

    /// `10.0.0.0/8, 192.168.1.7, fd00::/8`: CIDRs, or single addresses.
    pub fn parse(raw: &str) -> Result<Self, String> {
        raw.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse::<IpNet>()
                    .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                    .map(|n| n.trunc())
                    .map_err(|_| format!("{s:?} is not a CIDR (e.g. 10.0.0.0/8) or an address"))
            })
            .collect::<Result<_, _>>()
            .map(Self)
    }

    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        env.get("PARLEY_TRUSTED_PROXIES")
            .map_or_else(|| Ok(Self::none()), Self::parse)
            .map_err(|reason| ConfigError::Invalid {
                name: "PARLEY_TRUSTED_PROXIES",
                reason,
            })
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|net| net.contains(&ip))
    }
}

/// The address a request comes from, as per-address limits should count it. As an extractor,
/// it reads the connection's peer (`ConnectInfo`) and `state.limits.trusted_proxies`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub IpAddr);

impl ClientAddr {
    /// The client behind `peer`: `peer` itself unless it is a trusted proxy; then the rightmost
    /// `X-Forwarded-For` entry that is not a trusted proxy. If every entry is trusted, the
    /// leftmost; if an entry does not parse, the trusted hop that passed it on (a proxy that
    /// writes garbage is not believed further). IPv4-mapped IPv6 addresses come out as IPv4.
    pub fn resolve(peer: IpAddr, headers: &HeaderMap, trusted: &TrustedProxies) -> IpAddr {
        let mut client = peer.to_canonical();
        if !trusted.contains(client) {
            return client;
        }
        let entries: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .collect();
        for entry in entries.iter().rev().take(MAX_HOPS) {
            let Some(hop) = parse_hop(entry) else {
                return client;
            };
            client = hop;
            if !trusted.contains(hop) {
                return hop;
            }
        }
        client
    }
}

/// One `X-Forwarded-For` entry: an address, possibly with a port (`1.2.3.4:5678`,
/// `[2001:db8::1]:443`), as some proxies write it.
fn parse_hop(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    entry
        .parse::<IpAddr>()
        .or_else(|_| entry.parse::<SocketAddr>().map(|s| s.ip()))
        .ok()
        .map(|ip| ip.to_canonical())
}

/// A request without `ConnectInfo` (a router served without it): a bug in how the gateway was
/// built, answered 500 rather than guessed.
#[derive(Debug)]
pub struct NoPeerAddress;

impl axum::response::IntoResponse for NoPeerAddress {
    fn into_response(self) -> axum::response::Response {
        tracing::error!("request without a peer address: serve with connect info");
        let body = parley_common::wire::ApiError::new(
            parley_common::wire::ErrorCode::Unavailable,
            "the service is temporarily unavailable, try again",
        );
        (
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            axum::Json(serde_json::json!({ "error": body })),
        )
            .into_response()
    }
}

impl FromRequestParts<AppState> for ClientAddr {
    type Rejection = NoPeerAddress;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        Self::of(
            &parts.extensions,
            &parts.headers,
            &state.limits.trusted_proxies,
        )
        .map(ClientAddr)
        .ok_or(NoPeerAddress)
    }
}

impl ClientAddr {
    /// The client address of a request from its parts; `None` without a peer address (a
    /// router served without connection info).
    pub fn of(
        extensions: &axum::http::Extensions,
        headers: &HeaderMap,
        trusted: &TrustedProxies,
    ) -> Option<IpAddr> {
        let peer = extensions.get::<ConnectInfo<SocketAddr>>()?.0.ip();
        Some(Self::resolve(peer, headers, trusted))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;
    use proptest::prelude::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn xff(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn ingress() -> TrustedProxies {
        TrustedProxies::parse("10.0.0.0/8, 192.168.1.7").unwrap()
    }

    #[test]
    fn without_trusted_proxies_the_peer_is_the_client_whatever_the_header_says() {
        let h = xff(&["203.0.113.9"]);
        assert_eq!(
            ClientAddr::resolve(ip("10.1.2.3"), &h, &TrustedProxies::none()),
            ip("10.1.2.3")
        );
    }

    #[test]
    fn an_untrusted_peer_cannot_pick_its_address() {
        let h = xff(&["198.51.100.1"]);
        assert_eq!(
            ClientAddr::resolve(ip("203.0.113.9"), &h, &ingress()),
            ip("203.0.113.9")
        );
    }

    #[test]
    fn behind_a_trusted_proxy_the_client_is_the_rightmost_untrusted_entry() {
        // The client wrote a fake first entry; our ingress (10.x) and an inner proxy appended.
        let h = xff(&["1.1.1.1, 203.0.113.9, 10.0.0.5"]);
        assert_eq!(
            ClientAddr::resolve(ip("192.168.1.7"), &h, &ingress()),
            ip("203.0.113.9")
        );
        // Split over several header lines, in order.
        let h = xff(&["1.1.1.1", "203.0.113.9", "10.0.0.5"]);
        assert_eq!(
            ClientAddr::resolve(ip("10.9.9.9"), &h, &ingress()),
            ip("203.0.113.9")
        );
    }

    #[test]
    fn a_trusted_peer_without_the_header_is_itself_the_client() {
        assert_eq!(
            ClientAddr::resolve(ip("10.0.0.5"), &HeaderMap::new(), &ingress()),
            ip("10.0.0.5")
        );
        let h = xff(&["10.0.0.1, 10.0.0.2"]);
        assert_eq!(
            ClientAddr::resolve(ip("10.0.0.5"), &h, &ingress()),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn garbage_stops_the_walk_at_the_hop_that_passed_it_on() {
        let h = xff(&["203.0.113.9, nonsense, 10.0.0.2"]);
        assert_eq!(
            ClientAddr::resolve(ip("10.0.0.5"), &h, &ingress()),
            ip("10.0.0.2")
        );
    }

    #[test]
    fn ports_brackets_and_mapped_addresses_are_understood() {
        let h = xff(&["[2001:db8::1]:443, 10.0.0.2:80"]);
        assert_eq!(
            ClientAddr::resolve(ip("10.0.0.5"), &h, &ingress()),
            ip("2001:db8::1")
        );
        let h = xff(&["::ffff:203.0.113.9"]);
        assert_eq!(
            ClientAddr::resolve(ip("::ffff:10.0.0.5"), &h, &ingress()),
            ip("203.0.113.9")
        );
    }

    #[test]
    fn the_setting_parses_cidrs_and_addresses_and_names_what_is_wrong() {
        let t = TrustedProxies::parse(" 10.0.0.0/8 ,, fd00::/8, 127.0.0.1 ").unwrap();
        assert!(t.contains(ip("10.255.0.1")));
        assert!(t.contains(ip("fd12::1")));
        assert!(t.contains(ip("127.0.0.1")));
        assert!(!t.contains(ip("127.0.0.2")));
        assert!(TrustedProxies::parse("").unwrap().is_empty());
        let err = TrustedProxies::from_env(&Env::from_pairs([(
            "PARLEY_TRUSTED_PROXIES",
            "10.0.0.0/33",
        )]))
        .unwrap_err();
        assert!(err.to_string().contains("PARLEY_TRUSTED_PROXIES"), "{err}");
        assert!(err.to_string().contains("10.0.0.0/33"), "{err}");
    }

    proptest! {
        /// Whatever a client writes in the header, the answer is the peer or an address from
        /// the header, and an untrusted peer is always itself.
        #[test]
        fn any_header_resolves_to_the_peer_or_one_of_its_entries(
            values in proptest::collection::vec("[ -~]{0,80}", 0..4),
            peer in prop_oneof![Just("10.0.0.5"), Just("203.0.113.9")],
        ) {
            let mut h = HeaderMap::new();
            for v in &values {
                if let Ok(v) = HeaderValue::from_str(v) {
                    h.append("x-forwarded-for", v);
                }
            }
            let peer = ip(peer);
            let got = ClientAddr::resolve(peer, &h, &ingress());
            if !ingress().contains(peer) {
                prop_assert_eq!(got, peer);
            } else {
                let from_header = values
                    .iter()
                    .flat_map(|v| v.split(','))
                    .filter_map(parse_hop)
                    .any(|a| a == got);
                prop_assert!(got == peer || from_header);
            }
        }
    }
}
