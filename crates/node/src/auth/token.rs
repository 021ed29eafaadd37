//! Tokens, scopes and errors: pure functions of their inputs. Nothing here
//! reads a clock, a file or a random number; the caller passes `now_ms`
//! and the cluster's keys.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use chorus_core::FullPrefix;
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What every token starts with (the format's name and version).
pub const TOKEN_TAG: &str = "chorus1.";
/// Longest token accepted; anything longer is invalid before any work.
pub const TOKEN_MAX_BYTES: usize = 8192;
/// Most patterns one token's scope may hold.
pub const PATTERNS_MAX: usize = 64;
/// Length of a cluster key, in bytes.
pub const KEY_BYTES: usize = 32;

type HmacSha256 = Hmac<Sha256>;

/// What a token lets its holder do inside its scope.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TokenAccess {
    /// Reads only.
    #[serde(rename = "read")]
    Read,
    /// Reads and writes.
    #[serde(rename = "read-write")]
    ReadWrite,
}

impl TokenAccess {
    /// `read` or `read-write`, as in the token and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenAccess::Read => "read",
            TokenAccess::ReadWrite => "read-write",
        }
    }

    /// Parses `read` or `read-write`.
    pub fn parse(text: &str) -> Result<TokenAccess, AuthError> {
        match text {
            "read" => Ok(TokenAccess::Read),
            "read-write" => Ok(TokenAccess::ReadWrite),
            other => Err(AuthError::new(
                AuthErrorKind::BadInput,
                format!("access {other:?}: give \"read\" or \"read-write\""),
            )),
        }
    }
}

/// The signed payload of a token (see docs/auth.md).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Claims {
    /// Format version: 1.
    pub v: u32,
    /// The token's id (16 hex digits); a session token's is its session id.
    pub tid: String,
    /// The session it derives from.
    pub sid: String,
    /// The user.
    pub sub: String,
    /// Patterns over full prefixes (`*`, `app/*`, `docs/users`).
    pub scope: Vec<String>,
    /// `read` or `read-write`.
    pub access: TokenAccess,
    /// Expiry, unix ms (the token is refused from then on).
    pub exp: u64,
    /// Issue time, unix ms.
    pub iat: u64,
    /// The session's creation time, unix ms: checked against the user's
    /// `revoke_before` without reading the session record.
    pub sat: u64,
    /// Id of the key that signed it ([`key_id`]).
    pub kid: String,
}

impl Claims {
    /// True for a session token (its token id is its session id).
    pub fn is_session(&self) -> bool {
        self.tid == self.sid
    }
}

/// Which kind of failure; it decides the HTTP status and the exit code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthErrorKind {
    /// No token was sent (401).
    Missing,
    /// The token is forged, garbled or signed by another cluster (401).
    Invalid,
    /// The token has expired (401).
    Expired,
    /// The token, its session or its user's sessions were revoked (401).
    Revoked,
    /// Wrong user name or master secret (401).
    BadCredentials,
    /// The token does not allow this (403).
    Forbidden,
    /// The request itself is wrong (400).
    BadInput,
    /// No such user, session or token (404).
    NotFound,
    /// The user already exists (409).
    Exists,
    /// Authentication is off on this node (404 for its routes).
    Disabled,
    /// Too many requests at once, or the writer lock timed out (503).
    Busy,
    /// The store failed (500).
    Storage,
}

impl AuthErrorKind {
    /// The HTTP status for this kind.
    pub fn status(self) -> u16 {
        match self {
            AuthErrorKind::Missing
            | AuthErrorKind::Invalid
            | AuthErrorKind::Expired
            | AuthErrorKind::Revoked
            | AuthErrorKind::BadCredentials => 401,
            AuthErrorKind::Forbidden => 403,
            AuthErrorKind::BadInput => 400,
            AuthErrorKind::NotFound | AuthErrorKind::Disabled => 404,
            AuthErrorKind::Exists => 409,
            AuthErrorKind::Busy => 503,
            AuthErrorKind::Storage => 500,
        }
    }

    /// The stable error code of the HTTP API.
    pub fn code(self) -> &'static str {
        match self.status() {
            401 => "unauthorized",
            403 => "forbidden",
            400 => "bad_request",
            404 => "not_found",
            409 => "conflict",
            503 => "busy",
            _ => "storage",
        }
    }
}

