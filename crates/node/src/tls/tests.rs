//! Handshakes between two TLS sides in one process, over an in-memory
//! pipe: what each side accepts and refuses.

use std::os::unix::fs::PermissionsExt as _;

use chorus_store::{Metadata, Options, Store};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, DuplexStream};

use super::*;

impl PeerAddress for DuplexStream {
    fn peer_address(&self) -> Option<SocketAddr> {
        None
    }
}

fn localhost() -> Vec<IpAddr> {
    vec![IpAddr::from([127, 0, 0, 1])]
}

struct Cluster {
    dir: tempfile::TempDir,
}

impl Cluster {
    fn new() -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        init_ca(&dir.path().join("ca"), Validity::days(CA_DAYS)).expect("CA");
        Cluster { dir }
    }

    fn ca(&self) -> PathBuf {
        self.dir.path().join("ca")
    }

    fn node(&self, name: &str, validity: Validity) -> PathBuf {
        let out = self.dir.path().join(name);
        issue(&self.ca(), name, &localhost(), &out, validity).expect("issue");
        out
    }
}

/// How one handshake went on each side.
struct Outcome {
    /// The dialling side's error, if any.
    client: Option<String>,
    /// The accepting side's error, if any.
    server: Option<String>,
}

impl Outcome {
    fn ok(&self) -> bool {
        self.client.is_none() && self.server.is_none()
    }
}

/// Runs one handshake between `client` (dialling) and `server`, each
/// side exchanging a byte after it.
async fn handshake(client: &Tls, server: &Tls) -> Outcome {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let name = ServerName::IpAddress(IpAddr::from([127, 0, 0, 1]).into());
    let connector = client.connector.clone();
    let dial = tokio::spawn(async move {
        let mut s = connector.connect(name, a).await?;
        s.write_all(b"x").await?;
        let mut byte = [0u8; 1];
        s.read_exact(&mut byte).await?;
        Ok::<(), std::io::Error>(())
    });
    let acceptor = server.acceptor.clone();
    let accepted = async move {
        let mut s = acceptor.accept(b).await?;
        let mut byte = [0u8; 1];
        s.read_exact(&mut byte).await?;
        s.write_all(b"y").await?;
        s.flush().await?;
        Ok::<(), std::io::Error>(())
    }
    .await;
    let dialled = dial.await.expect("the dialling task ends");
    Outcome {
        client: dialled.err().map(|e| e.to_string()),
        server: accepted.err().map(|e| e.to_string()),
    }
}

/// The refusing side's own error (not an alert it received).
#[track_caller]
fn refused_by(side: Option<String>, what: &str) {
    let e = side.unwrap_or_else(|| panic!("not refused"));
    assert!(!e.contains("alert"), "the other side refused: {e}");
    assert!(e.to_lowercase().contains(what), "{e}");
}

fn store() -> (tempfile::TempDir, Metadata) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(
        dir.path(),
        Options {
            create: true,
            ..Options::default()
        },
    )
    .expect("store");
    (dir, Metadata::new(store))
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).expect("stat").permissions().mode() & 0o777
}

#[tokio::test]
async fn nodes_of_one_ca_shake_hands() {
    let c = Cluster::new();
    let a = load(&c.node("a", Validity::days(NODE_DAYS))).expect("a");
    let b = load(&c.node("b", Validity::days(NODE_DAYS))).expect("b");
    assert!(handshake(&a, &b).await.ok(), "a dials b");
    assert!(handshake(&b, &a).await.ok(), "b dials a");
}

#[tokio::test]
async fn an_expired_certificate_is_refused_both_ways() {
    let c = Cluster::new();
    let now = unix_now();
    let expired = Validity {
        not_before: now - 10 * 86_400,
        not_after: now - 86_400,
    };
    let old = load(&c.node("old", expired)).expect("an expired certificate still loads");
    let good = load(&c.node("good", Validity::days(NODE_DAYS))).expect("good");
    refused_by(handshake(&old, &good).await.server, "expired");
    refused_by(handshake(&good, &old).await.client, "expired");
}

