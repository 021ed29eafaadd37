//! Mutual TLS between nodes: a cluster CA made by `chorus cluster init`,
//! node certificates issued (and renewed) by `chorus cluster cert`, and a
//! node that accepts only peers whose certificate chains to its CA, is
//! within its validity and is not revoked, and dials only peers that
//! present such a certificate for the address dialled.
//!
//! Files: a CA directory holds `ca.crt` and `ca.key` (keep the key off
//! the nodes); a node's TLS directory holds `ca.crt`, `node.crt` and
//! `node.key` (and `node.crt.old` after a renewal). Directories are 0700
//! and files 0600.
//!
//! Certificates have a lifetime (365 days for nodes, 3650 for the CA by
//! default; older ones were valid from 1975 to 4096 and still load), key
//! usages, and for nodes the extended key usages serverAuth and
//! clientAuth. Revocations are cluster data under `$cluster/revoked`
//! (see [`Revocations`]), checked at every handshake in both directions.
//! A refused handshake is logged with its reason, rate-limited.

mod der;
mod refusals;
mod revoke;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::Error;
use refusals::{Refusals, Side};
pub use revoke::{
    REVOKED, Revocation, Revocations, list as list_revoked, revoke_certificate, revoke_name,
};

/// Default lifetime of a node certificate.
pub const NODE_DAYS: u32 = 365;
/// Default lifetime of the cluster CA.
pub const CA_DAYS: u32 = 3650;
/// A new certificate is valid from this long before it is made, so that
/// a node whose clock is a little behind the CA's accepts it at once.
const BACKDATE: Duration = Duration::from_secs(3600);
/// A node warns at start when its certificate expires within this.
const EXPIRY_WARNING: Duration = Duration::from_secs(30 * 86_400);

/// The TLS side of a node.
#[derive(Clone)]
pub struct Tls {
    pub(crate) acceptor: Acceptor,
    pub(crate) connector: Connector,
    revocations: Revocations,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tls")
    }
}

impl Tls {
    /// The revocations its verifiers check: the node refreshes them from
    /// `$cluster/revoked`.
    pub fn revocations(&self) -> &Revocations {
        &self.revocations
    }
}

/// A stream whose peer address is known, for the log of refused
/// handshakes.
pub trait PeerAddress {
    /// The peer's address, if known.
    fn peer_address(&self) -> Option<SocketAddr>;
}

impl PeerAddress for tokio::net::TcpStream {
    fn peer_address(&self) -> Option<SocketAddr> {
        self.peer_addr().ok()
    }
}

/// Accepts TLS connections from peers; logs the refused ones.
#[derive(Clone)]
pub(crate) struct Acceptor {
    inner: TlsAcceptor,
    refusals: Arc<Refusals>,
}

impl Acceptor {
    /// The handshake of an inbound connection (the client certificate
    /// is checked here).
    pub(crate) async fn accept<IO>(
        &self,
        stream: IO,
    ) -> std::io::Result<tokio_rustls::server::TlsStream<IO>>
    where
        IO: AsyncRead + AsyncWrite + Unpin + PeerAddress,
    {
        let peer = stream.peer_address();
        let result = self.inner.accept(stream).await;
        if let Err(e) = &result {
            self.refusals.refused(peer, Side::Inbound, e);
        }
        result
    }
}

/// Dials peers over TLS; logs the refused handshakes.
#[derive(Clone)]
pub(crate) struct Connector {
    inner: TlsConnector,
    refusals: Arc<Refusals>,
}

impl Connector {
    /// The handshake of an outbound connection to `name` (the server
    /// certificate is checked here).
    pub(crate) async fn connect<IO>(
        &self,
        name: ServerName<'static>,
        stream: IO,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<IO>>
    where
        IO: AsyncRead + AsyncWrite + Unpin + PeerAddress,
    {
        let peer = stream.peer_address();
        let result = self.inner.connect(name, stream).await;
        if let Err(e) = &result {
            self.refusals.refused(peer, Side::Outbound, e);
        }
        result
    }
}

/// When a certificate is valid: unix seconds, inclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    /// Valid from.
    pub not_before: u64,
    /// Valid until.
    pub not_after: u64,
}

impl Validity {
    /// From an hour ago (for clocks a little behind) to `days` from now.
    pub fn days(days: u32) -> Validity {
        let now = unix_now();
        Validity {
            not_before: now.saturating_sub(BACKDATE.as_secs()),
            not_after: now.saturating_add(u64::from(days) * 86_400),
        }
    }

