//! Who may be a peer: the credential exchange that follows the hello, and
//! what a peer admitted only by a join credential may write.
//!
//! A node that runs with auth (or holds a join token) sends a hello of
//! version 2; when both hellos are version 2 the two sides exchange an
//! [`Offer`] (a fresh nonce, the ids of the cluster keys the sender holds,
//! and the payload of the join token it joins with, if any), then a
//! [`Proof`], then a [`Verdict`]. A proof is an HMAC-SHA256 over both
//! nonces and the sender's identity, keyed by
//! - a cluster key the other side named (`key`): the sender is a
//!   **member**, it holds the key that signs tokens; or
//! - the signature of a join token (`join`): the joiner proves it holds
//!   the token without sending it, and the node that admits it proves that
//!   it holds the cluster key that signed it.
//!
//! The judge ([`judge`]) gives the peer a [`Role`]: `Member` (it proved a
//! cluster key this node holds, or, for a joiner, it proved the key that
//! signed the joiner's token), `Joiner` (it proved a join token this node
//! issued, not expired nor revoked; or, over mutual TLS, its certificate
//! is its only credential), or a refusal with the reason. A node without
//! auth admits every peer as a member (see docs/auth.md, "Trust model").
//!
//! Everything here is a pure function of its inputs: keys, nonces, the
//! clock and the revocation list are passed in.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::auth::key_id;
use crate::wire::{BroadcastId, Frame};
use chorus_gossip::{merkle, plumtree};

type HmacSha256 = Hmac<Sha256>;

/// What every join token starts with.
pub const JOIN_TAG: &str = "chorusjoin1.";
/// Longest join token accepted.
pub const JOIN_TOKEN_MAX: usize = 1024;
/// Most key ids one offer may name.
const OFFER_KIDS_MAX: usize = 8;
/// The revocation list's entry for a join token: `join:JID`.
pub fn revocation_key(jid: &str) -> String {
    format!("join:{jid}")
}

/// The signed payload of a join token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinClaims {
    /// Format version: 1.
    pub v: u32,
    /// The token's id (16 hex digits): what `chorus cluster join-token
    /// revoke` names.
    pub jid: String,
    /// Expiry, unix milliseconds.
    pub exp: u64,
    /// The id of the cluster key that signed it.
    pub kid: String,
}

/// A join token: `chorusjoin1.<base64url(claims)>.<base64url(HMAC(key,
/// "chorusjoin1." + claims_b64))>`. The joiner holds the whole token; the
/// signature is the secret both sides then prove they know.
#[derive(Clone)]
pub struct JoinToken {
    payload: String,
    signature: Vec<u8>,
    claims: JoinClaims,
}

impl std::fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the signature: it is the secret.
        write!(f, "JoinToken({})", self.claims.jid)
    }
}

impl JoinToken {
    /// Makes a join token signed by `key`.
    pub fn issue(key: &[u8], jid: &str, exp_ms: u64) -> Result<String, String> {
        let claims = JoinClaims {
            v: 1,
            jid: jid.to_string(),
            exp: exp_ms,
            kid: key_id(key),
        };
        let payload = B64.encode(serde_json::to_vec(&claims).map_err(|e| e.to_string())?);
        let signature = sign(key, &payload)?;
        Ok(format!("{JOIN_TAG}{payload}.{}", B64.encode(signature)))
    }

    /// Reads a token's parts without checking its signature (a joiner
    /// cannot: it does not hold the key yet).
    pub fn parse(text: &str) -> Result<JoinToken, String> {
        let bad = || {
            "the join token is malformed: copy the whole line `chorus cluster join-token create` printed (it starts with chorusjoin1.)".to_string()
        };
        let text = text.trim();
        if text.len() > JOIN_TOKEN_MAX {
            return Err(bad());
        }
        let rest = text.strip_prefix(JOIN_TAG).ok_or_else(bad)?;
        let (payload, signature) = rest.split_once('.').ok_or_else(bad)?;
        let claims = decode_claims(payload).ok_or_else(bad)?;
        let signature = B64.decode(signature).map_err(|_| bad())?;
        if signature.len() != 32 {
            return Err(bad());
        }
        Ok(JoinToken {
            payload: payload.to_string(),
            signature,
            claims,
        })
    }