#[tokio::test]
async fn a_revoked_name_or_certificate_is_refused_both_ways_and_others_are_not() {
    let c = Cluster::new();
    let good = load(&c.node("good", Validity::days(NODE_DAYS))).expect("good");
    let other = load(&c.node("other", Validity::days(NODE_DAYS))).expect("other");
    let bad_dir = c.node("bad", Validity::days(NODE_DAYS));
    let bad = load(&bad_dir).expect("bad");
    assert!(handshake(&bad, &good).await.ok(), "not revoked yet");
    assert!(handshake(&good, &bad).await.ok(), "not revoked yet");
    let (_dir, meta) = store();
    revoke_name(&meta, "bad", "key leaked", 1).expect("revoke");
    good.revocations().refresh(&meta);
    assert_eq!(good.revocations().counts(), (1, 0));
    refused_by(handshake(&bad, &good).await.server, "revoked");
    refused_by(handshake(&good, &bad).await.client, "revoked");
    // A renewed certificate of the name is revoked too.
    renew(&c.ca(), "bad", &[], &bad_dir, Validity::days(NODE_DAYS)).expect("renew");
    let renewed = load(&bad_dir).expect("renewed");
    refused_by(handshake(&good, &renewed).await.client, "revoked");
    // Others still pass.
    assert!(handshake(&other, &good).await.ok(), "other dials good");
    assert!(handshake(&good, &other).await.ok(), "good dials other");

    // One certificate by fingerprint: that one only.
    let cert = read_cert(&c.dir.path().join("other").join("node.crt")).expect("cert");
    revoke_certificate(&meta, "other", cert.as_ref(), "", 2).expect("revoke");
    good.revocations().refresh(&meta);
    assert_eq!(good.revocations().counts(), (1, 1));
    refused_by(handshake(&good, &other).await.client, "revoked");
    refused_by(handshake(&other, &good).await.server, "revoked");
    let err = revoke_certificate(&meta, "someone", cert.as_ref(), "", 3).expect_err("wrong name");
    assert!(err.to_string().contains("issued to other"), "{err}");
    assert_eq!(list_revoked(&meta).expect("list").len(), 2);
    // Deleting the record lifts the revocation.
    let fp = chorus_core::FullPrefix::parse(REVOKED).expect("fp");
    meta.put_reserved(
        &fp,
        b"name:bad",
        chorus_store::PutValue::Tombstone,
        &chorus_store::PutOptions::default(),
    )
    .expect("delete");
    good.revocations().refresh(&meta);
    assert_eq!(good.revocations().counts(), (0, 1));
    assert!(handshake(&renewed, &good).await.ok(), "no longer revoked");
}

#[tokio::test]
async fn certificates_of_the_old_format_still_load_and_shake_hands() {
    // Before lifetimes: valid 1975-4096, random-free serial, no key usages.
    let c = Cluster::new();
    let ca_key = KeyPair::from_pem(&read(&c.ca().join("ca.key")).expect("key")).expect("key");
    let issuer = Issuer::new(ca_params().expect("params"), ca_key);
    let mut params = CertificateParams::new(vec!["old".to_string()]).expect("params");
    params
        .subject_alt_names
        .push(SanType::IpAddress(IpAddr::from([127, 0, 0, 1])));
    let key = KeyPair::generate().expect("key");
    let cert = params.signed_by(&key, &issuer).expect("sign");
    let dir = c.dir.path().join("old");
    private_dir(&dir).expect("dir");
    write_new(&dir.join("node.key"), &key.serialize_pem()).expect("write");
    write_new(&dir.join("node.crt"), &cert.pem()).expect("write");
    write_new(
        &dir.join("ca.crt"),
        &read(&c.ca().join("ca.crt")).expect("ca"),
    )
    .expect("write");
    let old = load(&dir).expect("old format loads");
    let new = load(&c.node("new", Validity::days(NODE_DAYS))).expect("new");
    assert!(handshake(&old, &new).await.ok(), "old dials new");
    assert!(handshake(&new, &old).await.ok(), "new dials old");
}

