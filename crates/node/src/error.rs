//! The one error of every interface: a [`Kind`] and a message for people.
//!
//! The table from kind to HTTP status, stable code and CLI exit code is
//! `chorus_core::Kind`; the store's errors map to kinds in
//! `chorus_store::Error::kind`, the auth layer's here. Adapters render an [`ApiError`]; they never
//! pick a status or a code themselves.

use chorus_store::Error as StoreError;
use serde_json::{Value, json};

use crate::auth::{AuthError, AuthErrorKind};

pub use chorus_core::Kind;

/// The kind of an auth error.
pub fn kind_of_auth(kind: AuthErrorKind) -> Kind {
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
        ApiError::new(e.kind(), e.to_string())
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        ApiError::new(kind_of_auth(e.kind), e.message)
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
            assert_eq!(kind_of_auth(a).http_status(), a.status(), "{a:?}");
        }
    }

    #[test]
    fn a_broken_invariant_is_a_500_not_a_400() {
        let e = ApiError::from(StoreError::Internal("x".into()));
        assert_eq!(e.kind.http_status(), 500);
        assert_eq!(e.code(), "internal");
    }
}