    /// The token's claims.
    pub fn claims(&self) -> &JoinClaims {
        &self.claims
    }
}

fn decode_claims(payload: &str) -> Option<JoinClaims> {
    let bytes = B64.decode(payload).ok()?;
    let claims: JoinClaims = serde_json::from_slice(&bytes).ok()?;
    (claims.v == 1).then_some(claims)
}

fn sign(key: &[u8], payload: &str) -> Result<Vec<u8>, String> {
    let mut m = HmacSha256::new_from_slice(key).map_err(|e| e.to_string())?;
    m.update(JOIN_TAG.as_bytes());
    m.update(payload.as_bytes());
    Ok(m.finalize().into_bytes().to_vec())
}

/// The first frame of the exchange.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offer {
    /// Fresh random bytes: the other side's proof covers them.
    pub nonce: [u8; 32],
    /// Ids of the cluster keys the sender holds.
    pub kids: Vec<String>,
    /// The claims part of the join token the sender joins with.
    pub join: Option<String>,
}

/// The second frame: MACs over the transcript (see [`transcript`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proof {
    /// Keyed by the cluster key with this id.
    pub key: Option<(String, [u8; 32])>,
    /// Keyed by the signature of the join token one side offered.
    pub join: Option<[u8; 32]>,
}

/// The last frame: whether the sender admits the other side, and if not,
/// why (so a refused node can say so in its log).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Verdict {
    /// Admitted.
    Admitted,
    /// Refused, with the reason.
    Refused(String),
}

/// What a peer may do, decided once per connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Reads and writes everything a node replicates.
    Member,
    /// Receives everything, but writes nothing under a reserved prefix
    /// but its own member record: it has not shown the cluster key.
    Joiner,
}

impl Role {
    /// How logs and metrics name it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Member => "member",
            Role::Joiner => "joiner",
        }
    }
}

/// What one side says about itself, covered by its proof.
#[derive(Clone, Copy, Debug)]
pub struct Identity<'a> {
    /// Its node id.
    pub node_id: &'a [u8; 16],
    /// The address it listens on.
    pub listen: &'a str,
}

/// The bytes a side's proof covers: the other side's nonce first (so a
/// proof cannot be reflected back), then its own, then who it says it is.
fn transcript(their_nonce: &[u8; 32], my_nonce: &[u8; 32], me: Identity<'_>) -> Vec<u8> {
    let mut t = b"chorus peer proof v1\0".to_vec();
    t.extend_from_slice(their_nonce);
    t.extend_from_slice(my_nonce);
    t.extend_from_slice(me.node_id);
    t.extend_from_slice(&(me.listen.len() as u64).to_le_bytes());
    t.extend_from_slice(me.listen.as_bytes());
    t
}

fn mac(key: &[u8], bytes: &[u8]) -> Option<HmacSha256> {
    let mut m = HmacSha256::new_from_slice(key).ok()?;
    m.update(bytes);
    Some(m)
}

fn tag(key: &[u8], bytes: &[u8]) -> Option<[u8; 32]> {
    Some(mac(key, bytes)?.finalize().into_bytes().into())
}

fn verify(key: &[u8], bytes: &[u8], tag: &[u8; 32]) -> bool {
    mac(key, bytes).is_some_and(|m| m.verify_slice(tag).is_ok())
}

/// How a node judges its peers: the time, whether it runs with auth,
/// whether the peer showed a certificate from the cluster CA, and the
/// revocation list (whether an entry like `join:ID` is in it).
#[derive(Clone, Copy)]
pub struct Policy<'a> {
    /// Now, unix milliseconds.
    pub now_ms: u64,
    /// The node runs with auth: peers must show a credential.
    pub required: bool,
    /// The peer showed a certificate from the cluster CA.
    pub tls: bool,
    /// Whether a revocation-list entry is present.
    pub revoked: &'a dyn Fn(&str) -> bool,
}

