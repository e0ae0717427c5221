//! Who a validated token says the caller is.

use std::time::{Duration, SystemTime};

/// What kind of principal the token was issued to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdentityKind {
    /// A user (delegated token: `scp`, a UPN, or `idtyp = user`).
    Person,
    /// An application signing in as itself (app-only token).
    ServicePrincipal,
    /// A managed identity (app-only token with `xms_mirid`).
    ManagedIdentity,
}

/// The verified identity behind a token. `oid` + `tid` are the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Object id of the principal, lower case.
    pub oid: String,
    /// Tenant id, lower case.
    pub tid: String,
    /// Person, service principal or managed identity.
    pub kind: IdentityKind,
    /// `upn`, else `preferred_username`, else `unique_name` (people only in practice).
    pub upn: Option<String>,
    /// The client application: `appid` (v1) or `azp` (v2).
    pub appid: Option<String>,
    /// A managed identity's name: the last path segment of `xms_mirid`.
    pub mi_name: Option<String>,
    /// Group object ids (`groups` claim, or Microsoft Graph on overage).
    pub groups: Vec<String>,
    /// App roles (`roles` claim).
    pub roles: Vec<String>,
    /// The token's `exp`.
    pub expires_at: SystemTime,
    /// 1 or 2: which issuer form the token carried.
    pub token_version: u8,
}

impl Identity {
    /// How long a session authenticated by this token may still run at `now`: until
    /// `expires_at + grace`. Zero once that moment has passed; the proxy then ends the
    /// session with FATAL 28000 "token expired".
    pub fn session_remaining(&self, now: SystemTime, grace: Duration) -> Duration {
        let deadline = self.expires_at + grace;
        deadline.duration_since(now).unwrap_or(Duration::ZERO)
    }

    /// The name to show for this identity in logs and `application_name`: UPN, managed
    /// identity name, app id, else the object id.
    pub fn display_name(&self) -> &str {
        self.upn
            .as_deref()
            .or(self.mi_name.as_deref())
            .or(self.appid.as_deref())
            .unwrap_or(&self.oid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remaining_saturates() {
        let now = SystemTime::now();
        let id = Identity {
            oid: "o".into(),
            tid: "t".into(),
            kind: IdentityKind::Person,
            upn: None,
            appid: None,
            mi_name: None,
            groups: vec![],
            roles: vec![],
            expires_at: now + Duration::from_secs(10),
            token_version: 2,
        };
        assert_eq!(
            id.session_remaining(now, Duration::from_secs(5)),
            Duration::from_secs(15)
        );
        assert_eq!(
            id.session_remaining(now + Duration::from_secs(100), Duration::from_secs(5)),
            Duration::ZERO
        );
        assert_eq!(id.display_name(), "o");
    }
}
