//! The one error of every interface: a [`Kind`] and a message for people.
//!
//! The table from kind to HTTP status, stable code (the `"code"` of every
//! JSON error, over HTTP, ZeroMQ and `chorus --json`) and CLI exit code is
//! here and nowhere else; so is the mapping from the store's and the auth
//! layer's errors to kinds. Adapters render an [`ApiError`]; they never
//! pick a status or a code themselves.

use chorus_store::Error as StoreError;
use serde_json::{Value, json};

use crate::auth::{AuthError, AuthErrorKind};

/// What kind of failure: decides the status, the code and the exit code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The request is wrong: a name, a value, a parameter (400, exit 2).
    BadRequest,
    /// No token, or one that is forged, expired or revoked (401, exit 2).
    Unauthorized,
    /// The token does not allow this (403, exit 2).
    Forbidden,
    /// Absent or deleted (404, exit 1).
    NotFound,
    /// The route exists but not with this method (405, exit 2).
    MethodNotAllowed,
    /// A concurrent edit, a stale revision, an existing name (409, exit 3).
    Conflict,
    /// A body over the limit (413, exit 2).
    TooLarge,
    /// A path or query over the limit (414, exit 2).
    UriTooLong,
    /// Over a request-rate limit: retry after a moment (429, exit 5).
    RateLimited,
    /// Every queue is full, or a request ran out of its work budget
    /// (what it did is kept): retry (503, exit 5).
    Busy,
    /// The writer lock was not free in time (503, exit 5).
    LockTimeout,
    /// The disk or the log failed (500, exit 4).
    Storage,
    /// A broken invariant: a bug, not the caller's fault (500, exit 4).
    Internal,
}

impl Kind {
    /// Every kind, for tables and tests.
    pub const ALL: [Kind; 13] = [
        Kind::BadRequest,
        Kind::Unauthorized,
        Kind::Forbidden,
        Kind::NotFound,
        Kind::MethodNotAllowed,
        Kind::Conflict,
        Kind::TooLarge,
        Kind::UriTooLong,
        Kind::RateLimited,
        Kind::Busy,
        Kind::LockTimeout,
        Kind::Storage,
        Kind::Internal,
    ];

    /// The HTTP status.
    pub fn http_status(self) -> u16 {
        match self {
            Kind::BadRequest => 400,
            Kind::Unauthorized => 401,
            Kind::Forbidden => 403,
            Kind::NotFound => 404,
            Kind::MethodNotAllowed => 405,
            Kind::Conflict => 409,
            Kind::TooLarge => 413,
            Kind::UriTooLong => 414,
            Kind::RateLimited => 429,
            Kind::Busy | Kind::LockTimeout => 503,
            Kind::Storage | Kind::Internal => 500,
        }
    }

    /// The stable code, the same on every interface.
    pub fn code(self) -> &'static str {
        match self {
            Kind::BadRequest => "bad_request",
            Kind::Unauthorized => "unauthorized",
            Kind::Forbidden => "forbidden",
            Kind::NotFound => "not_found",
            Kind::MethodNotAllowed => "method_not_allowed",
            Kind::Conflict => "conflict",
            Kind::TooLarge => "too_large",
            Kind::UriTooLong => "uri_too_long",
            Kind::RateLimited => "rate_limited",
            Kind::Busy => "busy",
            Kind::LockTimeout => "lock_timeout",
            Kind::Storage => "storage",
            Kind::Internal => "internal",
        }
    }

    /// The command line's exit code: 1 not found, 2 a wrong request, 3 a
    /// conflict, 4 storage, 5 busy (retry).
    pub fn exit_code(self) -> u8 {
        match self {
            Kind::NotFound => 1,
            Kind::BadRequest
            | Kind::Unauthorized
            | Kind::Forbidden
            | Kind::MethodNotAllowed
            | Kind::TooLarge
            | Kind::UriTooLong => 2,
            Kind::Conflict => 3,
            Kind::Storage | Kind::Internal => 4,
            Kind::Busy | Kind::LockTimeout | Kind::RateLimited => 5,
        }
    }

    /// The kind of a store error.
    pub fn of_store(e: &StoreError) -> Kind {
        match e {
            StoreError::NotInitialized { .. } | StoreError::NotFound(_) => Kind::NotFound,
            StoreError::InvalidInput(_) | StoreError::NetworkFilesystem { .. } => Kind::BadRequest,
            StoreError::WriteConflict { .. } | StoreError::Conflict(_) => Kind::Conflict,
            StoreError::LockTimeout { .. } => Kind::LockTimeout,
            StoreError::Busy(_) => Kind::Busy,
            StoreError::Corruption { .. } | StoreError::Io { .. } | StoreError::Poisoned(_) => {
                Kind::Storage
            }
            StoreError::Internal(_) => Kind::Internal,
        }
    }

    /// The kind of an auth error.
    pub fn of_auth(kind: AuthErrorKind) -> Kind {
        match kind {
            AuthErrorKind::Missing
            | AuthErrorKind::Invalid
            | AuthErrorKind::Expired
            | AuthErrorKind::Revoked
            | AuthErrorKind::BadCredentials => Kind::Unauthorized,
            AuthErrorKind::Forbidden => Kind::Forbidden,
            AuthErrorKind::BadInput => Kind::BadRequest,
            AuthErrorKind::NotFound | AuthErrorKind::Disabled => Kind::NotFound,
            AuthErrorKind::Exists => Kind::Conflict,
            AuthErrorKind::Busy => Kind::Busy,
            AuthErrorKind::Storage => Kind::Storage,
        }
    }
}