    fn check(&self) -> Result<(), Error> {
        if self.not_after <= self.not_before {
            return Err(Error::Config(format!(
                "a certificate valid from {} until {} is never valid: give an end after the start",
                der::utc(secs(self.not_before)),
                der::utc(secs(self.not_after))
            )));
        }
        // GeneralizedTime has four digits of year.
        if self.not_after > 253_402_300_799 {
            return Err(Error::Config(
                "a certificate cannot be valid past the year 9999".into(),
            ));
        }
        Ok(())
    }

    fn apply(&self, params: &mut CertificateParams) {
        let epoch = rcgen::date_time_ymd(1970, 1, 1);
        params.not_before = epoch + Duration::from_secs(self.not_before);
        params.not_after = epoch + Duration::from_secs(self.not_after);
    }
}

/// What `issue` and `renew` made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    /// The certificate's serial number (hex).
    pub serial: String,
    /// Its SHA-256 fingerprint (hex): what `chorus cluster revoke --cert`
    /// records.
    pub sha256: String,
    /// When it expires, unix seconds.
    pub not_after: u64,
    /// The addresses it names.
    pub ips: Vec<IpAddr>,
    /// After a renewal: the replaced certificate, kept as `node.crt.old`.
    pub replaced: Option<PathBuf>,
}

/// Unix seconds as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn utc(unix_secs: u64) -> String {
    der::utc(secs(unix_secs))
}

fn secs(unix: u64) -> i64 {
    i64::try_from(unix).unwrap_or(i64::MAX)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn tls_error(what: &str, path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Config(format!("{what} {}: {e}", path.display()))
}

/// The CA's parameters, the same every time: a certificate issued later
/// names the CA exactly as the CA certificate does.
fn ca_params() -> Result<CertificateParams, Error> {
    let mut params =
        CertificateParams::new(Vec::<String>::new()).map_err(|e| Error::Config(e.to_string()))?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "Chorus cluster CA");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ok(params)
}

/// A random positive serial number of 16 bytes.
fn serial() -> Result<Vec<u8>, Error> {
    let mut bytes = vec![0u8; 16];
    getrandom::fill(&mut bytes)
        .map_err(|e| Error::Io(format!("no randomness for a serial number: {e}")))?;
    bytes[0] = (bytes[0] & 0x7f) | 0x01;
    Ok(bytes)
}

/// Makes `dir` (and missing parents) private to its owner (mode 0700),
/// tightening it if it exists.
fn private_dir(dir: &Path) -> Result<(), Error> {
    use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| tls_error("cannot create", dir, e))?;
    let mode = std::fs::metadata(dir)
        .map_err(|e| tls_error("cannot read", dir, e))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| tls_error("cannot make private (mode 0700)", dir, e))?;
    }
    Ok(())
}

/// Writes a new file, mode 0600; refuses to replace one.
fn write_new(path: &Path, text: &str) -> Result<(), Error> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| tls_error("cannot create", path, e))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| tls_error("cannot write", path, e))
}

/// Writes `path.tmp` (mode 0600, synced), to be renamed over `path`.
fn write_tmp(path: &Path, text: &str) -> Result<PathBuf, Error> {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    let tmp = path.with_file_name(name);
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(tls_error("cannot remove", &tmp, e)),
    }
    write_new(&tmp, text)?;
    Ok(tmp)
}

fn rename(from: &Path, to: &Path) -> Result<(), Error> {
    std::fs::rename(from, to).map_err(|e| tls_error("cannot replace", to, e))
}

fn sync_dir(dir: &Path) -> Result<(), Error> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| tls_error("cannot sync", dir, e))
}

fn read(path: &Path) -> Result<String, Error> {
    std::fs::read_to_string(path).map_err(|e| tls_error("cannot read", path, e))
}

/// The first certificate of a PEM file, as DER.
fn read_cert(path: &Path) -> Result<CertificateDer<'static>, Error> {
    CertificateDer::from_pem_file(path).map_err(|e| tls_error("no certificate in", path, e))
}

/// Reads a certificate file (PEM) for revocation: its DER bytes.
pub fn certificate_der(path: &Path) -> Result<Vec<u8>, Error> {
    Ok(read_cert(path)?.as_ref().to_vec())
}

/// Makes a cluster CA in `dir` (created if missing, mode 0700), valid for
/// `validity`; refuses to replace one that exists.
pub fn init_ca(dir: &Path, validity: Validity) -> Result<PathBuf, Error> {
    validity.check()?;
    private_dir(dir)?;
    let (crt, key) = (dir.join("ca.crt"), dir.join("ca.key"));
    if crt.exists() || key.exists() {
        return Err(Error::Config(format!(
            "{} already holds a cluster CA: keep it (every node's certificate depends on it) or choose another directory",
            dir.display()
        )));
    }
    let key_pair = KeyPair::generate().map_err(|e| Error::Config(e.to_string()))?;
    let mut params = ca_params()?;
    validity.apply(&mut params);
    params.serial_number = Some(serial()?.into());
    let cert = params
        .self_signed(&key_pair)
        .map_err(|e| Error::Config(e.to_string()))?;
    write_new(&key, &key_pair.serialize_pem())?;
    write_new(&crt, &cert.pem())?;
    Ok(crt)
}