/// A refusal or a failure, with a message for people. Messages name token
/// and session ids, never a secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthError {
    /// What kind of failure.
    pub kind: AuthErrorKind,
    /// What happened and what to do.
    pub message: String,
}

impl AuthError {
    /// An error of `kind`.
    pub fn new(kind: AuthErrorKind, message: impl Into<String>) -> AuthError {
        AuthError {
            kind,
            message: message.into(),
        }
    }

    /// No token was sent.
    pub fn missing() -> AuthError {
        AuthError::new(
            AuthErrorKind::Missing,
            "this node requires a token: send Authorization: Bearer TOKEN (see docs/auth.md)",
        )
    }

    /// The one message for every forged or garbled token: it does not say
    /// which part failed.
    pub fn invalid() -> AuthError {
        AuthError::new(
            AuthErrorKind::Invalid,
            "the token is invalid: it was altered, truncated or not issued by this cluster; create a new one (see docs/auth.md)",
        )
    }
}

impl std::fmt::Display for AuthError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for AuthError {}

impl From<chorus_store::Error> for AuthError {
    fn from(e: chorus_store::Error) -> Self {
        use chorus_store::Error as E;
        let kind = match &e {
            E::InvalidInput(_) | E::NetworkFilesystem { .. } => AuthErrorKind::BadInput,
            E::NotInitialized { .. } | E::NotFound(_) => AuthErrorKind::NotFound,
            E::LockTimeout { .. } => AuthErrorKind::Busy,
            _ => AuthErrorKind::Storage,
        };
        AuthError::new(kind, e.to_string())
    }
}

/// A key's id: the first 8 hex digits of its SHA-256 (not secret).
pub fn key_id(key: &[u8]) -> String {
    hex(&Sha256::digest(key)[..4])
}

/// Lower-case hex of bytes.
pub(super) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn mac(key: &[u8], signed: &[u8]) -> Result<HmacSha256, AuthError> {
    let mut m = HmacSha256::new_from_slice(key)
        .map_err(|_| AuthError::new(AuthErrorKind::Storage, "the cluster key is unusable"))?;
    m.update(signed);
    Ok(m)
}

/// `chorus1.<base64url(payload)>.<base64url(HMAC-SHA256(key, "chorus1." + payload))>`.
pub fn encode_token(claims: &Claims, key: &[u8]) -> Result<String, AuthError> {
    let payload = serde_json::to_vec(claims)
        .map_err(|e| AuthError::new(AuthErrorKind::Storage, format!("cannot encode: {e}")))?;
    let signed = format!("{TOKEN_TAG}{}", B64.encode(payload));
    let tag = mac(key, signed.as_bytes())?.finalize().into_bytes();
    Ok(format!("{signed}.{}", B64.encode(tag)))
}

/// Checks a token's signature against every key (in constant time per
/// key) and its expiry. Every failure but expiry is [`AuthError::invalid`].
/// Revocation is checked apart ([`check_revocation`]).
pub fn verify_token(token: &str, keys: &[Vec<u8>], now_ms: u64) -> Result<Claims, AuthError> {
    if token.len() > TOKEN_MAX_BYTES || !token.starts_with(TOKEN_TAG) {
        return Err(AuthError::invalid());
    }
    let (signed, tag_b64) = token.rsplit_once('.').ok_or_else(AuthError::invalid)?;
    let tag = B64.decode(tag_b64).map_err(|_| AuthError::invalid())?;
    let mut signer = None;
    for key in keys {
        if mac(key, signed.as_bytes())?.verify_slice(&tag).is_ok() {
            signer = Some(key);
            break;
        }
    }
    let key = signer.ok_or_else(AuthError::invalid)?;
    let payload_b64 = signed
        .strip_prefix(TOKEN_TAG)
        .ok_or_else(AuthError::invalid)?;
    let payload = B64.decode(payload_b64).map_err(|_| AuthError::invalid())?;
    let claims: Claims = serde_json::from_slice(&payload).map_err(|_| AuthError::invalid())?;
    if claims.v != 1 || claims.kid != key_id(key) {
        return Err(AuthError::invalid());
    }
    if now_ms >= claims.exp {
        return Err(AuthError::new(
            AuthErrorKind::Expired,
            format!(
                "token {} expired at {} (unix ms {}): create a new one",
                claims.tid,
                utc(claims.exp),
                claims.exp
            ),
        ));
    }
    Ok(claims)
}

