//! Refused TLS handshakes, logged with their reason, at most one line per
//! reason per source address (and direction) every [`LOG_EVERY`]; the next
//! line says how many were left out meanwhile.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use rustls::CertificateError;

/// At most one line per reason and source address this often.
pub(crate) const LOG_EVERY: Duration = Duration::from_secs(10);
/// Sources remembered at most; beyond, the ones quiet for [`LOG_EVERY`]
/// are forgotten, and if none is, every new source shares one entry per
/// reason.
const SOURCES_MAX: usize = 1024;

/// Which side of the handshake this node was on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Side {
    /// A peer dialled this node.
    Inbound,
    /// This node dialled a peer.
    Outbound,
}

/// Why a handshake failed: a short stable name and a sentence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reason {
    pub(crate) name: &'static str,
    pub(crate) text: String,
}

/// What a failed handshake's error says.
pub(crate) fn reason(error: &std::io::Error) -> Reason {
    let tls = error
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>());
    let Some(tls) = tls else {
        let name = match error.kind() {
            std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset => "closed",
            _ => "io",
        };
        return Reason {
            name,
            text: format!("the connection failed during the handshake: {error}"),
        };
    };
    let (name, text) = match tls {
        rustls::Error::InvalidCertificate(e) => certificate(e),
        rustls::Error::NoCertificatesPresented => (
            "no-certificate",
            "it presented no certificate (a node without --tls, or not a node)".into(),
        ),
        rustls::Error::AlertReceived(alert) => (
            "refused-by-peer",
            format!(
                "the peer refused the handshake ({alert:?}): it may not accept this node's certificate"
            ),
        ),
        other => ("protocol", format!("the handshake failed: {other}")),
    };
    Reason { name, text }
}

fn certificate(e: &CertificateError) -> (&'static str, String) {
    match e {
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => (
            "expired",
            format!(
                "its certificate has expired ({e}); renew it with `chorus cluster cert NAME --renew`"
            ),
        ),
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => (
            "not-yet-valid",
            format!("its certificate is not valid yet ({e}); check the clocks"),
        ),
        CertificateError::Revoked => (
            "revoked",
            "its certificate is revoked (`chorus cluster revoked` lists the revocations)".into(),
        ),
        CertificateError::UnknownIssuer => (
            "unknown-ca",
            "its certificate is not from this cluster's CA".into(),
        ),
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => (
            "wrong-name",
            format!("its certificate does not name the address dialled ({e})"),
        ),
        CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => (
            "wrong-purpose",
            format!("its certificate is not for this use ({e})"),
        ),
        other => (
            "bad-certificate",
            format!("its certificate is refused: {other}"),
        ),
    }
}

