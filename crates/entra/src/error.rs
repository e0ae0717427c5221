//! Why a token was refused.

use std::fmt;

/// The exact reason a sign-in was refused, for the server log and the audit.
///
/// Clients only ever see a generic "authentication failed" (SQLSTATE 28000). The
/// `Display` text never contains the token or its signature: values taken from the
/// token (algorithm, key id, audience, issuer, tenant) are claim or header values,
/// shortened and stripped of control characters by [`Shown`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// No token was sent (empty password).
    #[error("no token: the password is empty")]
    Missing,
    /// The token is longer than the 64 KiB limit.
    #[error("token too large: {0} bytes (limit 65536)")]
    TooLarge(usize),
    /// Not a compact JWS (three base64url parts holding a JSON header and payload).
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    /// The header names an algorithm other than RS256 (`none`, HS*, ES*, PS* ...).
    #[error("unsupported token algorithm {0} (only RS256 is accepted)")]
    UnsupportedAlg(Shown),
    /// The header names no key id.
    #[error("token header has no kid")]
    MissingKid,
    /// No published signing key has this key id (after any allowed JWKS re-fetch).
    #[error("unknown signing key id {0}")]
    UnknownKid(Shown),
    /// The signature does not verify with the key the header names.
    #[error("bad signature (key id {0})")]
    BadSignature(Shown),
    /// `exp` is past, beyond the clock skew.
    #[error("token expired at {exp} (now {now}, clock skew {skew}s)")]
    Expired {
        /// The token's `exp` (Unix seconds).
        exp: i64,
        /// The validator's clock (Unix seconds).
        now: i64,
        /// The configured skew.
        skew: u64,
    },
    /// `nbf` is in the future, beyond the clock skew.
    #[error("token not valid before {nbf} (now {now}, clock skew {skew}s)")]
    NotYetValid {
        /// The token's `nbf` (Unix seconds).
        nbf: i64,
        /// The validator's clock (Unix seconds).
        now: i64,
        /// The configured skew.
        skew: u64,
    },
    /// A required claim is absent.
    #[error("token lacks the {0} claim")]
    MissingClaim(&'static str),
    /// A claim has the wrong type or form.
    #[error("token claim {0} is invalid")]
    InvalidClaim(&'static str),
    /// `aud` is not one of the configured audiences.
    #[error("wrong audience {0}")]
    WrongAudience(Shown),
    /// `iss` is neither the tenant's v2 nor its v1 issuer.
    #[error("wrong issuer {0}")]
    WrongIssuer(Shown),
    /// `tid` is not an allowed tenant.
    #[error("wrong tenant {0}")]
    WrongTenant(Shown),
    /// The user name the client sent is not bound to the token's identity.
    #[error("user name {user} is not bound to the token (oid {oid})")]
    UserNameNotBound {
        /// The user name the client sent.
        user: Shown,
        /// The token's object id.
        oid: String,
    },
    /// The token has a groups overage and `groups_overage = "refuse"`.
    #[error("groups overage: the token names _claim_names instead of carrying groups, and entra.groups_overage = \"refuse\"")]
    GroupsOverage,
    /// Resolving a groups overage through Microsoft Graph failed.
    #[error("groups overage: Microsoft Graph lookup failed: {0}")]
    GraphFailed(String),
    /// No signing keys could be loaded (discovery or JWKS unreachable since start).
    #[error("signing keys unavailable: {0}")]
    KeysUnavailable(String),
}

impl AuthError {
    /// A short stable label for metrics (`reason="expired"` and so on).
    pub fn label(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::TooLarge(_) => "too_large",
            AuthError::Malformed(_) => "malformed",
            AuthError::UnsupportedAlg(_) => "unsupported_alg",
            AuthError::MissingKid => "missing_kid",
            AuthError::UnknownKid(_) => "unknown_kid",
            AuthError::BadSignature(_) => "bad_signature",
            AuthError::Expired { .. } => "expired",
            AuthError::NotYetValid { .. } => "not_yet_valid",
            AuthError::MissingClaim(_) => "missing_claim",
            AuthError::InvalidClaim(_) => "invalid_claim",
            AuthError::WrongAudience(_) => "wrong_audience",
            AuthError::WrongIssuer(_) => "wrong_issuer",
            AuthError::WrongTenant(_) => "wrong_tenant",
            AuthError::UserNameNotBound { .. } => "user_name_not_bound",
            AuthError::GroupsOverage => "groups_overage",
            AuthError::GraphFailed(_) => "graph_failed",
            AuthError::KeysUnavailable(_) => "keys_unavailable",
        }
    }
}

/// A value taken from an untrusted token or client, made safe for a log line: at most
/// 64 characters, control characters replaced, shown quoted.
#[derive(Clone, PartialEq, Eq)]
pub struct Shown(String);

impl Shown {
    const MAX: usize = 64;

    /// Sanitises `raw` for display.
    pub fn new(raw: &str) -> Self {
        let mut s: String = raw
            .chars()
            .take(Self::MAX)
            .map(|c| if c.is_control() { '?' } else { c })
            .collect();
        if raw.chars().count() > Self::MAX {
            s.push('…');
        }
        Shown(s)
    }

    /// The sanitised text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Shown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl fmt::Debug for Shown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shown_is_bounded_and_clean() {
        let s = Shown::new(&format!("a\nb{}", "x".repeat(200)));
        assert!(s.as_str().starts_with("a?b"));
        assert!(s.as_str().chars().count() <= 65);
        assert!(s.to_string().starts_with('"'));
    }
}
