//! pgward's own sign-in secret for an upstream: a `TokenSource` (crates/credentials)
//! for the upstream's kind, kept out of logs and errors.

pub use pgward_credentials::{Health, Secret, TokenSource};

use crate::config::UpstreamConfig;

/// Builds (without contacting anything) the token source of each role login of an upstream.
pub fn role_token_sources(
    cfg: &UpstreamConfig,
) -> Result<std::collections::HashMap<String, TokenSource>, String> {
    let mut out = std::collections::HashMap::new();
    for (role, c) in &cfg.role_logins {
        if c.user() != role {
            return Err(format!(
                "upstream {}: role_logins.{role}: the login's user must be the role's own name ({role:?}), not {:?}",
                cfg.name,
                c.user()
            ));
        }
        let name = format!("{}/{role}", cfg.name);
        let source = TokenSource::new(&name, c, cfg.kind.token_scope())
            .map_err(|e| format!("upstream {}: role_logins.{role}: {e}", cfg.name))?;
        out.insert(role.clone(), source);
    }
    Ok(out)
}

/// Builds (without contacting anything) the token source for an upstream.
pub fn token_source(cfg: &UpstreamConfig) -> Result<TokenSource, String> {
    TokenSource::new(&cfg.name, &cfg.credential, cfg.kind.token_scope())
        .map_err(|e| format!("upstream {}: {e}", cfg.name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{CredentialConfig, TlsMode, UpstreamKind};

    fn upstream(credential: CredentialConfig) -> UpstreamConfig {
        UpstreamConfig {
            name: "main".into(),
            kind: UpstreamKind::Postgres,
            host: "127.0.0.1".into(),
            port: 5432,
            tls: TlsMode::Disable,
            ca_file: None,
            connect_timeout_secs: 10,
            credential,
            role_logins: Default::default(),
            require_role_login: false,
            identity_table: false,
        }
    }

    #[tokio::test]
    async fn password_source_never_prints() {
        let s = token_source(&upstream(CredentialConfig::Password {
            user: "u".into(),
            password: Some(Secret::new("hunter2")),
            password_file: None,
            password_env: None,
        }))
        .unwrap();
        assert!(!format!("{s:?}").contains("hunter2"));
        assert_eq!(s.current().await.unwrap().expose(), "hunter2");
    }

    #[test]
    fn exactly_one_source() {
        let none = CredentialConfig::Password {
            user: "u".into(),
            password: None,
            password_file: None,
            password_env: None,
        };
        assert!(token_source(&upstream(none)).is_err());
        let env = CredentialConfig::Password {
            user: "u".into(),
            password: None,
            password_file: None,
            password_env: Some("PGWARD_TEST_SURELY_UNSET".into()),
        };
        let err = token_source(&upstream(env)).unwrap_err();
        assert!(err.contains("PGWARD_TEST_SURELY_UNSET"), "{err}");
        assert!(err.starts_with("upstream main:"), "{err}");
    }
}
