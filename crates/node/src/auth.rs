//! Authentication: users with a master secret, sessions, tokens scoped to
//! full prefixes, a replicated revocation list and an audit log.
//! `docs/auth.md` is the reference for the model and the formats.
//!
//! Everything lives in the store under `$auth` and replicates like any
//! data, so every node can check every token:
//! - `$auth/users` NAME: `{name, hash, revoke_before, deleted}`;
//! - `$auth/sessions` ID: `{id, user, description, created_ms, expires_ms}`;
//! - `$auth/tokens` ID: `{id, session, user, scope, access, created_ms,
//!   expires_ms}` (for listing and ownership, never read to verify);
//! - `$auth/revoked` `session:ID` or `token:ID`: `{at_ms, reason}`;
//! - `$auth/keys` `hmac`: the cluster key (32 random bytes; every sibling
//!   is accepted, the last-writer-wins one signs).
//!
//! Verifying a token reads no session: its signature, its expiry, two
//! entries of the revocation list and its user's `revoke_before`. The
//! pure parts (token format, scopes, revocation rules) are in
//! `auth/token.rs`; this file adds the store, the clock and randomness.

mod audit;
mod token;

use std::sync::{Arc, OnceLock};

use argon2::{Argon2, PasswordHasher, PasswordVerifier};
use chorus_core::FullPrefix;
use chorus_core::object::{Context, Object, Value};
use chorus_store::{IterOptions, Metadata, PutOptions, PutValue, Scope};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::json;

pub use audit::{
    AuditConfig, FIELD_MAX as AUDIT_FIELD_MAX, LINE_MAX as AUDIT_LINE_MAX,
    REFUSED_LINES_MAX as AUDIT_REFUSED_LINES_MAX, SOURCES_MAX as AUDIT_SOURCES_MAX,
};
pub(crate) use audit::{carry_source, in_source, with_source};
pub use token::{
    Access, AuthError, AuthErrorKind, Claims, KEY_BYTES, PATTERNS_MAX, Revocations,
    TOKEN_MAX_BYTES, TOKEN_TAG, Target, TokenAccess, authorize, check_revocation, encode_token,
    glob, key_id, pattern_matches, scope_allows, scope_covers_prefix, scope_is_all, token_expiry,
    utc, validate_id, validate_pattern, validate_scope, validate_user, verify_token,
};

/// The reserved prefix everything lives under.
pub const AUTH_PREFIX: &str = "$auth";
/// A session's lifetime when none is asked for: 8 hours.
pub const SESSION_TTL_DEFAULT_MS: u64 = 8 * 3600 * 1000;
/// A token's lifetime when none is asked for: 1 hour (and never beyond
/// its session).
pub const TOKEN_TTL_DEFAULT_MS: u64 = 3600 * 1000;
/// The longest lifetime of a session or a token: 30 days.
pub const TTL_MAX_MS: u64 = 30 * 24 * 3600 * 1000;
/// The shortest: 1 second.
pub const TTL_MIN_MS: u64 = 1000;
/// Bounds of a master secret, in bytes.
pub const SECRET_MIN_BYTES: usize = 8;
/// See [`SECRET_MIN_BYTES`].
pub const SECRET_MAX_BYTES: usize = 1024;
/// Longest session description, in characters.
pub const DESCRIPTION_MAX_CHARS: usize = 256;

const USERS: &str = "users";
const SESSIONS: &str = "sessions";
const TOKENS: &str = "tokens";
const REVOKED: &str = "revoked";
const KEYS: &str = "keys";
const KEY_NAME: &[u8] = b"hmac";

/// Who made a request: the token's id and user (both `None` when auth is
/// off, or for the local administrator).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Grant {
    /// The token's id.
    pub token_id: Option<String>,
    /// The token's user.
    pub user: Option<String>,
}

impl Grant {
    /// What the values written under this grant record: the token's id.
    pub fn meta(&self) -> chorus_core::object::Meta {
        chorus_core::object::Meta {
            token: self.token_id.clone(),
            ..chorus_core::object::Meta::default()
        }
    }

    fn of(claims: &Claims) -> Grant {
        Grant {
            token_id: Some(claims.tid.clone()),
            user: Some(claims.sub.clone()),
        }
    }
}

/// A user's record as stored (the hash never leaves this module).
#[derive(Clone, Debug, Serialize, Deserialize)]
struct UserRecord {
    name: String,
    hash: String,
    revoke_before: u64,
    #[serde(default)]
    deleted: bool,
}

/// A user as listed: no hash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct UserInfo {
    /// The name.
    pub name: String,
    /// Sessions created at or before this time (unix ms) are refused.
    pub revoke_before: u64,
    /// True once `chorus user del` ran (the name can be added again).
    pub deleted: bool,
}