/// An error of any interface: a kind and a message that says what was
/// wrong and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// What kind.
    pub kind: Kind,
    /// For people.
    pub message: String,
    /// On a read of an absent key: the empty context, so that a
    /// read-modify-write that starts from nothing writes a sibling of
    /// whatever another client wrote meanwhile rather than replacing it.
    pub context: Option<String>,
}

impl ApiError {
    /// An error of `kind`.
    pub fn new(kind: Kind, message: impl Into<String>) -> ApiError {
        ApiError {
            kind,
            message: message.into(),
            context: None,
        }
    }
    /// A wrong request.
    pub fn bad(message: impl Into<String>) -> ApiError {
        ApiError::new(Kind::BadRequest, message)
    }
    /// Absent.
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(Kind::NotFound, message)
    }
    /// A bug.
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(Kind::Internal, message)
    }
    /// Every queue is full.
    pub fn busy(message: impl Into<String>) -> ApiError {
        ApiError::new(Kind::Busy, message)
    }
    /// The stable code.
    pub fn code(&self) -> &'static str {
        self.kind.code()
    }
    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }
    /// The JSON body: `{"code", "message"}` (and `"context"` on a read of
    /// an absent key).
    pub fn to_json(&self) -> Value {
        let mut body = json!({"code": self.code(), "message": self.message});
        if let Some(c) = &self.context {
            body["context"] = json!(c);
        }
        body
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ApiError {}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError::new(Kind::of_store(&e), e.to_string())
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        ApiError::new(Kind::of_auth(e.kind), e.message)
    }
}

impl From<chorus_core::NameError> for ApiError {
    fn from(e: chorus_core::NameError) -> Self {
        ApiError::bad(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_statuses_are_errors() {
        let mut codes: Vec<_> = Kind::ALL.iter().map(|k| k.code()).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), Kind::ALL.len());
        for k in Kind::ALL {
            assert!((400..600).contains(&k.http_status()), "{k:?}");
            assert!((1..=5).contains(&k.exit_code()), "{k:?}");
        }
    }

    #[test]
    fn auth_kinds_keep_their_statuses() {
        use AuthErrorKind as A;
        for a in [
            A::Missing,
            A::Invalid,
            A::Expired,
            A::Revoked,
            A::BadCredentials,
            A::Forbidden,
            A::BadInput,
            A::NotFound,
            A::Disabled,
            A::Exists,
            A::Busy,
            A::Storage,
        ] {
            assert_eq!(Kind::of_auth(a).http_status(), a.status(), "{a:?}");
        }
    }

    #[test]
    fn a_broken_invariant_is_a_500_not_a_400() {
        let e = ApiError::from(StoreError::Internal("x".into()));
        assert_eq!(e.kind.http_status(), 500);
        assert_eq!(e.code(), "internal");
    }
}
