//! `chorus user`, `chorus session` and `chorus token`: authentication
//! managed on a data directory (local access is the administrator's).
//! Secrets come from stdin (its first line), never from arguments; a
//! session token for `token create` from `$CHORUS_TOKEN` or stdin. Tokens
//! are printed once, when made; lists show ids only. See docs/auth.md.

use std::io::{BufRead, IsTerminal, Write};

use chorus_node::auth::{Auth, AuthError, Grant, TokenAccess, utc, validate_id, validate_user};
use chorus_store::Metadata;
use clap::Subcommand;
use serde_json::json;

use crate::{Cli, Failure, emit};

#[derive(Subcommand, Debug)]
pub(crate) enum UserCommand {
    /// Add a user; its master secret is read from stdin (first line)
    Add {
        /// 1 to 64 characters from A-Z a-z 0-9 . _ -
        name: String,
    },
    /// Change a user's master secret (stdin): every session of the user made until now is revoked
    Passwd {
        /// The user
        name: String,
    },
    /// Delete a user: every session of the user is revoked
    Del {
        /// The user
        name: String,
    },
    /// List the users (never their secrets)
    List,
}

#[derive(Subcommand, Debug)]
pub(crate) enum SessionCommand {
    /// Open a session with the user's master secret (stdin); prints the session token once
    Create {
        /// The user
        #[arg(long)]
        user: String,
        /// What the session is for (shown by `session list`)
        #[arg(long, default_value = "")]
        description: String,
        /// How long it lasts: 30s, 10m, 8h, 2d (at most 30d)
        #[arg(long, default_value = "8h")]
        ttl: String,
    },
    /// List sessions (ids and states, never tokens)
    List {
        /// Only this user's
        #[arg(long)]
        user: Option<String>,
    },
    /// Revoke a session: its token and every token derived from it are refused
    Revoke {
        /// The session id (from `session list`)
        id: String,
    },
}

#[derive(Subcommand, Debug)]
pub(crate) enum TokenCommand {
    /// Derive a token from a session token ($CHORUS_TOKEN, else stdin); prints it once
    Create {
        /// Patterns over full prefixes: `*`, `app/*`, `docs/users` (`*` and `?` glob each part)
        #[arg(long, required = true, num_args = 1..)]
        scope: Vec<String>,
        /// Reads only (default: read-write)
        #[arg(long)]
        read_only: bool,
        /// How long it lasts: 30s, 10m, 1h, 2d (never beyond the session)
        #[arg(long, default_value = "1h")]
        ttl: String,
    },
    /// Revoke a token
    Revoke {
        /// The token id (printed when it was made)
        id: String,
    },
}

#[derive(Subcommand, Debug)]
pub(crate) enum JoinTokenCommand {
    /// Make a join token: the credential a new node joins with (prints it once; give it to the node in CHORUS_JOIN_TOKEN or --join-token-file)
    Create {
        /// How long it admits nodes (at most 7d)
        #[arg(long, default_value = "1h")]
        ttl: String,
    },
    /// Revoke a join token: nodes refuse it at their next handshake
    Revoke {
        /// The join token's id (printed when it was made)
        id: String,
    },
}

pub(crate) fn join_token(cli: &Cli, command: &JoinTokenCommand) -> Result<(), Failure> {
    let auth = open(cli)?;
    match command {
        JoinTokenCommand::Create { ttl } => {
            let ttl_ms = parse_duration(ttl)?;
            let t = auth.create_join_token(ttl_ms)?;
            admin(&auth, "join_token.create", &t.id);
            emit(
                cli,
                json!({"id": t.id, "token": t.token, "expires": t.expires_ms, "expires_utc": utc(t.expires_ms)}),
                || {
                    format!(
                        "join token {}, admits nodes until {}; the token (shown once, a secret):\n{}",
                        t.id,
                        utc(t.expires_ms),
                        t.token
                    )
                },
            );
        }
        JoinTokenCommand::Revoke { id } => {
            auth.revoke_join_token(id, "revoked with chorus cluster join-token revoke")?;
            admin(&auth, "join_token.revoke", id);
            emit(cli, json!({"id": id, "state": "revoked"}), || {
                format!("join token {id} revoked: nodes refuse it at their next handshake")
            });
        }
    }
    Ok(())
}