/// What the replicated revocation list says about one token.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Revocations {
    /// `token:ID` is listed.
    pub token: bool,
    /// `session:ID` is listed.
    pub session: bool,
    /// The user's `revoke_before` (unix ms), if the user record is here.
    pub user_revoke_before: Option<u64>,
}

/// Refuses a revoked token: by its id, by its session, or because its
/// user's master secret changed (or the user was deleted) at or after the
/// session was created.
pub fn check_revocation(claims: &Claims, r: &Revocations) -> Result<(), AuthError> {
    let revoked = |m: String| Err(AuthError::new(AuthErrorKind::Revoked, m));
    if r.session {
        return revoked(format!(
            "token {}: session {} was revoked; create a new session",
            claims.tid, claims.sid
        ));
    }
    if r.token {
        return revoked(format!(
            "token {} was revoked; create a new token",
            claims.tid
        ));
    }
    if let Some(before) = r.user_revoke_before.filter(|b| *b >= claims.sat) {
        return revoked(format!(
            "token {}: session {} was revoked when user {:?}'s master secret changed or the user was deleted ({}); create a new session",
            claims.tid,
            claims.sid,
            claims.sub,
            utc(before)
        ));
    }
    Ok(())
}

/// The expiry of a token derived now from a session: never later than the
/// session's.
pub fn token_expiry(now_ms: u64, ttl_ms: u64, session_exp_ms: u64) -> u64 {
    now_ms.saturating_add(ttl_ms).min(session_exp_ms)
}

/// Checks one scope pattern: `*` (everything not reserved), or
/// `PREFIX/SUBPREFIX` where each part is a glob (`*` any run of
/// characters, `?` one character) that does not start with `$`.
pub fn validate_pattern(pattern: &str) -> Result<(), AuthError> {
    let bad = |why: &str| {
        Err(AuthError::new(
            AuthErrorKind::BadInput,
            format!(
                "scope pattern {pattern:?} {why}: give `*` or PREFIX/SUBPREFIX globs like `app/*` or `docs/users`"
            ),
        ))
    };
    if pattern == "*" {
        return Ok(());
    }
    let Some((p, s)) = pattern.split_once('/') else {
        return bad("has no '/'");
    };
    for part in [p, s] {
        if part.is_empty() {
            return bad("has an empty part");
        }
        if part.len() > chorus_core::MAX_NAME_BYTES {
            return bad("has a part longer than 255 bytes");
        }
        if part.contains('/') || part.chars().any(char::is_control) {
            return bad("has a second '/' or a control character");
        }
        if part.starts_with('$') {
            return bad("names a reserved ('$') prefix, which no token reaches");
        }
    }
    Ok(())
}

/// Checks a whole scope: 1 to [`PATTERNS_MAX`] valid patterns.
pub fn validate_scope(scope: &[String]) -> Result<(), AuthError> {
    if scope.is_empty() || scope.len() > PATTERNS_MAX {
        return Err(AuthError::new(
            AuthErrorKind::BadInput,
            format!(
                "a scope holds 1 to {PATTERNS_MAX} patterns, not {}: give e.g. --scope 'app/*'",
                scope.len()
            ),
        ));
    }
    scope.iter().try_for_each(|p| validate_pattern(p))
}

/// True when `pattern` covers the full prefix `fp`. Reserved full
/// prefixes are covered by no pattern.
pub fn pattern_matches(pattern: &str, fp: &FullPrefix) -> bool {
    if fp.is_reserved() {
        return false;
    }
    if pattern == "*" {
        return true;
    }
    match pattern.split_once('/') {
        Some((p, s)) => glob(p, fp.prefix()) && glob(s, fp.subprefix()),
        None => false,
    }
}

/// True when some pattern of `scope` covers `fp`.
pub fn scope_allows(scope: &[String], fp: &FullPrefix) -> bool {
    scope.iter().any(|p| pattern_matches(p, fp))
}

/// True when `scope` covers every subprefix of `prefix` (a pattern `*`,
/// or one whose prefix glob matches and whose subprefix part is `*`).
pub fn scope_covers_prefix(scope: &[String], prefix: &str) -> bool {
    if prefix.starts_with('$') {
        return false;
    }
    scope.iter().any(|pattern| {
        pattern == "*"
            || pattern
                .split_once('/')
                .is_some_and(|(p, s)| s == "*" && glob(p, prefix))
    })
}

