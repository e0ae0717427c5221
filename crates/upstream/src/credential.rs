//! pgward's own sign-in secret for an upstream, kept out of logs and errors.

use std::fmt;

use crate::config::CredentialConfig;

/// A secret string whose Debug and Display never show the value.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: String) -> Self {
        Self(s)
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

/// The user name and password pgward presents upstream.
#[derive(Debug, Clone)]
pub struct Credential {
    pub user: String,
    pub password: Secret,
}

impl Credential {
    /// Resolves the configured source. Errors name the source, never the value.
    pub fn load(cfg: &CredentialConfig) -> Result<Self, String> {
        match cfg {
            CredentialConfig::Password {
                user,
                password,
                password_file,
                password_env,
            } => {
                let sources = [
                    password.is_some(),
                    password_file.is_some(),
                    password_env.is_some(),
                ]
                .iter()
                .filter(|s| **s)
                .count();
                if sources != 1 {
                    return Err(
                        "credential type \"password\" needs exactly one of password, password_file, password_env"
                            .into(),
                    );
                }
                let value = if let Some(p) = password {
                    p.clone()
                } else if let Some(path) = password_file {
                    let text = std::fs::read_to_string(path).map_err(|e| {
                        format!("cannot read password_file {}: {e}", path.display())
                    })?;
                    text.trim_end_matches(['\n', '\r']).to_owned()
                } else if let Some(var) = password_env {
                    std::env::var(var).map_err(|_| {
                        format!("environment variable {var} (password_env) is not set")
                    })?
                } else {
                    unreachable!("exactly one source was checked above")
                };
                Ok(Self {
                    user: user.clone(),
                    password: Secret(value),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_never_prints() {
        let c = Credential {
            user: "u".into(),
            password: Secret::new("hunter2".into()),
        };
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn exactly_one_source() {
        let none = CredentialConfig::Password {
            user: "u".into(),
            password: None,
            password_file: None,
            password_env: None,
        };
        assert!(Credential::load(&none).is_err());
        let env = CredentialConfig::Password {
            user: "u".into(),
            password: None,
            password_file: None,
            password_env: Some("PGWARD_TEST_SURELY_UNSET".into()),
        };
        let err = Credential::load(&env).unwrap_err();
        assert!(err.contains("PGWARD_TEST_SURELY_UNSET"));
    }
}