/// A node certificate and its key, signed by the CA in `ca_dir`.
struct NodeCert {
    key_pem: String,
    cert_pem: String,
    ca_pem: String,
    issued: Issued,
}

fn make_node_cert(
    ca_dir: &Path,
    name: &str,
    ips: &[IpAddr],
    validity: Validity,
) -> Result<NodeCert, Error> {
    validity.check()?;
    let ca_key_path = ca_dir.join("ca.key");
    let ca_key = KeyPair::from_pem(&read(&ca_key_path)?)
        .map_err(|e| tls_error("not a key:", &ca_key_path, e))?;
    let ca_pem = read(&ca_dir.join("ca.crt"))?;
    let issuer = Issuer::new(ca_params()?, ca_key);
    let mut params =
        CertificateParams::new(vec![name.to_string()]).map_err(|e| Error::Config(e.to_string()))?;
    params
        .subject_alt_names
        .extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    validity.apply(&mut params);
    let serial = serial()?;
    params.serial_number = Some(serial.clone().into());
    // ECDSA keys sign; key encipherment is for RSA key transport, which
    // RFC 5480 rules out for them.
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    let node_key = KeyPair::generate().map_err(|e| Error::Config(e.to_string()))?;
    let cert = params
        .signed_by(&node_key, &issuer)
        .map_err(|e| Error::Config(e.to_string()))?;
    let sha256 = {
        use sha2::Digest as _;
        revoke::hex(&sha2::Sha256::digest(cert.der()))
    };
    Ok(NodeCert {
        key_pem: node_key.serialize_pem(),
        cert_pem: cert.pem(),
        ca_pem,
        issued: Issued {
            serial: revoke::hex(&serial),
            sha256,
            not_after: validity.not_after,
            ips: ips.to_vec(),
            replaced: None,
        },
    })
}

/// Issues a node certificate for `name` and `ips` (the addresses peers
/// dial) from the CA in `ca_dir`, into `out` (made 0700) as `ca.crt`,
/// `node.crt`, `node.key`; refuses an `out` that already holds one
/// (renew it with [`renew`]).
pub fn issue(
    ca_dir: &Path,
    name: &str,
    ips: &[IpAddr],
    out: &Path,
    validity: Validity,
) -> Result<Issued, Error> {
    let (key, crt) = (out.join("node.key"), out.join("node.crt"));
    if key.exists() || crt.exists() {
        return Err(Error::Config(format!(
            "{} already holds a node certificate: give --renew to replace it (same CA, new key), or another --out",
            out.display()
        )));
    }
    let made = make_node_cert(ca_dir, name, ips, validity)?;
    private_dir(out)?;
    write_new(&key, &made.key_pem)?;
    write_new(&crt, &made.cert_pem)?;
    let ca = out.join("ca.crt");
    let tmp = write_tmp(&ca, &made.ca_pem)?;
    rename(&tmp, &ca)?;
    sync_dir(out)?;
    Ok(made.issued)
}

/// Reissues the certificate in `out` from the same CA with a new key: for
/// `ips`, or the addresses the old one named if `ips` is empty. The key
/// and then the certificate are each replaced by rename; the old
/// certificate is kept as `node.crt.old` (to revoke it with
/// `chorus cluster revoke NAME --cert`). A running node keeps using the
/// files it loaded until it restarts.
pub fn renew(
    ca_dir: &Path,
    name: &str,
    ips: &[IpAddr],
    out: &Path,
    validity: Validity,
) -> Result<Issued, Error> {
    let crt = out.join("node.crt");
    if !crt.exists() {
        return Err(Error::Config(format!(
            "{} holds no node certificate to renew: issue one with `chorus cluster cert {name} --out {}`",
            out.display(),
            out.display()
        )));
    }
    let old_pem = read(&crt)?;
    let old = der::parse(read_cert(&crt)?.as_ref())
        .ok_or_else(|| tls_error("cannot read the certificate in", &crt, "unknown layout"))?;
    if !old.common_names.iter().any(|n| n == name) {
        return Err(Error::Config(format!(
            "{} is the certificate of {}, not {name}: give its name, or another --out",
            crt.display(),
            old.common_names.join(", ")
        )));
    }
    let ca_in_out = read(&out.join("ca.crt")).unwrap_or_default();
    let ca_pem = read(&ca_dir.join("ca.crt"))?;
    if ca_in_out.trim() != ca_pem.trim() {
        return Err(Error::Config(format!(
            "{} was issued by another CA than the one in {}: renew it with the CA that issued it (or issue a new one into an empty directory)",
            out.display(),
            ca_dir.display()
        )));
    }
    let ips = if ips.is_empty() && !old.ips.is_empty() {
        old.ips.clone()
    } else if ips.is_empty() {
        vec![IpAddr::from([127, 0, 0, 1])]
    } else {
        ips.to_vec()
    };
    let made = make_node_cert(ca_dir, name, &ips, validity)?;
    private_dir(out)?;
    let kept = out.join("node.crt.old");
    let tmp_old = write_tmp(&kept, &old_pem)?;
    let tmp_key = write_tmp(&out.join("node.key"), &made.key_pem)?;
    let tmp_crt = write_tmp(&crt, &made.cert_pem)?;
    rename(&tmp_old, &kept)?;
    rename(&tmp_key, &out.join("node.key"))?;
    rename(&tmp_crt, &crt)?;
    sync_dir(out)?;
    Ok(Issued {
        replaced: Some(kept),
        ..made.issued
    })
}