#[test]
fn a_certificate_has_a_lifetime_key_usages_and_private_files() {
    let c = Cluster::new();
    assert_eq!(mode(&c.ca()), 0o700);
    assert_eq!(mode(&c.ca().join("ca.key")), 0o600);
    assert_eq!(mode(&c.ca().join("ca.crt")), 0o600);
    let ca = der::parse(read_cert(&c.ca().join("ca.crt")).expect("ca").as_ref()).expect("parse");
    let now = secs(unix_now());
    let ca_days = (ca.not_after - now) / 86_400;
    assert!((3649..=3650).contains(&ca_days), "{ca_days}");
    let out = c.node("n", Validity::days(30));
    assert_eq!(mode(&out), 0o700);
    for f in ["node.key", "node.crt", "ca.crt"] {
        assert_eq!(mode(&out.join(f)), 0o600, "{f}");
    }
    let der_bytes = read_cert(&out.join("node.crt")).expect("cert");
    let info = der::parse(der_bytes.as_ref()).expect("parse");
    assert!((29..=30).contains(&((info.not_after - now) / 86_400)));
    assert!(info.not_before <= now);
    assert_eq!(info.common_names, vec!["n".to_string()]);
    assert_eq!(info.ips, localhost());
    // serverAuth (1.3.6.1.5.5.7.3.1) and clientAuth (...3.2), digitalSignature.
    let bytes = der_bytes.as_ref();
    let has = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
    assert!(has(&[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x01]));
    assert!(has(&[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x02]));
    assert!(has(&[0x55, 0x1d, 0x0f]), "a key usage extension");
}

#[test]
fn issue_refuses_to_overwrite_and_renew_replaces_the_key_keeping_the_addresses() {
    let c = Cluster::new();
    let out = c.dir.path().join("n");
    let ips = vec![IpAddr::from([10, 0, 0, 7]), IpAddr::from([127, 0, 0, 1])];
    let first = issue(&c.ca(), "n", &ips, &out, Validity::days(NODE_DAYS)).expect("issue");
    let key_before = read(&out.join("node.key")).expect("key");
    let err = issue(&c.ca(), "n", &ips, &out, Validity::days(NODE_DAYS)).expect_err("exists");
    assert!(err.to_string().contains("--renew"), "{err}");
    let err = renew(&c.ca(), "m", &[], &out, Validity::days(NODE_DAYS)).expect_err("wrong name");
    assert!(err.to_string().contains("not m"), "{err}");
    let renewed = renew(&c.ca(), "n", &[], &out, Validity::days(NODE_DAYS)).expect("renew");
    assert_eq!(renewed.ips, ips, "the old certificate's addresses");
    assert_ne!(renewed.sha256, first.sha256);
    assert_ne!(read(&out.join("node.key")).expect("key"), key_before);
    let kept = renewed.replaced.expect("kept");
    let kept_sha256 = {
        use sha2::Digest as _;
        revoke::hex(&sha2::Sha256::digest(read_cert(&kept).expect("old")))
    };
    assert_eq!(
        kept_sha256, first.sha256,
        "the replaced certificate is kept"
    );
    for f in ["node.key", "node.crt", "node.crt.old", "ca.crt"] {
        assert_eq!(mode(&out.join(f)), 0o600, "{f}");
    }
    assert!(load(&out).is_ok());
    // Another CA cannot renew it.
    let other = c.dir.path().join("other-ca");
    init_ca(&other, Validity::days(CA_DAYS)).expect("CA");
    let err = renew(&other, "n", &[], &out, Validity::days(NODE_DAYS)).expect_err("other CA");
    assert!(err.to_string().contains("another CA"), "{err}");
    // Nothing to renew.
    let err = renew(
        &c.ca(),
        "x",
        &[],
        &c.dir.path().join("none"),
        Validity::days(1),
    )
    .expect_err("nothing");
    assert!(err.to_string().contains("no node certificate"), "{err}");
}

#[test]
fn a_validity_that_ends_before_it_starts_is_refused() {
    let c = Cluster::new();
    let err = issue(
        &c.ca(),
        "n",
        &localhost(),
        &c.dir.path().join("n"),
        Validity {
            not_before: 100,
            not_after: 100,
        },
    )
    .expect_err("never valid");
    assert!(err.to_string().contains("never valid"), "{err}");
}
