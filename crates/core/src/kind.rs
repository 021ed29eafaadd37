//! The kinds of failure every interface shows: one table from a kind to
//! its HTTP status, its stable code (the `"code"` of every JSON error, over
//! HTTP, ZeroMQ, `chorus --json` and the Python module) and its command
//! line exit code. Nothing else picks a status, a code or an exit code.

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
    /// The full prefix is in a channel this node does not serve: ask a
    /// node that serves it (421 Misdirected Request, exit 1: like
    /// `not_found`, the data is not here, and asking this node again
    /// will not change that).
    NotServed,
    /// A node this one forwarded the request to could not be reached or
    /// did not answer in time (502 Bad Gateway, exit 5: retry, or ask
    /// another node).
    Unreachable,
}

impl Kind {
    /// Every kind, for tables and tests.
    pub const ALL: [Kind; 15] = [
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
        Kind::NotServed,
        Kind::Unreachable,
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
            Kind::NotServed => 421,
            Kind::Unreachable => 502,
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
            Kind::NotServed => "not_served",
            Kind::Unreachable => "unreachable",
        }
    }

    /// The command line's exit code: 1 not found (or not here: not
    /// served), 2 a wrong request, 3 a conflict, 4 storage, 5 busy or
    /// unreachable (retry).
    pub fn exit_code(self) -> u8 {
        match self {
            Kind::NotFound | Kind::NotServed => 1,
            Kind::BadRequest
            | Kind::Unauthorized
            | Kind::Forbidden
            | Kind::MethodNotAllowed
            | Kind::TooLarge
            | Kind::UriTooLong => 2,
            Kind::Conflict => 3,
            Kind::Storage | Kind::Internal => 4,
            Kind::Busy | Kind::LockTimeout | Kind::RateLimited | Kind::Unreachable => 5,
        }
    }
}
