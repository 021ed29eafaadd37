//! Revoked certificates, kept as cluster data under `$cluster/revoked` so
//! that a revocation made on one node reaches every node, and checked at
//! every TLS handshake in both directions by verifiers that wrap
//! rustls's WebPKI ones.
//!
//! Two kinds of record, one key each:
//! - `name:NAME` revokes every certificate whose subject common name is
//!   NAME, whenever it was issued (`chorus cluster revoke NAME`): the name
//!   is retired, and so is any copy of its key, renewed or not. A node
//!   that comes back gets a certificate under a new name.
//! - `sha256:HEX` revokes the one certificate with that SHA-256
//!   fingerprint (`chorus cluster revoke NAME --cert FILE`), e.g. the one
//!   a renewal replaced.
//!
//! The key alone decides; the value (JSON: name, serial, time, reason) is
//! for people. A key is revoked while any of its siblings is a value.

use std::collections::HashSet;
use std::sync::{Arc, PoisonError, RwLock};

use chorus_core::FullPrefix;
use chorus_store::{IterOptions, Metadata, PutOptions, PutValue, Resolver, Scope};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::der;

/// Where revocations live.
pub const REVOKED: &str = "$cluster/revoked";
/// Most revocation records read; beyond, the rest are left out with an
/// error in the log (a cluster revokes a handful).
const RECORDS_MAX: usize = 100_000;

/// One revocation, as `chorus cluster revoked` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    /// Its key: `name:NAME` or `sha256:HEX`.
    pub key: String,
    /// The common name revoked, or the one in the revoked certificate.
    pub name: String,
    /// The certificate's serial number (hex), for `sha256:` records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// When it was revoked, unix milliseconds.
    pub at_ms: u64,
    /// Why, as given.
    #[serde(default)]
    pub reason: String,
}

/// The revocations a node holds: shared by its TLS verifiers and its core
/// (which refreshes it), cheap to clone.
#[derive(Clone, Default)]
pub struct Revocations(Arc<RwLock<Set>>);

#[derive(Default)]
struct Set {
    names: HashSet<String>,
    fingerprints: HashSet<[u8; 32]>,
}

impl std::fmt::Debug for Revocations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = self.0.read().unwrap_or_else(PoisonError::into_inner);
        f.debug_struct("Revocations")
            .field("names", &set.names.len())
            .field("certificates", &set.fingerprints.len())
            .finish()
    }
}

impl Revocations {
    /// Reads `$cluster/revoked` again. The node calls it at start and
    /// whenever a commit touches `$cluster/revoked`. On a read error the
    /// set is kept as it was (logged).
    pub fn refresh(&self, meta: &Metadata) {
        let mut set = Set::default();
        match read(meta, |key| set.insert(key)) {
            Ok(()) => {}
            Err(e) => {
                tracing::error!("cannot read the revoked certificates ({REVOKED}): {e}");
                return;
            }
        }
        let mut held = self.0.write().unwrap_or_else(PoisonError::into_inner);
        if held.names != set.names || held.fingerprints != set.fingerprints {
            tracing::info!(
                "revoked certificates: {} name(s), {} single certificate(s) ({REVOKED})",
                set.names.len(),
                set.fingerprints.len()
            );
        }
        *held = set;
    }

    /// Why the certificate (DER) is refused, if it is revoked.
    pub fn refuses(&self, der: &[u8]) -> Option<String> {
        let set = self.0.read().unwrap_or_else(PoisonError::into_inner);
        if !set.fingerprints.is_empty() {
            let fingerprint: [u8; 32] = Sha256::digest(der).into();
            if set.fingerprints.contains(&fingerprint) {
                return Some(format!(
                    "certificate sha256:{} is revoked",
                    hex(&fingerprint)
                ));
            }
        }
        if set.names.is_empty() {
            return None;
        }
        // Fails closed: a certificate whose names cannot be read is
        // refused while any name is revoked.
        let Some(info) = der::parse(der) else {
            return Some("its subject cannot be read to check the revoked names".into());
        };
        info.common_names
            .iter()
            .find(|n| set.names.contains(*n))
            .map(|n| format!("the name {n} is revoked"))
    }

    /// How many names and single certificates are revoked.
    pub fn counts(&self) -> (usize, usize) {
        let set = self.0.read().unwrap_or_else(PoisonError::into_inner);
        (set.names.len(), set.fingerprints.len())
    }

    fn check(&self, end_entity: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        match self.refuses(end_entity.as_ref()) {
            None => Ok(()),
            Some(why) => {
                tracing::debug!("refusing a revoked certificate: {why}");
                Err(rustls::Error::InvalidCertificate(CertificateError::Revoked))
            }
        }
    }
}

impl Set {
    fn insert(&mut self, key: &str) {
        if let Some(name) = key.strip_prefix("name:") {
            self.names.insert(name.to_string());
        } else if let Some(fingerprint) = key.strip_prefix("sha256:").and_then(unhex32) {
            self.fingerprints.insert(fingerprint);
        }
    }
}