/// True when `scope` holds the pattern `*` (everything not reserved).
pub fn scope_is_all(scope: &[String]) -> bool {
    scope.iter().any(|p| p == "*" || p == "*/*")
}

/// What a request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Reading.
    Read,
    /// Writing (or anything that may write).
    Write,
}

/// What a request reaches.
#[derive(Clone, Copy, Debug)]
pub enum Target<'a> {
    /// One full prefix.
    FullPrefix(&'a FullPrefix),
    /// Every subprefix of a prefix (a prefix hash, a watch on a prefix).
    Prefix(&'a str),
    /// The whole node (cluster view and membership, watching everything).
    All,
}

impl std::fmt::Display for Target<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::FullPrefix(fp) => write!(f, "{fp}"),
            Target::Prefix(p) => write!(f, "{p}/*"),
            Target::All => f.write_str("the whole node"),
        }
    }
}

/// Whether verified `claims` allow `access` to `target`: the scope must
/// cover it (the whole node needs the pattern `*`), a write needs a
/// read-write token, and no token reaches a reserved (`$`) name.
pub fn authorize(claims: &Claims, target: Target<'_>, access: Access) -> Result<(), AuthError> {
    let forbidden = |m: String| Err(AuthError::new(AuthErrorKind::Forbidden, m));
    let scope = claims.scope.join(", ");
    let reserved = match target {
        Target::FullPrefix(fp) => fp.is_reserved(),
        Target::Prefix(p) => p.starts_with('$'),
        Target::All => false,
    };
    if reserved {
        return forbidden(format!(
            "token {} cannot reach {target}: names starting with '$' belong to Chorus itself",
            claims.tid
        ));
    }
    let covered = match target {
        Target::FullPrefix(fp) => scope_allows(&claims.scope, fp),
        Target::Prefix(p) => scope_covers_prefix(&claims.scope, p),
        Target::All => scope_is_all(&claims.scope),
    };
    if !covered {
        let want = match target {
            Target::All => "a token with scope *".to_string(),
            _ => format!("a token whose scope covers {target}"),
        };
        return forbidden(format!(
            "token {} (scope {scope}) does not cover {target}: use {want}",
            claims.tid
        ));
    }
    if access == Access::Write && claims.access == TokenAccess::Read {
        return forbidden(format!(
            "token {} is read-only: writing to {target} needs a read-write token",
            claims.tid
        ));
    }
    Ok(())
}

/// Glob matching: `*` matches any run of characters (empty included), `?`
/// exactly one, anything else itself. Linear in practice: on a mismatch
/// only the last `*` is retried.
pub fn glob(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some((pi, ti));
                pi += 1;
            }
            Some(c) if *c == '?' || *c == t[ti] => {
                pi += 1;
                ti += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    pi = sp + 1;
                    ti = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// A user name: 1 to 64 characters from `[A-Za-z0-9._-]`.
pub fn validate_user(name: &str) -> Result<(), AuthError> {
    let ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(AuthError::new(
            AuthErrorKind::BadInput,
            format!("user name {name:?}: use 1 to 64 characters from A-Z a-z 0-9 . _ -"),
        ))
    }
}

/// An id (session or token): 16 lower-case hex digits.
pub fn validate_id(id: &str) -> Result<(), AuthError> {
    if id.len() == 16 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        Ok(())
    } else {
        Err(AuthError::new(
            AuthErrorKind::BadInput,
            format!("{id:?} is not an id: ids are 16 hex digits, as `chorus session list` shows"),
        ))
    }
}