impl From<AuthError> for Failure {
    fn from(e: AuthError) -> Self {
        Failure::of_kind(chorus_node::error::kind_of_auth(e.kind), e.message)
    }
}

/// Auth over the data directory, on (so that it audits).
fn open(cli: &Cli) -> Result<Auth, Failure> {
    Ok(Auth::new(Metadata::new(cli.open()?), true))
}

/// The administrator's actions are audited with no token.
fn admin(auth: &Auth, op: &str, target: &str) {
    auth.audit(&Grant::default(), "cli", op, target, true);
}

/// The first line of stdin, without its line ending. On a terminal, a
/// prompt goes to stderr first (the input is echoed: prefer a pipe).
fn first_line(what: &str) -> Result<String, Failure> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprint!("{what} (echoed; Ctrl-D to cancel): ");
        let _ = std::io::stderr().flush();
    }
    let mut line = String::new();
    stdin
        .lock()
        .read_line(&mut line)
        .map_err(|e| Failure::usage(format!("could not read the {what} from stdin: {e}")))?;
    let line = line.trim_end_matches(['\n', '\r']).to_string();
    if line.is_empty() {
        return Err(Failure::usage(format!(
            "no {what} on stdin: pipe it in, e.g. `printf '%s\\n' \"$SECRET\" | chorus ...`"
        )));
    }
    Ok(line)
}

/// `30s`, `10m`, `8h`, `2d` in milliseconds.
pub(crate) fn parse_duration(text: &str) -> Result<u64, Failure> {
    let bad = || {
        Failure::usage(format!(
            "{text:?} is not a duration: give a number and a unit, like 30s, 10m, 8h or 2d"
        ))
    };
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().map_err(|_| bad())?;
    let unit_ms: u64 = match unit {
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(bad()),
    };
    n.checked_mul(unit_ms).ok_or_else(bad)
}