fn revoked_prefix() -> Result<FullPrefix, chorus_store::Error> {
    FullPrefix::parse(REVOKED).map_err(|e| chorus_store::Error::InvalidInput(e.to_string()))
}

/// Calls `each` with the key of every revocation in force.
fn read(meta: &Metadata, mut each: impl FnMut(&str)) -> Result<(), chorus_store::Error> {
    let opts = IterOptions {
        resolver: Resolver::None,
        ..IterOptions::default()
    };
    for (seen, item) in meta
        .iter(&Scope::FullPrefix(revoked_prefix()?), &opts)?
        .enumerate()
    {
        if seen == RECORDS_MAX {
            tracing::error!(
                "more than {RECORDS_MAX} revocations in {REVOKED}: the rest are not checked"
            );
            break;
        }
        let item = item?;
        // A deleted key (every sibling a tombstone) is not in force.
        if item.read.tombstone {
            continue;
        }
        if let Ok(key) = std::str::from_utf8(&item.key) {
            each(key);
        }
    }
    Ok(())
}

/// Every revocation in force, for `chorus cluster revoked`.
pub fn list(meta: &Metadata) -> Result<Vec<Revocation>, chorus_store::Error> {
    let opts = IterOptions {
        resolver: Resolver::Lww,
        ..IterOptions::default()
    };
    let mut all = Vec::new();
    for item in meta
        .iter(&Scope::FullPrefix(revoked_prefix()?), &opts)?
        .take(RECORDS_MAX)
    {
        let item = item?;
        if item.read.tombstone {
            continue;
        }
        let key = String::from_utf8_lossy(&item.key).into_owned();
        let record = item
            .read
            .values
            .first()
            .and_then(|v| v.bytes())
            .and_then(|b| serde_json::from_slice::<Revocation>(b).ok());
        all.push(match record {
            Some(r) => Revocation { key, ..r },
            None => Revocation {
                name: key.strip_prefix("name:").unwrap_or_default().to_string(),
                key,
                serial: None,
                at_ms: 0,
                reason: String::new(),
            },
        });
    }
    Ok(all)
}

/// Revokes every certificate whose subject common name is `name`.
pub fn revoke_name(
    meta: &Metadata,
    name: &str,
    reason: &str,
    now_ms: u64,
) -> Result<Revocation, chorus_store::Error> {
    let record = Revocation {
        key: format!("name:{name}"),
        name: name.to_string(),
        serial: None,
        at_ms: now_ms,
        reason: reason.to_string(),
    };
    write(meta, &record)?;
    Ok(record)
}

/// Revokes the one certificate `der`, which must name `name`.
pub fn revoke_certificate(
    meta: &Metadata,
    name: &str,
    der: &[u8],
    reason: &str,
    now_ms: u64,
) -> Result<Revocation, chorus_store::Error> {
    let info = der::parse(der).ok_or_else(|| {
        chorus_store::Error::InvalidInput("not a certificate Chorus can read".into())
    })?;
    if !info.common_names.iter().any(|n| n == name) {
        return Err(chorus_store::Error::InvalidInput(format!(
            "the certificate is issued to {}, not {name}: give the name it holds",
            info.common_names.join(", ")
        )));
    }
    let fingerprint: [u8; 32] = Sha256::digest(der).into();
    let record = Revocation {
        key: format!("sha256:{}", hex(&fingerprint)),
        name: name.to_string(),
        serial: Some(hex(&info.serial)),
        at_ms: now_ms,
        reason: reason.to_string(),
    };
    write(meta, &record)?;
    Ok(record)
}

fn write(meta: &Metadata, record: &Revocation) -> Result<(), chorus_store::Error> {
    let bytes = serde_json::to_vec(record)
        .map_err(|e| chorus_store::Error::InvalidInput(format!("cannot encode: {e}")))?;
    meta.put_reserved(
        &revoked_prefix()?,
        record.key.as_bytes(),
        PutValue::Bytes(bytes),
        &PutOptions::default(),
    )?;
    Ok(())
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex32(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// The WebPKI server verifier (a node dialling checks the peer it
/// reached), refusing revoked certificates too.
#[derive(Debug)]
pub(crate) struct ServerVerifier {
    pub(crate) inner: Arc<dyn ServerCertVerifier>,
    pub(crate) revoked: Revocations,
}

impl ServerCertVerifier for ServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        self.revoked.check(end_entity)?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The WebPKI client verifier (a node accepting checks the peer that
/// dialled), refusing revoked certificates too.
#[derive(Debug)]
pub(crate) struct ClientVerifier {
    pub(crate) inner: Arc<dyn ClientCertVerifier>,
    pub(crate) revoked: Revocations,
}

impl ClientCertVerifier for ClientVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        self.revoked.check(end_entity)?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