/// What a node holds to prove itself and judge its peers.
#[derive(Clone, Debug, Default)]
pub struct Credentials {
    /// The cluster keys it holds.
    pub keys: Vec<Vec<u8>>,
    /// The join token it joins with.
    pub token: Option<JoinToken>,
}

impl Credentials {
    /// This side's offer with `nonce`.
    pub fn offer(&self, nonce: [u8; 32]) -> Offer {
        Offer {
            nonce,
            kids: self
                .keys
                .iter()
                .take(OFFER_KIDS_MAX)
                .map(|k| key_id(k))
                .collect(),
            join: self.token.as_ref().map(|t| t.payload.clone()),
        }
    }

    fn key(&self, kid: &str) -> Option<&[u8]> {
        self.keys
            .iter()
            .find(|k| key_id(k) == kid)
            .map(Vec::as_slice)
    }

    /// This side's proof, given both offers: keyed by a cluster key the
    /// other side named (or this side's first, for a joiner to ignore),
    /// and by the join token either side offered, when this side can sign
    /// with it.
    pub fn prove(&self, mine: &Offer, theirs: &Offer, me: Identity<'_>) -> Proof {
        let t = transcript(&theirs.nonce, &mine.nonce, me);
        let key = theirs
            .kids
            .iter()
            .find_map(|kid| self.key(kid).map(|k| (kid.clone(), k)))
            .or_else(|| self.keys.first().map(|k| (key_id(k), k.as_slice())))
            .and_then(|(kid, k)| tag(k, &t).map(|m| (kid, m)));
        let join = self
            .join_secret(theirs)
            .or_else(|| self.token.as_ref().map(|t| t.signature.clone()))
            .and_then(|secret| tag(&secret, &t));
        Proof { key, join }
    }

    /// The signature of the join token `theirs` offers, when this side
    /// holds the key that signed it.
    fn join_secret(&self, theirs: &Offer) -> Option<Vec<u8>> {
        let payload = theirs.join.as_deref()?;
        let claims = decode_claims(payload)?;
        sign(self.key(&claims.kid)?, payload).ok()
    }

    /// The peer's role under `policy`, or why it is refused.
    pub fn judge(
        &self,
        mine: &Offer,
        theirs: &Offer,
        them: Identity<'_>,
        proof: &Proof,
        policy: Policy<'_>,
    ) -> Result<Role, String> {
        let Policy {
            now_ms,
            required,
            tls,
            revoked,
        } = policy;
        let t = transcript(&mine.nonce, &theirs.nonce, them);
        // A member: it proved a cluster key this node holds.
        if let Some((kid, m)) = &proof.key
            && self.key(kid).is_some_and(|k| verify(k, &t, m))
        {
            return Ok(Role::Member);
        }
        // The node this one joins through: it proved the key that signed
        // this node's join token.
        if let (Some(token), Some(m)) = (&self.token, &proof.join)
            && verify(&token.signature, &t, m)
        {
            return Ok(Role::Member);
        }
        let mut why = None;
        // A joiner: it proved a join token this node can check.
        if let Some(payload) = theirs.join.as_deref() {
            match (decode_claims(payload), self.join_secret(theirs)) {
                (None, _) => why = Some("its join token is malformed".to_string()),
                (Some(c), None) => {
                    why = Some(format!(
                        "its join token {} was signed by key {}, which this node does not hold",
                        c.jid, c.kid
                    ));
                }
                (Some(c), Some(secret)) => {
                    if !proof.join.as_ref().is_some_and(|m| verify(&secret, &t, m)) {
                        why = Some(format!("it did not prove it holds join token {}", c.jid));
                    } else if now_ms >= c.exp {
                        why = Some(format!(
                            "its join token {} expired at unix ms {}: make a new one with `chorus cluster join-token create`",
                            c.jid, c.exp
                        ));
                    } else if revoked(&revocation_key(&c.jid)) {
                        why = Some(format!("its join token {} was revoked", c.jid));
                    } else {
                        return Ok(Role::Joiner);
                    }
                }
            }
        }
        if !required {
            // Without auth every peer is trusted (docs/auth.md).
            return Ok(Role::Member);
        }
        if tls && self.keys.is_empty() {
            // This node is joining (it holds no key yet): a peer with a
            // certificate from the cluster CA is the cluster.
            return Ok(Role::Member);
        }
        if tls && why.is_none() {
            // Its certificate, checked by the TLS handshake, admits it.
            return Ok(Role::Joiner);
        }
        Err(why.unwrap_or_else(|| match &proof.key {
            Some((kid, _)) if self.key(kid).is_some() => {
                "its proof of the cluster key is wrong".to_string()
            }
            Some((kid, _)) => format!(
                "it proved cluster key {kid}, which this node does not hold (another cluster?): a node joining a cluster with auth needs a join token (`chorus cluster join-token create` on a member) and an empty directory"
            ),
            None => "it showed no credential: start it with a join token (CHORUS_JOIN_TOKEN or --join-token-file, made by `chorus cluster join-token create`) or with the cluster's data".to_string(),
        }))
    }
}