pub(crate) fn user(cli: &Cli, command: &UserCommand) -> Result<(), Failure> {
    match command {
        UserCommand::Add { name } => {
            // Checked before anything is read or opened: a bad name changes nothing.
            validate_user(name)?;
            let secret = first_line("master secret")?;
            let auth = open(cli)?;
            auth.add_user(name, &secret)?;
            admin(&auth, "user.add", name);
            emit(cli, json!({"user": name, "added": true}), || {
                format!("added user {name}")
            });
        }
        UserCommand::Passwd { name } => {
            validate_user(name)?;
            let secret = first_line("new master secret")?;
            let auth = open(cli)?;
            let at = auth.change_secret(name, &secret)?;
            admin(&auth, "user.passwd", name);
            emit(cli, json!({"user": name, "revoke_before": at}), || {
                format!(
                    "changed {name}'s master secret; every session of {name} made until {} is revoked",
                    utc(at)
                )
            });
        }
        UserCommand::Del { name } => {
            validate_user(name)?;
            let auth = open(cli)?;
            let at = auth.delete_user(name)?;
            admin(&auth, "user.del", name);
            emit(
                cli,
                json!({"user": name, "deleted": true, "revoke_before": at}),
                || format!("deleted user {name}; every session of {name} is revoked"),
            );
        }
        UserCommand::List => {
            let users = open(cli)?.users()?;
            emit(cli, json!({"users": users}), || {
                users
                    .iter()
                    .map(|u| {
                        if u.deleted {
                            format!("{} (deleted)", u.name)
                        } else {
                            u.name.clone()
                        }
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            });
        }
    }
    Ok(())
}

pub(crate) fn session(cli: &Cli, command: &SessionCommand) -> Result<(), Failure> {
    match command {
        SessionCommand::Create {
            user,
            description,
            ttl,
        } => {
            validate_user(user)?;
            let ttl_ms = parse_duration(ttl)?;
            let secret = first_line("master secret")?;
            let auth = open(cli)?;
            let s = auth.create_session(user, &secret, description, ttl_ms)?;
            let r = &s.record;
            let grant = Grant {
                token_id: Some(r.id.clone()),
                user: Some(r.user.clone()),
            };
            auth.audit(&grant, "cli", "session.create", &r.id, true);
            emit(
                cli,
                json!({
                    "session": r.id, "user": r.user, "description": r.description,
                    "expires": r.expires_ms, "expires_utc": utc(r.expires_ms), "token": s.token,
                }),
                || {
                    format!(
                        "session {} for {}, expires {}; its token (shown once):\n{}",
                        r.id,
                        r.user,
                        utc(r.expires_ms),
                        s.token
                    )
                },
            );
        }
        SessionCommand::List { user } => {
            if let Some(u) = user {
                validate_user(u)?;
            }
            let list = open(cli)?.sessions(user.as_deref())?;
            let sessions: Vec<serde_json::Value> = list.iter().map(|s| s.to_json()).collect();
            emit(cli, json!({"sessions": sessions}), || {
                list.iter()
                    .map(|s| {
                        let r = &s.record;
                        format!(
                            "{}  {:<16} {:<15} expires {}  {}",
                            r.id,
                            r.user,
                            s.state,
                            utc(r.expires_ms),
                            r.description
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            });
        }
        SessionCommand::Revoke { id } => {
            validate_id(id)?;
            let auth = open(cli)?;
            let r = auth.revoke_session(id, "revoked with `chorus session revoke`")?;
            admin(&auth, "session.revoke", id);
            emit(
                cli,
                json!({"revoked": id, "kind": "session", "user": r.user}),
                || {
                    format!(
                        "revoked session {id} of {}: its token and every token derived from it are refused",
                        r.user
                    )
                },
            );
        }
    }
    Ok(())
}

pub(crate) fn token(cli: &Cli, command: &TokenCommand) -> Result<(), Failure> {
    match command {
        TokenCommand::Create {
            scope,
            read_only,
            ttl,
        } => {
            let ttl_ms = parse_duration(ttl)?;
            chorus_node::auth::validate_scope(scope)?;
            let session_token = match std::env::var("CHORUS_TOKEN") {
                Ok(t) if !t.trim().is_empty() => t.trim().to_string(),
                _ => first_line("session token")?,
            };
            let access = if *read_only {
                TokenAccess::Read
            } else {
                TokenAccess::ReadWrite
            };
            let auth = open(cli)?;
            let claims = auth.verify_session(Some(&session_token))?;
            let t = auth.create_token(&claims, scope.clone(), access, ttl_ms)?;
            let r = &t.record;
            let grant = Grant {
                token_id: Some(claims.tid.clone()),
                user: Some(claims.sub.clone()),
            };
            auth.audit(&grant, "cli", "token.create", &r.id, true);
            emit(
                cli,
                json!({
                    "id": r.id, "session": r.session, "user": r.user, "scope": r.scope,
                    "access": r.access.as_str(), "expires": r.expires_ms,
                    "expires_utc": utc(r.expires_ms), "token": t.token,
                }),
                || {
                    format!(
                        "token {} (scope {}, {}), expires {}; the token (shown once):\n{}",
                        r.id,
                        r.scope.join(" "),
                        r.access.as_str(),
                        utc(r.expires_ms),
                        t.token
                    )
                },
            );
        }
        TokenCommand::Revoke { id } => {
            validate_id(id)?;
            let auth = open(cli)?;
            let r = auth.revoke_token(id, "revoked with `chorus token revoke`")?;
            admin(&auth, "token.revoke", id);
            emit(
                cli,
                json!({"revoked": id, "kind": "token", "user": r.user}),
                || format!("revoked token {id} of {}", r.user),
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_duration;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s").ok(), Some(30_000));
        assert_eq!(parse_duration("10m").ok(), Some(600_000));
        assert_eq!(parse_duration("8h").ok(), Some(28_800_000));
        assert_eq!(parse_duration("2d").ok(), Some(172_800_000));
        for bad in ["", "h", "10", "1.5h", "10x", "-1s", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
