//! Mutual TLS between nodes: a cluster CA made by `chorus cluster init`,
//! node certificates issued by `chorus cluster cert`, and a node that
//! accepts only peers whose certificate chains to its CA, and dials only
//! peers that present one (for the address dialled).
//!
//! Files: a CA directory holds `ca.crt` and `ca.key` (keep the key off
//! the nodes); a node's TLS directory holds `ca.crt`, `node.crt` and
//! `node.key`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::Error;

/// The TLS side of a node.
#[derive(Clone)]
pub struct Tls {
    pub(crate) acceptor: TlsAcceptor,
    pub(crate) connector: TlsConnector,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tls")
    }
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

fn write_private(path: &Path, text: &str) -> Result<(), Error> {
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

fn write_public(path: &Path, text: &str) -> Result<(), Error> {
    std::fs::write(path, text).map_err(|e| tls_error("cannot write", path, e))
}

fn read(path: &Path) -> Result<String, Error> {
    std::fs::read_to_string(path).map_err(|e| tls_error("cannot read", path, e))
}

/// Makes a cluster CA in `dir` (created if missing); refuses to replace
/// one that exists.
pub fn init_ca(dir: &Path) -> Result<PathBuf, Error> {
    std::fs::create_dir_all(dir).map_err(|e| tls_error("cannot create", dir, e))?;
    let (crt, key) = (dir.join("ca.crt"), dir.join("ca.key"));
    if crt.exists() || key.exists() {
        return Err(Error::Config(format!(
            "{} already holds a cluster CA: keep it (every node's certificate depends on it) or choose another directory",
            dir.display()
        )));
    }
    let key_pair = KeyPair::generate().map_err(|e| Error::Config(e.to_string()))?;
    let cert = ca_params()?
        .self_signed(&key_pair)
        .map_err(|e| Error::Config(e.to_string()))?;
    write_private(&key, &key_pair.serialize_pem())?;
    write_public(&crt, &cert.pem())?;
    Ok(crt)
}

/// Issues a node certificate for `name` and `ips` (the addresses peers
/// dial) from the CA in `ca_dir`, into `out` as `ca.crt`, `node.crt`,
/// `node.key`.
pub fn issue(ca_dir: &Path, name: &str, ips: &[std::net::IpAddr], out: &Path) -> Result<(), Error> {
    let ca_key = KeyPair::from_pem(&read(&ca_dir.join("ca.key"))?)
        .map_err(|e| tls_error("not a key:", &ca_dir.join("ca.key"), e))?;
    let ca_crt = read(&ca_dir.join("ca.crt"))?;
    let issuer = Issuer::new(ca_params()?, ca_key);
    let mut params =
        CertificateParams::new(vec![name.to_string()]).map_err(|e| Error::Config(e.to_string()))?;
    params
        .subject_alt_names
        .extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    let node_key = KeyPair::generate().map_err(|e| Error::Config(e.to_string()))?;
    let cert = params
        .signed_by(&node_key, &issuer)
        .map_err(|e| Error::Config(e.to_string()))?;
    std::fs::create_dir_all(out).map_err(|e| tls_error("cannot create", out, e))?;
    write_private(&out.join("node.key"), &node_key.serialize_pem())?;
    write_public(&out.join("node.crt"), &cert.pem())?;
    write_public(&out.join("ca.crt"), &ca_crt)?;
    Ok(())
}

/// Loads a node's TLS directory.
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
    let key_path = dir.join("node.key");
    let key = PrivateKeyDer::from_pem_file(&key_path)
        .map_err(|e| tls_error("not a private key:", &key_path, e))?;
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
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
    let server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(|e| tls_error("the certificate and key do not go together in", dir, e))?;
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Config(e.to_string()))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| tls_error("the certificate and key do not go together in", dir, e))?;
    Ok(Tls {
        acceptor: TlsAcceptor::from(Arc::new(server)),
        connector: TlsConnector::from(Arc::new(client)),
    })
}