/// Whether a joiner may write this object: only its own member record
/// (the key it listens at, naming its node id) under a reserved prefix.
fn joiner_may_write(full_prefix: &str, key: &[u8], object: &[u8], them: Identity<'_>) -> bool {
    if !full_prefix.starts_with('$') {
        return true;
    }
    if full_prefix != crate::members::MEMBERS || key != them.listen.as_bytes() {
        return false;
    }
    let Ok(object) = chorus_core::object::Object::decode(object) else {
        return false;
    };
    let node = chorus_core::NodeId::from_bytes(*them.node_id).to_string();
    object.values().iter().all(|v| {
        v.bytes()
            .is_none_or(|b| crate::members::decode(b).is_some_and(|m| m.node == node))
    })
}

/// Strips from a frame of a joiner what it may not write: a broadcast of
/// a reserved object (the whole frame: `false`), and the reserved objects
/// of an anti-entropy step. Returns whether anything is left to handle,
/// and counts what was dropped in `dropped`.
pub fn restrict(frame: &mut Frame, them: Identity<'_>, dropped: &mut u64) -> bool {
    match frame {
        Frame::Membership(_) => true,
        Frame::Broadcast(plumtree::Message::Gossip { id, payload, .. }) => {
            let BroadcastId {
                full_prefix, key, ..
            } = id;
            if joiner_may_write(full_prefix, key, payload, them) {
                true
            } else {
                *dropped += 1;
                false
            }
        }
        Frame::Broadcast(_) => true,
        Frame::Exchange { message, .. } => {
            if let merkle::Message::Step(step) = message {
                for full in &mut step.full {
                    if !full.prefix.starts_with(b"$") {
                        continue;
                    }
                    let fp = format!(
                        "{}/{}",
                        String::from_utf8_lossy(&full.prefix),
                        String::from_utf8_lossy(&full.sub)
                    );
                    let before = full.objects.len();
                    full.objects
                        .retain(|(key, object)| joiner_may_write(&fp, key, object, them));
                    *dropped += (before - full.objects.len()) as u64;
                }
            }
            true
        }
        // A channel's frame is restricted as the cluster's: a joiner could
        // wrap reserved objects in one.
        Frame::Channel { frame, .. } => restrict(frame, them, dropped),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: [u8; 16] = [1; 16];
    const THEM: [u8; 16] = [2; 16];
    const JID: &str = "00112233aabbccdd";

    fn id(node_id: &'static [u8; 16], listen: &'static str) -> Identity<'static> {
        Identity { node_id, listen }
    }

    fn never(_: &str) -> bool {
        false
    }

    fn policy(now_ms: u64, required: bool, tls: bool) -> Policy<'static> {
        Policy {
            now_ms,
            required,
            tls,
            revoked: &never,
        }
    }

    fn key(n: u8) -> Vec<u8> {
        vec![n; 32]
    }

    /// Credentials holding key `k` (if any) and the join token `token`.
    fn holding(k: Option<u8>, token: Option<&str>) -> Credentials {
        Credentials {
            keys: k.map(key).into_iter().collect(),
            token: token.map(|t| JoinToken::parse(t).expect("parse")),
        }
    }

    struct Side {
        creds: Credentials,
        who: Identity<'static>,
        offer: Offer,
    }

    impl Side {
        /// This side's proof to `other`.
        fn prove(&self, other: &Side) -> Proof {
            self.creds.prove(&self.offer, &other.offer, self.who)
        }

        /// This side's view of `other`, which sent `proof`.
        fn judge(&self, other: &Side, proof: &Proof, p: Policy<'_>) -> Result<Role, String> {
            self.creds
                .judge(&self.offer, &other.offer, other.who, proof, p)
        }
    }

    /// This node (ME on port 1, nonce 1).
    fn me(creds: Credentials) -> Side {
        let offer = creds.offer([1; 32]);
        Side {
            creds,
            who: id(&ME, "127.0.0.1:1"),
            offer,
        }
    }

    /// The peer (THEM on port 2, nonce 2).
    fn them(creds: Credentials) -> Side {
        let offer = creds.offer([2; 32]);
        Side {
            creds,
            who: id(&THEM, "127.0.0.1:2"),
            offer,
        }
    }

    /// Runs the exchange both ways: (a's view of b, b's view of a).
    fn exchange(a: &Side, b: &Side, p: Policy<'_>) -> (Result<Role, String>, Result<Role, String>) {
        (a.judge(b, &b.prove(a), p), b.judge(a, &a.prove(b), p))
    }

    #[test]
    fn two_holders_of_the_key_are_members() {
        let (a, b) = (me(holding(Some(7), None)), them(holding(Some(7), None)));
        assert_eq!(
            exchange(&a, &b, policy(0, true, false)),
            (Ok(Role::Member), Ok(Role::Member))
        );
    }

    #[test]
    fn a_peer_without_credentials_is_refused_with_auth_and_admitted_without() {
        let (member, rogue) = (me(holding(Some(7), None)), them(Credentials::default()));
        let (of_rogue, _) = exchange(&member, &rogue, policy(0, true, false));
        assert!(of_rogue.expect_err("refused").contains("no credential"));
        let (of_rogue, _) = exchange(&member, &rogue, policy(0, false, false));
        assert_eq!(of_rogue, Ok(Role::Member));
    }

    #[test]
    fn a_rogue_with_its_own_key_is_refused() {
        let (member, rogue) = (me(holding(Some(7), None)), them(holding(Some(9), None)));
        let (of_rogue, of_member) = exchange(&member, &rogue, policy(0, true, false));
        assert!(
            of_rogue
                .expect_err("refused")
                .contains("does not hold (another cluster?)")
        );
        assert!(of_member.is_err(), "{of_member:?}");
    }

    #[test]
    fn a_join_token_admits_a_joiner_and_proves_the_member_to_it() {
        let token = JoinToken::issue(&key(7), JID, 1_000).expect("token");
        let (member, joiner) = (
            me(holding(Some(7), None)),
            them(holding(None, Some(&token))),
        );
        let (of_joiner, of_member) = exchange(&member, &joiner, policy(999, true, false));
        assert_eq!(of_joiner, Ok(Role::Joiner));
        assert_eq!(of_member, Ok(Role::Member));
        // Expired.
        let (of_joiner, _) = exchange(&member, &joiner, policy(1_000, true, false));
        assert!(of_joiner.expect_err("expired").contains("expired"));
        // Revoked.
        let revoked = |k: &str| k == "join:00112233aabbccdd";
        let p = Policy {
            revoked: &revoked,
            ..policy(0, true, false)
        };
        let verdict = member.judge(&joiner, &joiner.prove(&member), p);
        assert!(verdict.expect_err("revoked").contains("revoked"));
    }

    #[test]
    fn a_forged_join_token_is_refused_and_a_stolen_proof_does_not_replay() {
        let forged = JoinToken::issue(&key(9), JID, 1_000).expect("token");
        let member = me(holding(Some(7), None));
        let joiner = them(holding(None, Some(&forged)));
        let (of_joiner, _) = exchange(&member, &joiner, policy(0, true, false));
        assert!(of_joiner.is_err());
        // A proof made for one pair of nonces fails for another.
        let good = them(holding(Some(7), None));
        let proof = good.prove(&member);
        let fresh = member.creds.offer([5; 32]);
        let replayed = member.creds.judge(
            &fresh,
            &good.offer,
            good.who,
            &proof,
            policy(0, true, false),
        );
        assert!(replayed.is_err());
        // Nor for another identity.
        let moved = Side {
            who: id(&THEM, "127.0.0.1:3"),
            ..them(holding(Some(7), None))
        };
        assert!(
            member
                .judge(&moved, &proof, policy(0, true, false))
                .is_err()
        );
    }

    #[test]
    fn a_certificate_admits_a_joiner_over_tls() {
        let (member, nobody) = (me(holding(Some(7), None)), them(Credentials::default()));
        let role = member.judge(&nobody, &nobody.prove(&member), policy(0, true, true));
        assert_eq!(role, Ok(Role::Joiner));
        // The joining side, with no key yet, takes the member for the
        // cluster; without TLS it could not.
        let proof = member.prove(&nobody);
        assert_eq!(
            nobody.judge(&member, &proof, policy(0, true, true)),
            Ok(Role::Member)
        );
        assert!(
            nobody
                .judge(&member, &proof, policy(0, true, false))
                .is_err()
        );
    }

    #[test]
    fn malformed_join_tokens_are_refused_with_what_to_do() {
        for bad in [
            "",
            "chorus1.x.y",
            "chorusjoin1.",
            "chorusjoin1.e30.AAAA",
            &"x".repeat(2000),
        ] {
            let e = JoinToken::parse(bad).expect_err(bad);
            assert!(e.contains("chorus cluster join-token create"), "{e}");
        }
    }

    #[test]
    fn a_joiner_writes_nothing_reserved_but_its_own_member_record() {
        use chorus_core::object::Object;
        let them = id(&THEM, "127.0.0.1:2");
        let record = |node: &str| {
            let bytes = serde_json::to_vec(&serde_json::json!({"node": node, "state": "up"}))
                .expect("json");
            let who = chorus_core::NodeId::from_bytes(THEM);
            let value = chorus_core::object::Value::data(&bytes, chorus_core::object::Hlc(1), who);
            Object::modify(None, &Object::empty_context(), value, who).encode()
        };
        let theirs = chorus_core::NodeId::from_bytes(THEM).to_string();
        let mine = chorus_core::NodeId::from_bytes(ME).to_string();
        let members = crate::members::MEMBERS;
        assert!(joiner_may_write("app/x", b"k", b"", them));
        assert!(!joiner_may_write("$auth/keys", b"cluster", b"", them));
        assert!(!joiner_may_write("$reducers/x", b"k", b"", them));
        assert!(joiner_may_write(
            members,
            b"127.0.0.1:2",
            &record(&theirs),
            them
        ));
        assert!(!joiner_may_write(
            members,
            b"127.0.0.1:2",
            &record(&mine),
            them
        ));
        assert!(!joiner_may_write(
            members,
            b"127.0.0.1:1",
            &record(&theirs),
            them
        ));
        let mut dropped = 0;
        let mut frame = Frame::Broadcast(plumtree::Message::Gossip {
            id: BroadcastId {
                full_prefix: "$auth/keys".into(),
                key: b"cluster".to_vec(),
                context: String::new(),
            },
            round: 0,
            payload: Vec::new(),
        });
        assert!(!restrict(&mut frame, them, &mut dropped));
        assert_eq!(dropped, 1);
    }
}