/// A session's record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// Its id (16 hex digits; also its session token's id).
    pub id: String,
    /// Its user.
    pub user: String,
    /// What the user said it is for.
    pub description: String,
    /// Creation time, unix ms.
    pub created_ms: u64,
    /// Expiry, unix ms.
    pub expires_ms: u64,
}

/// A token's record (for listing and ownership only).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// Its id (16 hex digits).
    pub id: String,
    /// The session it derives from.
    pub session: String,
    /// Its user.
    pub user: String,
    /// Its scope patterns.
    pub scope: Vec<String>,
    /// `read` or `read-write`.
    pub access: TokenAccess,
    /// Creation time, unix ms.
    pub created_ms: u64,
    /// Expiry, unix ms.
    pub expires_ms: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct RevokedRecord {
    at_ms: u64,
    reason: String,
}

/// A session and whether it still works.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionInfo {
    /// The record.
    pub record: SessionRecord,
    /// `active`, `expired`, `revoked`, or `revoked-by-user` (the user's
    /// master secret changed, or the user was deleted, after it began).
    pub state: &'static str,
}

impl SessionInfo {
    /// As JSON (never a token): times in unix ms, and the expiry in UTC.
    pub fn to_json(&self) -> serde_json::Value {
        let r = &self.record;
        json!({
            "id": r.id, "user": r.user, "description": r.description,
            "created": r.created_ms, "expires": r.expires_ms,
            "expires_utc": utc(r.expires_ms), "state": self.state,
        })
    }
}

/// A new session, with its token (shown once: it is not stored).
pub struct NewSession {
    /// The record stored.
    pub record: SessionRecord,
    /// The session token: scope `*`, read-write, expiring with the session.
    pub token: String,
}

/// A new token (shown once: it is not stored).
pub struct NewToken {
    /// The record stored.
    pub record: TokenRecord,
    /// The token.
    pub token: String,
}

/// Longest life of a join token: 7 days.
pub const JOIN_TTL_MAX_MS: u64 = 7 * 24 * 3600 * 1000;

/// A join token just made: shown once.
#[derive(Debug, Clone)]
pub struct NewJoinToken {
    /// Its id, for `chorus cluster join-token revoke`.
    pub id: String,
    /// The token: a secret.
    pub token: String,
    /// When it expires (unix ms).
    pub expires_ms: u64,
}

/// Checks tokens and manages users, sessions and tokens over one store.
/// Cheap to clone.
#[derive(Clone, Debug)]
pub struct Auth {
    meta: Metadata,
    enabled: bool,
    audit: Arc<audit::AuditLog>,
    /// Bounds the password hashing that logins over HTTP run at once (it
    /// costs memory and CPU) and the logins waiting for it.
    pub(crate) logins: Arc<LoginGate>,
}

/// Two semaphores: logins hashing now, logins allowed to wait.
#[derive(Debug)]
pub(crate) struct LoginGate {
    pub(crate) running: tokio::sync::Semaphore,
    pub(crate) waiting: tokio::sync::Semaphore,
}

impl Auth {
    /// Over `meta`; `enabled` says whether requests need a token. The
    /// audit log is `audit.log` in the store's directory, with the default
    /// bounds until [`Auth::configure_audit`].
    pub fn new(meta: Metadata, enabled: bool) -> Auth {
        let path = meta.store().dir().join("audit.log");
        Auth {
            meta,
            enabled,
            audit: audit::AuditLog::new(path, AuditConfig::default()),
            logins: Arc::new(LoginGate {
                running: tokio::sync::Semaphore::new(2),
                waiting: tokio::sync::Semaphore::new(64),
            }),
        }
    }

    /// Whether requests need a token.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// None when auth is off. Err when the token does not allow `access` to `fp`.
    pub fn check(
        &self,
        token: Option<&str>,
        fp: &FullPrefix,
        access: Access,
    ) -> Result<Grant, AuthError> {
        self.check_target(token, Target::FullPrefix(fp), access)
    }

    /// Like [`Auth::check`], for any [`Target`]. With auth off every
    /// request is granted, as nobody.
    pub fn check_target(
        &self,
        token: Option<&str>,
        target: Target<'_>,
        access: Access,
    ) -> Result<Grant, AuthError> {
        if !self.enabled {
            return Ok(Grant::default());
        }
        let claims = self.verify(token.ok_or_else(AuthError::missing)?)?;
        authorize(&claims, target, access)?;
        Ok(Grant::of(&claims))
    }