/// What one line stands for: a source (`None`: many), a direction, a
/// reason.
type Key = (Option<IpAddr>, Side, &'static str);

#[derive(Debug, Clone, Copy)]
struct Seen {
    logged: Instant,
    suppressed: u64,
}

/// The rate limiter of the log lines.
#[derive(Debug, Default)]
pub(crate) struct Refusals {
    seen: Mutex<HashMap<Key, Seen>>,
}

impl Refusals {
    /// Logs a failed handshake with `peer` (if known), unless a line for
    /// the same reason and source was logged less than [`LOG_EVERY`] ago.
    pub(crate) fn refused(&self, peer: Option<SocketAddr>, side: Side, error: &std::io::Error) {
        let why = reason(error);
        let Some(suppressed) = self.admit(peer.map(|p| p.ip()), side, why.name, Instant::now())
        else {
            return;
        };
        let who = match (side, peer) {
            (Side::Inbound, Some(p)) => format!("from {p}"),
            (Side::Inbound, None) => "from a peer".into(),
            (Side::Outbound, Some(p)) => format!("with {p} (dialled)"),
            (Side::Outbound, None) => "with a peer (dialled)".into(),
        };
        let more = if suppressed > 0 {
            format!(
                " ({suppressed} more for the same reason from this source in the last {}s not shown)",
                LOG_EVERY.as_secs()
            )
        } else {
            String::new()
        };
        match why.name {
            "closed" | "io" | "protocol" => {
                tracing::info!(
                    "refused a TLS handshake {who}: {} [{}]{more}",
                    why.text,
                    why.name
                );
            }
            _ => tracing::warn!(
                "refused a TLS handshake {who}: {} [{}]{more}",
                why.text,
                why.name
            ),
        }
    }

    /// `Some(lines left out since the last)` when a line may be logged now.
    fn admit(
        &self,
        source: Option<IpAddr>,
        side: Side,
        reason: &'static str,
        now: Instant,
    ) -> Option<u64> {
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        let key = (source, side, reason);
        if seen.len() >= SOURCES_MAX && !seen.contains_key(&key) {
            seen.retain(|_, s| now.duration_since(s.logged) < LOG_EVERY);
        }
        // Still full: new sources share one entry per reason.
        let key = if seen.len() >= SOURCES_MAX && !seen.contains_key(&key) {
            (None, side, reason)
        } else {
            key
        };
        match seen.get_mut(&key) {
            Some(s) if now.duration_since(s.logged) < LOG_EVERY => {
                s.suppressed += 1;
                None
            }
            Some(s) => {
                let suppressed = s.suppressed;
                *s = Seen {
                    logged: now,
                    suppressed: 0,
                };
                Some(suppressed)
            }
            None => {
                seen.insert(
                    key,
                    Seen {
                        logged: now,
                        suppressed: 0,
                    },
                );
                Some(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> Option<IpAddr> {
        Some(IpAddr::from([127, 0, 0, last]))
    }

    #[test]
    fn one_line_per_reason_and_source_every_ten_seconds_with_the_count_left_out() {
        let r = Refusals::default();
        let t0 = Instant::now();
        assert_eq!(r.admit(ip(1), Side::Inbound, "expired", t0), Some(0));
        for _ in 0..5 {
            assert_eq!(
                r.admit(ip(1), Side::Inbound, "expired", t0 + Duration::from_secs(1)),
                None
            );
        }
        // Another reason, another source, this node dialling: their own lines.
        assert_eq!(r.admit(ip(1), Side::Inbound, "revoked", t0), Some(0));
        assert_eq!(r.admit(ip(1), Side::Outbound, "expired", t0), Some(0));
        assert_eq!(r.admit(ip(2), Side::Inbound, "expired", t0), Some(0));
        assert_eq!(
            r.admit(ip(1), Side::Inbound, "expired", t0 + LOG_EVERY),
            Some(5)
        );
        assert_eq!(
            r.admit(ip(1), Side::Inbound, "expired", t0 + LOG_EVERY),
            None
        );
    }

    #[test]
    fn many_sources_share_an_entry_instead_of_growing_without_bound() {
        let r = Refusals::default();
        let t0 = Instant::now();
        for i in 0..SOURCES_MAX as u32 + 100 {
            let source = Some(IpAddr::from(i.to_be_bytes()));
            let _ = r.admit(source, Side::Inbound, "unknown-ca", t0);
        }
        let seen = r.seen.lock().expect("lock");
        assert!(seen.len() <= SOURCES_MAX + 1, "{}", seen.len());
        // The shared entry was logged once and counted the rest.
        assert_eq!(
            seen.get(&(None, Side::Inbound, "unknown-ca"))
                .map(|s| s.suppressed),
            Some(99)
        );
    }

    #[test]
    fn the_reason_names_what_the_verifier_said() {
        let io = |e: rustls::Error| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
        let cases = [
            (CertificateError::Expired, "expired"),
            (CertificateError::Revoked, "revoked"),
            (CertificateError::UnknownIssuer, "unknown-ca"),
            (CertificateError::NotValidYet, "not-yet-valid"),
        ];
        for (e, name) in cases {
            assert_eq!(reason(&io(rustls::Error::InvalidCertificate(e))).name, name);
        }
        let eof = std::io::Error::from(std::io::ErrorKind::UnexpectedEof);
        assert_eq!(reason(&eof).name, "closed");
    }
}