/// Unix milliseconds as `YYYY-MM-DDTHH:MM:SSZ` (UTC).
pub fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// The Gregorian date `days` after 1970-01-01: counted in 400-year eras
/// of 146,097 days, each year starting on March 1st so that the leap day
/// falls at the end.
fn civil(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468; // days from 0000-03-01
    let era = z / 146_097;
    let doe = z % 146_097; // day of the era
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // year of the era
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // day of the year, from March
    let mp = (5 * doy + 2) / 153; // month from March, 0..12
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 32] = [7; 32];

    fn claims(exp: u64) -> Claims {
        Claims {
            v: 1,
            tid: "00112233aabbccdd".into(),
            sid: "ffeeddcc00112233".into(),
            sub: "alice".into(),
            scope: vec!["app/*".into()],
            access: TokenAccess::Read,
            exp,
            iat: 1_000,
            sat: 900,
            kid: key_id(&KEY),
        }
    }

    fn fp(s: &str) -> FullPrefix {
        FullPrefix::parse(s).expect("full prefix")
    }

    #[test]
    fn a_token_round_trips_and_names_its_key() {
        let c = claims(5_000);
        let token = encode_token(&c, &KEY).expect("encode");
        assert!(token.starts_with("chorus1."));
        assert_eq!(token.matches('.').count(), 2);
        assert_eq!(verify_token(&token, &[KEY.to_vec()], 4_999), Ok(c.clone()));
        // Any of several keys (siblings) verifies; the order does not matter.
        let keys = [vec![1; 32], KEY.to_vec()];
        assert_eq!(verify_token(&token, &keys, 1_000), Ok(c));
    }

    #[test]
    fn a_token_expires_at_its_exp() {
        let token = encode_token(&claims(5_000), &KEY).expect("encode");
        let e = verify_token(&token, &[KEY.to_vec()], 5_000).expect_err("expired");
        assert_eq!(e.kind, AuthErrorKind::Expired);
        assert!(e.message.contains("expired at 1970-01-01T00:00:05Z"), "{e}");
    }

    #[test]
    fn forged_garbled_or_foreign_tokens_are_one_error() {
        let c = claims(5_000);
        let token = encode_token(&c, &KEY).expect("encode");
        let keys = [KEY.to_vec()];
        let mut forged = vec![
            String::new(),
            "chorus1.".into(),
            token.replacen("chorus1.", "chorus2.", 1),
            token[..token.len() - 2].to_string(),
            format!("{token}x"),
            encode_token(&c, &[9; 32]).expect("encode"),
        ];
        // Flip one byte of the payload.
        let mut bytes = token.clone().into_bytes();
        bytes[12] = if bytes[12] == b'A' { b'B' } else { b'A' };
        forged.push(String::from_utf8(bytes).expect("ascii"));
        // A payload that widens the scope, signed with another key.
        let mut wide = c.clone();
        wide.scope = vec!["*".into()];
        let other = encode_token(&wide, &[9; 32]).expect("encode");
        let (_, sig) = token.rsplit_once('.').expect("sig");
        let (signed, _) = other.rsplit_once('.').expect("sig");
        forged.push(format!("{signed}.{sig}"));
        for f in forged {
            assert_eq!(
                verify_token(&f, &keys, 1_000),
                Err(AuthError::invalid()),
                "{f}"
            );
        }
        // No key at all: nothing verifies.
        assert_eq!(verify_token(&token, &[], 1_000), Err(AuthError::invalid()));
    }

    #[test]
    fn revocation_by_token_session_or_user() {
        let c = claims(5_000);
        assert_eq!(check_revocation(&c, &Revocations::default()), Ok(()));
        let by = |r: Revocations| check_revocation(&c, &r).expect_err("revoked");
        let e = by(Revocations {
            session: true,
            ..Revocations::default()
        });
        assert!(
            e.message.contains("session ffeeddcc00112233 was revoked"),
            "{e}"
        );
        let e = by(Revocations {
            token: true,
            ..Revocations::default()
        });
        assert!(
            e.message.contains("token 00112233aabbccdd was revoked"),
            "{e}"
        );
        assert_eq!(e.kind, AuthErrorKind::Revoked);
        // A secret changed at or after the session's creation revokes it;
        // one changed before does not.
        let user = |t: u64| Revocations {
            user_revoke_before: Some(t),
            ..Revocations::default()
        };
        assert_eq!(by(user(900)).kind, AuthErrorKind::Revoked);
        assert_eq!(by(user(2_000)).kind, AuthErrorKind::Revoked);
        assert_eq!(check_revocation(&c, &user(899)), Ok(()));
    }

    #[test]
    fn token_expiry_is_capped_by_the_session() {
        assert_eq!(token_expiry(1_000, 500, 10_000), 1_500);
        assert_eq!(token_expiry(1_000, 50_000, 10_000), 10_000);
        assert_eq!(token_expiry(1_000, u64::MAX, 10_000), 10_000);
    }

    #[test]
    fn scope_patterns_match_full_prefixes() {
        let all = vec!["*".to_string()];
        assert!(scope_allows(&all, &fp("app/cfg")));
        assert!(!scope_allows(&all, &fp("$auth/users")));
        assert!(!scope_allows(&all, &fp("app/$x")));
        let s = vec![
            "app/*".to_string(),
            "docs/users".to_string(),
            "t?/x*".into(),
        ];
        assert!(scope_allows(&s, &fp("app/cfg")));
        assert!(scope_allows(&s, &fp("docs/users")));
        assert!(!scope_allows(&s, &fp("docs/users2")));
        assert!(!scope_allows(&s, &fp("apps/cfg")));
        assert!(scope_allows(&s, &fp("t1/x")));
        assert!(scope_allows(&s, &fp("t1/xyz")));
        assert!(!scope_allows(&s, &fp("t12/x")));
        assert!(scope_covers_prefix(&s, "app"));
        assert!(!scope_covers_prefix(&s, "docs"));
        assert!(scope_covers_prefix(&all, "docs"));
        assert!(!scope_covers_prefix(&all, "$cluster"));
        assert!(scope_is_all(&all) && !scope_is_all(&s));
    }

    #[test]
    fn authorization_by_scope_and_access() {
        let mut c = claims(5_000);
        let cfg = fp("app/cfg");
        assert_eq!(
            authorize(&c, Target::FullPrefix(&cfg), Access::Read),
            Ok(())
        );
        let e = authorize(&c, Target::FullPrefix(&cfg), Access::Write).expect_err("read-only");
        assert_eq!(e.kind, AuthErrorKind::Forbidden);
        assert!(e.message.contains("read-only"), "{e}");
        let users = fp("docs/users");
        let e = authorize(&c, Target::FullPrefix(&users), Access::Read).expect_err("scope");
        assert!(
            e.message
                .contains("(scope app/*) does not cover docs/users"),
            "{e}"
        );
        assert!(authorize(&c, Target::Prefix("app"), Access::Read).is_ok());
        assert!(authorize(&c, Target::All, Access::Read).is_err());
        c.scope = vec!["*".into()];
        c.access = TokenAccess::ReadWrite;
        assert!(authorize(&c, Target::All, Access::Write).is_ok());
        assert!(authorize(&c, Target::FullPrefix(&users), Access::Write).is_ok());
        let e = authorize(&c, Target::FullPrefix(&fp("$auth/keys")), Access::Read)
            .expect_err("reserved");
        assert!(e.message.contains("belong to Chorus"), "{e}");
    }

    #[test]
    fn globs() {
        for (p, t, m) in [
            ("*", "", true),
            ("a*b", "ab", true),
            ("a*b", "axxb", true),
            ("a*b", "axxbc", false),
            ("a*b*c", "abxbxc", true),
            ("?", "é", true),
            ("??", "é", false),
            ("*x", "xxxx", true),
            ("abc", "abd", false),
            ("a**", "a", true),
        ] {
            assert_eq!(glob(p, t), m, "{p} {t}");
        }
    }

    #[test]
    fn bad_patterns_names_and_ids_are_refused() {
        for p in ["", "app", "a/b/c", "/x", "x/", "$auth/*", "app/$x", "a/\n"] {
            assert_eq!(
                validate_pattern(p).map_err(|e| e.kind),
                Err(AuthErrorKind::BadInput),
                "{p:?}"
            );
        }
        assert!(validate_scope(&[]).is_err());
        assert!(validate_scope(&["*".into(), "a/b".into()]).is_ok());
        for n in ["", "a b", "é", "a/b", &"x".repeat(65)] {
            assert!(validate_user(n).is_err(), "{n:?}");
        }
        for n in ["alice", "A.b_c-9", &"x".repeat(64)] {
            assert!(validate_user(n).is_ok(), "{n:?}");
        }
        assert!(validate_id("00112233aabbccdd").is_ok());
        assert!(validate_id("00112233AABBCCDD").is_err());
        assert!(validate_id("0011").is_err());
    }

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(utc(1_709_210_096_000), "2024-02-29T12:34:56Z");
        assert_eq!(utc(4_102_444_799_000), "2099-12-31T23:59:59Z");
    }
}