    /// Verifies a token: signature, expiry and revocation (whether auth is
    /// on or not).
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        let now = now_ms();
        let claims = verify_token(token, &self.keys()?, now)?;
        let revocations = Revocations {
            token: self.is_revoked(&format!("token:{}", claims.tid))?,
            session: self.is_revoked(&format!("session:{}", claims.sid))?,
            user_revoke_before: self.user(&claims.sub)?.map(|(u, _)| u.revoke_before),
        };
        check_revocation(&claims, &revocations)?;
        Ok(claims)
    }

    /// Verifies a session token (a token derived from one is refused).
    pub fn verify_session(&self, token: Option<&str>) -> Result<Claims, AuthError> {
        let claims = self.verify(token.ok_or_else(AuthError::missing)?)?;
        if !claims.is_session() {
            return Err(AuthError::new(
                AuthErrorKind::Forbidden,
                format!(
                    "token {} is not a session token: managing sessions and tokens needs the token `chorus session create` or POST /v1/auth/sessions gave",
                    claims.tid
                ),
            ));
        }
        Ok(claims)
    }

    /// Sets the audit log's bounds (a daemon's flags; commands on the
    /// directory keep the defaults) and, with auth on, deletes rotated
    /// audit files over the maximum age.
    pub fn configure_audit(&self, config: AuditConfig) {
        if self.enabled {
            self.audit.configure(config);
        }
    }

    /// The count of refusals the audit log suppressed (summarised instead
    /// of written), shared with `/metrics`.
    pub(crate) fn audit_suppressed(&self) -> Arc<std::sync::atomic::AtomicU64> {
        self.audit.suppressed()
    }

    /// Appends one line to the audit log (JSON: time, token id, user,
    /// iface "http"|"zmq"|"cli", source, op, target, outcome), always:
    /// a write or a management operation.
    pub fn audit(&self, grant: &Grant, iface: &str, op: &str, target: &str, ok: bool) {
        if !self.enabled {
            return;
        }
        let source = audit::source(iface);
        self.audit.record(&audit::Entry {
            token: grant.token_id.as_deref(),
            user: grant.user.as_deref(),
            iface,
            source: &source,
            op,
            target,
            outcome: if ok {
                audit::Outcome::Ok
            } else {
                audit::Outcome::Failed
            },
        });
    }

    /// Appends the line of a refused request: the token's id and user
    /// when it verifies (a scope or access refusal), else none, and why.
    /// Only the first few refusals from a source in a window are written;
    /// the rest are counted in the window's summary line.
    pub fn audit_refused(
        &self,
        token: Option<&str>,
        iface: &str,
        op: &str,
        target: &str,
        error: &AuthError,
    ) {
        if !self.enabled {
            return;
        }
        let source = audit::source(iface);
        if !self.audit.admit_refusal(&source, error.kind.code()) {
            return;
        }
        let grant = token
            .and_then(|t| self.verify(t).ok())
            .map(|c| Grant::of(&c))
            .unwrap_or_default();
        self.audit.record(&audit::Entry {
            token: grant.token_id.as_deref(),
            user: grant.user.as_deref(),
            iface,
            source: &source,
            op,
            target,
            outcome: audit::Outcome::Refused {
                status: error.kind.status(),
                reason: &error.message,
            },
        });
    }

    /// Creates the cluster key if there is none yet. Two nodes that create
    /// one at once end with two siblings, both accepted.
    pub fn ensure_key(&self) -> Result<(), AuthError> {
        let fp = auth_prefix(KEYS)?;
        let object = self.meta.object(&fp, KEY_NAME)?;
        if object.as_ref().is_some_and(|o| !keys_of(o).is_empty()) {
            return Ok(());
        }
        let mut key = [0u8; KEY_BYTES];
        random(&mut key)?;
        // With the context of what was read (nothing): a key another
        // process wrote meanwhile stays, as a sibling.
        let context = object.map_or_else(Object::empty_context, |o| o.context());
        self.meta.put_reserved(
            &fp,
            KEY_NAME,
            PutValue::Bytes(key.to_vec()),
            &PutOptions {
                context: Some(context),
                ..Default::default()
            },
        )?;
        Ok(())
    }

    /// Adds a user. Refused if the name is taken by a user not deleted.
    pub fn add_user(&self, name: &str, secret: &str) -> Result<(), AuthError> {
        validate_user(name)?;
        validate_secret(secret)?;
        let existing = self.user(name)?;
        if existing.as_ref().is_some_and(|(u, _)| !u.deleted) {
            return Err(AuthError::new(
                AuthErrorKind::Exists,
                format!("user {name} exists: change its secret with `chorus user passwd {name}`"),
            ));
        }
        // A name deleted and added again keeps the deletion's revocation,
        // so the old user's sessions stay refused.
        let (revoke_before, context) = match existing {
            Some((u, c)) => (u.revoke_before, c),
            None => (0, Object::empty_context()),
        };
        let record = UserRecord {
            name: name.to_string(),
            hash: hash_secret(secret)?,
            revoke_before,
            deleted: false,
        };
        self.write(USERS, name, &record, context)
    }

    /// Changes a user's master secret; every session (and token) of the
    /// user made until now is refused from now on, on every node once this
    /// replicates. Returns the new `revoke_before`.
    pub fn change_secret(&self, name: &str, secret: &str) -> Result<u64, AuthError> {
        validate_secret(secret)?;
        let (old, context) = self.live_user(name)?;
        let now = now_ms().max(old.revoke_before + 1);
        let record = UserRecord {
            name: name.to_string(),
            hash: hash_secret(secret)?,
            revoke_before: now,
            deleted: false,
        };
        self.write(USERS, name, &record, context)?;
        Ok(now)
    }

    /// Deletes a user: no secret verifies any more and every session of the
    /// user is refused. Returns the new `revoke_before`.
    pub fn delete_user(&self, name: &str) -> Result<u64, AuthError> {
        let (old, context) = self.live_user(name)?;
        let now = now_ms().max(old.revoke_before + 1);
        let record = UserRecord {
            name: name.to_string(),
            hash: String::new(),
            revoke_before: now,
            deleted: true,
        };
        self.write(USERS, name, &record, context)?;
        Ok(now)
    }

    /// Every user, deleted ones included, by name.
    pub fn users(&self) -> Result<Vec<UserInfo>, AuthError> {
        let mut out: Vec<UserInfo> = self
            .list::<UserRecord>(USERS)?
            .into_iter()
            .filter_map(|(_, values)| merge_user(values))
            .map(|u| UserInfo {
                name: u.name,
                revoke_before: u.revoke_before,
                deleted: u.deleted,
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Opens a session for `user` if `secret` is its master secret. A wrong
    /// secret and an unknown user are the same error, and take the same
    /// time.
    pub fn create_session(
        &self,
        user: &str,
        secret: &str,
        description: &str,
        ttl_ms: u64,
    ) -> Result<NewSession, AuthError> {
        validate_user(user)?;
        validate_ttl(ttl_ms)?;
        validate_description(description)?;
        let record = self.user(user)?.map(|(u, _)| u).filter(|u| !u.deleted);
        let verified = match &record {
            Some(u) => verify_secret(secret, &u.hash),
            None => {
                verify_secret(secret, dummy_hash());
                false
            }
        };
        let Some(u) = record.filter(|_| verified) else {
            return Err(AuthError::new(
                AuthErrorKind::BadCredentials,
                "unknown user or wrong master secret",
            ));
        };
        let key = self.minting_key()?;
        // After the user's revoke_before even within one millisecond of a
        // secret change: this session was made with the new secret.
        let created = now_ms().max(u.revoke_before + 1);
        let id = random_id()?;
        let record = SessionRecord {
            id: id.clone(),
            user: user.to_string(),
            description: description.to_string(),
            created_ms: created,
            expires_ms: created.saturating_add(ttl_ms),
        };
        self.write(SESSIONS, &id, &record, Object::empty_context())?;
        let claims = Claims {
            v: 1,
            tid: id.clone(),
            sid: id,
            sub: user.to_string(),
            scope: vec!["*".to_string()],
            access: TokenAccess::ReadWrite,
            exp: record.expires_ms,
            iat: created,
            sat: created,
            kid: key_id(&key),
        };
        let token = encode_token(&claims, &key)?;
        Ok(NewSession { record, token })
    }

    /// The sessions recorded here (of one user, or all), oldest first.
    pub fn sessions(&self, user: Option<&str>) -> Result<Vec<SessionInfo>, AuthError> {
        let now = now_ms();
        let mut out = Vec::new();
        for (_, values) in self.list::<SessionRecord>(SESSIONS)? {
            let Some(record) = values.into_iter().last() else {
                continue;
            };
            if user.is_some_and(|u| u != record.user) {
                continue;
            }
            out.push(self.session_info(record, now)?);
        }
        out.sort_by(|a, b| {
            (a.record.created_ms, &a.record.id).cmp(&(b.record.created_ms, &b.record.id))
        });
        Ok(out)
    }

    /// One session, if recorded here.
    pub fn session(&self, id: &str) -> Result<Option<SessionInfo>, AuthError> {
        validate_id(id)?;
        match self.read::<SessionRecord>(SESSIONS, id)? {
            Some((record, _)) => Ok(Some(self.session_info(record, now_ms())?)),
            None => Ok(None),
        }
    }

    /// Revokes a session: its token and every token derived from it are
    /// refused, here at once and on other nodes once this replicates.
    pub fn revoke_session(&self, id: &str, reason: &str) -> Result<SessionRecord, AuthError> {
        let info = self.session(id)?.ok_or_else(|| {
            AuthError::new(
                AuthErrorKind::NotFound,
                format!(
                    "no session {id} here (`chorus session list` shows them; one made on another node is here once replicated)"
                ),
            )
        })?;
        self.revoke(&format!("session:{id}"), reason)?;
        Ok(info.record)
    }

    /// Derives a token from a verified session token: `scope` patterns,
    /// `access`, expiring after `ttl_ms` or with the session, whichever
    /// comes first.
    pub fn create_token(
        &self,
        session: &Claims,
        scope: Vec<String>,
        access: TokenAccess,
        ttl_ms: u64,
    ) -> Result<NewToken, AuthError> {
        if !session.is_session() {
            return Err(AuthError::new(
                AuthErrorKind::Forbidden,
                format!(
                    "token {} is not a session token: tokens derive from a session token",
                    session.tid
                ),
            ));
        }
        validate_scope(&scope)?;
        validate_ttl(ttl_ms)?;
        let key = self.minting_key()?;
        let now = now_ms();
        let id = random_id()?;
        let record = TokenRecord {
            id: id.clone(),
            session: session.sid.clone(),
            user: session.sub.clone(),
            scope,
            access,
            created_ms: now,
            expires_ms: token_expiry(now, ttl_ms, session.exp),
        };
        self.write(TOKENS, &id, &record, Object::empty_context())?;
        let claims = Claims {
            v: 1,
            tid: id,
            sid: session.sid.clone(),
            sub: session.sub.clone(),
            scope: record.scope.clone(),
            access,
            exp: record.expires_ms,
            iat: now,
            sat: session.sat,
            kid: key_id(&key),
        };
        let token = encode_token(&claims, &key)?;
        Ok(NewToken { record, token })
    }

    /// One token's record, if recorded here.
    pub fn token(&self, id: &str) -> Result<Option<TokenRecord>, AuthError> {
        validate_id(id)?;
        Ok(self.read::<TokenRecord>(TOKENS, id)?.map(|(r, _)| r))
    }

    /// Revokes one token.
    pub fn revoke_token(&self, id: &str, reason: &str) -> Result<TokenRecord, AuthError> {
        let record = self.token(id)?.ok_or_else(|| {
            AuthError::new(
                AuthErrorKind::NotFound,
                format!(
                    "no token {id} here (a token made on another node is here once replicated; a session's own token is revoked with its session)"
                ),
            )
        })?;
        self.revoke(&format!("token:{id}"), reason)?;
        Ok(record)
    }

    // Private: the store.

    fn session_info(&self, record: SessionRecord, now: u64) -> Result<SessionInfo, AuthError> {
        let by_user = self
            .user(&record.user)?
            .is_some_and(|(u, _)| u.revoke_before >= record.created_ms);
        let state = if self.is_revoked(&format!("session:{}", record.id))? {
            "revoked"
        } else if by_user {
            "revoked-by-user"
        } else if now >= record.expires_ms {
            "expired"
        } else {
            "active"
        };
        Ok(SessionInfo { record, state })
    }

    fn revoke(&self, key: &str, reason: &str) -> Result<(), AuthError> {
        let record = RevokedRecord {
            at_ms: now_ms(),
            reason: reason.chars().take(DESCRIPTION_MAX_CHARS).collect(),
        };
        let context = self
            .meta
            .object(&auth_prefix(REVOKED)?, key.as_bytes())?
            .map_or_else(Object::empty_context, |o| o.context());
        self.write(REVOKED, key, &record, context)
    }

    /// Whether `key` (`token:ID`, `session:ID`, `join:ID`) is in the
    /// revocation list.
    pub(crate) fn is_listed_revoked(&self, key: &str) -> Result<bool, AuthError> {
        self.is_revoked(key)
    }

    /// Every cluster key this node holds (none before it has one).
    pub(crate) fn cluster_keys(&self) -> Result<Vec<Vec<u8>>, AuthError> {
        self.keys()
    }

    /// Makes a join token valid for `ttl_ms` (see docs/auth.md, "Joining a
    /// cluster"), signed by the cluster key (created if there is none).
    pub fn create_join_token(&self, ttl_ms: u64) -> Result<NewJoinToken, AuthError> {
        if ttl_ms == 0 || ttl_ms > JOIN_TTL_MAX_MS {
            return Err(AuthError::new(
                AuthErrorKind::BadInput,
                "a join token lives from 1 ms to 7 days: give a --ttl in that range",
            ));
        }
        let key = self.minting_key()?;
        let jid = random_id()?;
        let expires_ms = now_ms().saturating_add(ttl_ms);
        let token = crate::join::JoinToken::issue(&key, &jid, expires_ms)
            .map_err(|e| AuthError::new(AuthErrorKind::Storage, e))?;
        Ok(NewJoinToken {
            id: jid,
            token,
            expires_ms,
        })
    }

    /// Revokes join token `id`: nodes refuse it at their next handshake
    /// (a node it admitted stays; revoke its certificate or let it leave).
    pub fn revoke_join_token(&self, id: &str, reason: &str) -> Result<(), AuthError> {
        validate_id(id)?;
        self.revoke(&crate::join::revocation_key(id), reason)?;
        Ok(())
    }

    fn is_revoked(&self, key: &str) -> Result<bool, AuthError> {
        Ok(self
            .meta
            .object(&auth_prefix(REVOKED)?, key.as_bytes())?
            .is_some_and(|o| o.values().iter().any(|v| v.bytes().is_some())))
    }

    /// Every key of the cluster (usually one; several after concurrent
    /// creation).
    fn keys(&self) -> Result<Vec<Vec<u8>>, AuthError> {
        Ok(self
            .meta
            .object(&auth_prefix(KEYS)?, KEY_NAME)?
            .map(|o| keys_of(&o))
            .unwrap_or_default())
    }

    /// The key that signs: the last writer's among the siblings.
    fn minting_key(&self) -> Result<Vec<u8>, AuthError> {
        self.ensure_key()?;
        let object = self.meta.object(&auth_prefix(KEYS)?, KEY_NAME)?;
        object
            .and_then(|o| {
                let mut values = o.values();
                values.sort();
                values.into_iter().rev().find_map(|v| {
                    v.bytes()
                        .filter(|b| b.len() == KEY_BYTES)
                        .map(<[u8]>::to_vec)
                })
            })
            .ok_or_else(|| AuthError::new(AuthErrorKind::Storage, "the cluster key is missing"))
    }

    /// A user record with its siblings merged: the last writer's, with the
    /// latest `revoke_before` of any (a revocation is never undone by a
    /// concurrent write).
    fn user(&self, name: &str) -> Result<Option<(UserRecord, Context)>, AuthError> {
        Ok(self
            .read_all::<UserRecord>(USERS, name)?
            .and_then(|(values, context)| merge_user(values).map(|u| (u, context))))
    }

    fn live_user(&self, name: &str) -> Result<(UserRecord, Context), AuthError> {
        validate_user(name)?;
        self.user(name)?.filter(|(u, _)| !u.deleted).ok_or_else(|| {
            AuthError::new(
                AuthErrorKind::NotFound,
                format!("no user {name}: add it with `chorus user add {name}`"),
            )
        })
    }

    /// The last writer's value of a key, decoded.
    fn read<T: DeserializeOwned>(
        &self,
        sub: &str,
        key: &str,
    ) -> Result<Option<(T, Context)>, AuthError> {
        Ok(self
            .read_all::<T>(sub, key)?
            .and_then(|(mut values, context)| values.pop().map(|v| (v, context))))
    }

    /// Every live sibling of a key, decoded, in last-writer-wins order
    /// (the winner last), with the context to write over them.
    fn read_all<T: DeserializeOwned>(
        &self,
        sub: &str,
        key: &str,
    ) -> Result<Option<(Vec<T>, Context)>, AuthError> {
        let Some(object) = self.meta.object(&auth_prefix(sub)?, key.as_bytes())? else {
            return Ok(None);
        };
        let mut values = object.values();
        values.sort();
        Ok(Some((decode_all(values), object.context())))
    }

    /// Every key of `$auth/{sub}` with its live siblings decoded.
    fn list<T: DeserializeOwned>(&self, sub: &str) -> Result<Vec<(String, Vec<T>)>, AuthError> {
        let items = self.meta.to_list(
            &Scope::FullPrefix(auth_prefix(sub)?),
            &IterOptions::default(),
        )?;
        Ok(items
            .into_iter()
            .map(|item| {
                let mut values: Vec<&Value> = item.read.values.iter().collect();
                values.sort();
                (
                    String::from_utf8_lossy(&item.key).into_owned(),
                    decode_all(values),
                )
            })
            .collect())
    }

    fn write<T: Serialize>(
        &self,
        sub: &str,
        key: &str,
        value: &T,
        context: Context,
    ) -> Result<(), AuthError> {
        let bytes = serde_json::to_vec(value)
            .map_err(|e| AuthError::new(AuthErrorKind::Storage, format!("cannot encode: {e}")))?;
        self.meta.put_reserved(
            &auth_prefix(sub)?,
            key.as_bytes(),
            PutValue::Bytes(bytes),
            &PutOptions {
                context: Some(context),
                ..Default::default()
            },
        )?;
        Ok(())
    }
}

fn auth_prefix(sub: &str) -> Result<FullPrefix, AuthError> {
    FullPrefix::new(AUTH_PREFIX, sub)
        .map_err(|e| AuthError::new(AuthErrorKind::Storage, e.to_string()))
}

fn keys_of(object: &Object) -> Vec<Vec<u8>> {
    object
        .values()
        .into_iter()
        .filter_map(|v| {
            v.bytes()
                .filter(|b| b.len() == KEY_BYTES)
                .map(<[u8]>::to_vec)
        })
        .collect()
}

/// Decodes values in order, skipping tombstones and what does not decode.
fn decode_all<T: DeserializeOwned>(values: Vec<&Value>) -> Vec<T> {
    values
        .into_iter()
        .filter_map(|v| v.bytes().and_then(|b| serde_json::from_slice(b).ok()))
        .collect()
}

/// Siblings of a user record (winner last): the winner, with the latest
/// `revoke_before`.
fn merge_user(values: Vec<UserRecord>) -> Option<UserRecord> {
    let revoke_before = values.iter().map(|u| u.revoke_before).max()?;
    values
        .into_iter()
        .last()
        .map(|u| UserRecord { revoke_before, ..u })
}

fn validate_secret(secret: &str) -> Result<(), AuthError> {
    if (SECRET_MIN_BYTES..=SECRET_MAX_BYTES).contains(&secret.len())
        && !secret.contains(['\n', '\r'])
    {
        Ok(())
    } else {
        Err(AuthError::new(
            AuthErrorKind::BadInput,
            format!(
                "a master secret is {SECRET_MIN_BYTES} to {SECRET_MAX_BYTES} bytes on one line (this one is {} bytes)",
                secret.len()
            ),
        ))
    }
}

fn validate_ttl(ttl_ms: u64) -> Result<(), AuthError> {
    if (TTL_MIN_MS..=TTL_MAX_MS).contains(&ttl_ms) {
        Ok(())
    } else {
        Err(AuthError::new(
            AuthErrorKind::BadInput,
            format!(
                "a lifetime of {} s: give 1 s to 30 days (30d = {} s)",
                ttl_ms / 1000,
                TTL_MAX_MS / 1000
            ),
        ))
    }
}

fn validate_description(text: &str) -> Result<(), AuthError> {
    if text.chars().count() <= DESCRIPTION_MAX_CHARS && !text.chars().any(char::is_control) {
        Ok(())
    } else {
        Err(AuthError::new(
            AuthErrorKind::BadInput,
            format!(
                "a description is at most {DESCRIPTION_MAX_CHARS} characters with no control characters"
            ),
        ))
    }
}

/// An argon2id PHC string with a random salt.
fn hash_secret(secret: &str) -> Result<String, AuthError> {
    let mut salt = [0u8; 16];
    random(&mut salt)?;
    Argon2::default()
        .hash_password_with_salt(secret.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| AuthError::new(AuthErrorKind::Storage, format!("cannot hash: {e}")))
}

/// Argon2's verification (its comparison is constant-time).
fn verify_secret(secret: &str, hash: &str) -> bool {
    Argon2::default()
        .verify_password(secret.as_bytes(), hash)
        .is_ok()
}

/// A hash no secret is checked against for real: verifying against it
/// when the user is unknown makes that answer take as long as a wrong
/// secret.
fn dummy_hash() -> &'static str {
    static HASH: OnceLock<String> = OnceLock::new();
    HASH.get_or_init(|| {
        Argon2::default()
            .hash_password_with_salt(b"no such user", b"chorus-no-user")
            .map(|h| h.to_string())
            .unwrap_or_default()
    })
}

fn random(buf: &mut [u8]) -> Result<(), AuthError> {
    getrandom::fill(buf).map_err(|e| {
        AuthError::new(
            AuthErrorKind::Storage,
            format!("the system's random number generator failed: {e}"),
        )
    })
}

/// 16 random hex digits.
fn random_id() -> Result<String, AuthError> {
    let mut b = [0u8; 8];
    random(&mut b)?;
    Ok(token::hex(&b))
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> (tempfile::TempDir, Auth) {
        let dir = tempfile::tempdir().expect("tmp");
        let store = chorus_store::Store::open(
            dir.path(),
            chorus_store::Options {
                create: true,
                ..chorus_store::Options::default()
            },
        )
        .expect("store");
        let auth = Auth::new(Metadata::new(store), true);
        (dir, auth)
    }

    fn fp(s: &str) -> FullPrefix {
        FullPrefix::parse(s).expect("fp")
    }

    #[test]
    fn sessions_tokens_and_cascading_revocation() {
        let (_dir, auth) = auth();
        auth.add_user("alice", "correct horse").expect("add");
        assert_eq!(
            auth.add_user("alice", "another one").map_err(|e| e.kind),
            Err(AuthErrorKind::Exists)
        );
        let wrong = auth.create_session("alice", "wrong horse", "", 60_000);
        assert_eq!(
            wrong.map(|_| ()).map_err(|e| e.kind),
            Err(AuthErrorKind::BadCredentials)
        );
        let nobody = auth.create_session("bob", "correct horse", "", 60_000);
        assert_eq!(
            nobody.map(|_| ()).map_err(|e| e.kind),
            Err(AuthErrorKind::BadCredentials)
        );
        let s = auth
            .create_session("alice", "correct horse", "laptop", 60_000)
            .expect("session");
        let session = auth.verify_session(Some(&s.token)).expect("session token");
        let t = auth
            .create_token(&session, vec!["app/*".into()], TokenAccess::Read, 3_600_000)
            .expect("token");
        // Capped by the session.
        assert_eq!(t.record.expires_ms, s.record.expires_ms);
        let grant = auth
            .check(Some(&t.token), &fp("app/cfg"), Access::Read)
            .expect("in scope");
        assert_eq!(grant.token_id.as_deref(), Some(t.record.id.as_str()));
        assert_eq!(grant.user.as_deref(), Some("alice"));
        let kind = |r: Result<Grant, AuthError>| r.map_err(|e| e.kind);
        assert_eq!(
            kind(auth.check(Some(&t.token), &fp("app/cfg"), Access::Write)),
            Err(AuthErrorKind::Forbidden)
        );
        assert_eq!(
            kind(auth.check(None, &fp("app/cfg"), Access::Read)),
            Err(AuthErrorKind::Missing)
        );
        // A derived token cannot make tokens.
        assert!(auth.verify_session(Some(&t.token)).is_err());
        // Revoking the token, then the session.
        let t2 = auth
            .create_token(&session, vec!["*".into()], TokenAccess::ReadWrite, 60_000)
            .expect("token");
        auth.revoke_token(&t.record.id, "test").expect("revoke");
        assert_eq!(
            kind(auth.check(Some(&t.token), &fp("app/cfg"), Access::Read)),
            Err(AuthErrorKind::Revoked)
        );
        assert!(
            auth.check(Some(&t2.token), &fp("app/cfg"), Access::Write)
                .is_ok()
        );
        auth.revoke_session(&s.record.id, "test").expect("revoke");
        assert_eq!(
            kind(auth.check(Some(&t2.token), &fp("app/cfg"), Access::Write)),
            Err(AuthErrorKind::Revoked)
        );
        let listed = auth.sessions(Some("alice")).expect("list");
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].state, "revoked");
        // A secret change refuses every earlier session; a new one works.
        let s2 = auth
            .create_session("alice", "correct horse", "", 60_000)
            .expect("session");
        auth.change_secret("alice", "battery staple")
            .expect("passwd");
        assert_eq!(
            kind(auth.check(Some(&s2.token), &fp("app/cfg"), Access::Read)),
            Err(AuthErrorKind::Revoked)
        );
        let s3 = auth
            .create_session("alice", "battery staple", "", 60_000)
            .expect("session");
        assert!(
            auth.check(Some(&s3.token), &fp("app/cfg"), Access::Write)
                .is_ok()
        );
        auth.delete_user("alice").expect("del");
        assert_eq!(
            kind(auth.check(Some(&s3.token), &fp("app/cfg"), Access::Read)),
            Err(AuthErrorKind::Revoked)
        );
        let users = auth.users().expect("users");
        assert_eq!(users.len(), 1);
        assert!(users[0].deleted);
    }

    #[test]
    fn a_key_written_concurrently_is_a_sibling_and_both_verify() {
        let (_dir, auth) = auth();
        auth.add_user("alice", "correct horse").expect("add");
        let s1 = auth
            .create_session("alice", "correct horse", "", 60_000)
            .expect("session");
        // Another node's key arrives as a sibling (written without having
        // seen ours).
        let fp = auth_prefix(KEYS).expect("fp");
        auth.meta
            .put_reserved(
                &fp,
                KEY_NAME,
                PutValue::Bytes(vec![3; KEY_BYTES]),
                &PutOptions {
                    context: Some(Object::empty_context()),
                    ..Default::default()
                },
            )
            .expect("sibling");
        assert_eq!(auth.keys().expect("keys").len(), 2);
        let s2 = auth
            .create_session("alice", "correct horse", "", 60_000)
            .expect("session");
        for s in [&s1, &s2] {
            assert!(auth.verify(&s.token).is_ok());
        }
    }

    #[test]
    fn with_auth_off_every_check_passes_as_nobody() {
        let (_dir, on) = auth();
        let off = Auth::new(on.meta.clone(), false);
        assert_eq!(
            off.check(None, &fp("app/x"), Access::Write),
            Ok(Grant::default())
        );
        assert!(!off.enabled());
    }
}