/// Loads a node's TLS directory; its verifiers check `revocations` (kept
/// up to date by the caller).
pub fn load(dir: &Path) -> Result<Tls, Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let ca_path = dir.join("ca.crt");
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&ca_path)
        .map_err(|e| tls_error("cannot read", &ca_path, e))?
    {
        let cert = cert.map_err(|e| tls_error("not a certificate:", &ca_path, e))?;
        roots
            .add(cert)
            .map_err(|e| tls_error("not a CA certificate:", &ca_path, e))?;
    }
    let roots = Arc::new(roots);
    let cert_path = dir.join("node.crt");
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_path)
        .map_err(|e| tls_error("cannot read", &cert_path, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| tls_error("not a certificate:", &cert_path, e))?;
    if let Some(own) = chain.first().and_then(|c| der::parse(c.as_ref())) {
        warn_if_expiring(&cert_path, &own);
    }
    let key_path = dir.join("node.key");
    let key = PrivateKeyDer::from_pem_file(&key_path)
        .map_err(|e| tls_error("not a private key:", &key_path, e))?;
    let revocations = Revocations::default();
    let refusals = Arc::new(Refusals::default());
    let client_verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        roots.clone(),
        provider.clone(),
    )
    .build()
    .map_err(|e| {
        Error::Config(format!(
            "cannot verify clients with {}: {e}",
            ca_path.display()
        ))
    })?;
    let server_verifier =
        rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
            .build()
            .map_err(|e| {
                Error::Config(format!(
                    "cannot verify servers with {}: {e}",
                    ca_path.display()
                ))
            })?;
    let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Config(e.to_string()))?
        .with_client_cert_verifier(Arc::new(revoke::ClientVerifier {
            inner: client_verifier,
            revoked: revocations.clone(),
        }))
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(|e| tls_error("the certificate and key do not go together in", dir, e))?;
    // No session resumption either way: a resumed session skips the
    // certificate checks, so a peer revoked (or expired) since its last
    // handshake would get in again.
    server.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    server.send_tls13_tickets = 0;
    let mut client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Config(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(revoke::ServerVerifier {
            inner: server_verifier,
            revoked: revocations.clone(),
        }))
        .with_client_auth_cert(chain, key)
        .map_err(|e| tls_error("the certificate and key do not go together in", dir, e))?;
    client.resumption = rustls::client::Resumption::disabled();
    Ok(Tls {
        acceptor: Acceptor {
            inner: TlsAcceptor::from(Arc::new(server)),
            refusals: refusals.clone(),
        },
        connector: Connector {
            inner: TlsConnector::from(Arc::new(client)),
            refusals,
        },
        revocations,
    })
}

/// Warns when this node's own certificate has expired (every peer refuses
/// it) or expires soon.
fn warn_if_expiring(path: &Path, own: &der::CertInfo) {
    let now = secs(unix_now());
    let soon = secs(EXPIRY_WARNING.as_secs());
    if own.not_after < now {
        tracing::warn!(
            "this node's certificate {} expired at {}: peers refuse it; renew it with `chorus cluster cert NAME --renew --out DIR` and restart",
            path.display(),
            der::utc(own.not_after)
        );
    } else if own.not_after < now.saturating_add(soon) {
        tracing::warn!(
            "this node's certificate {} expires at {}: renew it with `chorus cluster cert NAME --renew --out DIR` and restart",
            path.display(),
            der::utc(own.not_after)
        );
    }
}

#[cfg(test)]
mod tests;
