//! `[cluster]` (docs/configuration.md): which store, how it is reached, and what a replica
//! does while it can't be.

use std::path::PathBuf;
use std::time::Duration;

use pgward_upstream::{CredentialConfig, TlsMode};
use serde::Deserialize;

/// `[cluster]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// `postgres` or `redis`; the matching table below must be present.
    pub backend: Backend,
    /// What a replica does while the store cannot be reached: `local` (each replica enforces
    /// its share of every limit; cancels stay local) or `refuse` (53300 / 53400).
    #[serde(default)]
    pub on_store_error: OnStoreError,
    /// Bound on each store call; past it the call counts as failed.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// How long a replica's claims outlive it when it vanishes without closing its store
    /// connection (heartbeats run at a third of it). Default 15.
    #[serde(default = "default_lease_secs")]
    pub lease_secs: u64,
    /// The fewest replicas you run. While the store is unreachable (`on_store_error =
    /// "local"`), each replica enforces limits divided by the larger of this and the
    /// replicas alive at the last heartbeat. Default 1.
    #[serde(default = "default_replicas")]
    pub replicas: u32,
    pub postgres: Option<PostgresStore>,
    pub redis: Option<RedisStore>,
}

fn default_timeout_ms() -> u64 {
    500
}
fn default_lease_secs() -> u64 {
    15
}
fn default_replicas() -> u32 {
    1
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Backend {
    Postgres,
    Redis,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnStoreError {
    #[default]
    Local,
    Refuse,
}

/// `[cluster.postgres]`: the control database, reached like an upstream.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresStore {
    pub host: String,
    #[serde(default = "default_pg_port")]
    pub port: u16,
    /// The database holding the `pgward_cluster` schema (created at start).
    pub database: String,
    #[serde(default)]
    pub tls: TlsMode,
    pub ca_file: Option<PathBuf>,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_secs: u64,
    pub credential: CredentialConfig,
}

fn default_pg_port() -> u16 {
    5432
}
fn default_connect_timeout() -> u64 {
    5
}

/// `[cluster.redis]`: Redis 6+ or Azure Managed Redis.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisStore {
    pub host: String,
    #[serde(default = "default_redis_port")]
    pub port: u16,
    /// TLS with the host name verified (Azure Managed Redis requires it). Default true.
    #[serde(default = "default_true")]
    pub tls: bool,
    /// PEM bundle of CAs trusted; without it, the Mozilla roots.
    pub ca_file: Option<PathBuf>,
    /// Prefix of every key pgward writes (several pgward deployments can share a Redis).
    /// Keep a `{hash tag}` in it on a clustered Redis: pgward's scripts use several keys.
    #[serde(default = "default_prefix")]
    pub key_prefix: String,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_secs: u64,
    /// How pgward signs in: an Entra identity (`user` = the identity's object id, as Azure
    /// Managed Redis expects; the token is sent again before it expires) or a password.
    /// Absent: no AUTH.
    pub credential: Option<CredentialConfig>,
}

fn default_redis_port() -> u16 {
    6380
}
fn default_true() -> bool {
    true
}
fn default_prefix() -> String {
    // A hash tag: every key in one slot of a clustered Redis, as multi-key scripts need.
    "{pgward}:".to_owned()
}

impl ClusterConfig {
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        match (self.backend, &self.postgres, &self.redis) {
            (Backend::Postgres, None, _) => {
                p.push("[cluster] backend = \"postgres\" needs a [cluster.postgres] table".into())
            }
            (Backend::Redis, _, None) => {
                p.push("[cluster] backend = \"redis\" needs a [cluster.redis] table".into())
            }
            _ => {}
        }
        if self.timeout_ms == 0 || self.timeout_ms > 60_000 {
            p.push("[cluster] timeout_ms must be between 1 and 60000".into());
        }
        if !(3..=3600).contains(&self.lease_secs) {
            p.push("[cluster] lease_secs must be between 3 and 3600".into());
        }
        if self.replicas == 0 {
            p.push("[cluster] replicas must be at least 1".into());
        }
        if let Some(pg) = &self.postgres {
            p.extend(
                pg.credential
                    .problems()
                    .into_iter()
                    .map(|e| format!("[cluster.postgres.credential] {e}")),
            );
        }
        if let Some(r) = &self.redis {
            if let Some(c) = &r.credential {
                p.extend(
                    c.problems()
                        .into_iter()
                        .map(|e| format!("[cluster.redis.credential] {e}")),
                );
            }
        }
        p
    }

    /// Makes relative paths relative to the configuration file's directory.
    pub fn resolve_paths(&mut self, base: &std::path::Path) {
        let fix = |p: &mut Option<PathBuf>| {
            if let Some(p) = p {
                if p.is_relative() {
                    *p = base.join(&*p);
                }
            }
        };
        if let Some(pg) = &mut self.postgres {
            fix(&mut pg.ca_file);
            pg.credential.resolve_paths(base);
        }
        if let Some(r) = &mut self.redis {
            fix(&mut r.ca_file);
            if let Some(c) = &mut r.credential {
                c.resolve_paths(base);
            }
        }
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    pub fn lease(&self) -> Duration {
        Duration::from_secs(self.lease_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_problems_are_reported() {
        let c: ClusterConfig =
            toml::from_str("backend = \"postgres\"\ntimeout_ms = 0\nlease_secs = 1\nreplicas = 0")
                .unwrap();
        let p = c.problems().join("\n");
        assert!(p.contains("[cluster.postgres]"), "{p}");
        assert!(p.contains("timeout_ms"), "{p}");
        assert!(p.contains("lease_secs"), "{p}");
        assert!(p.contains("replicas"), "{p}");
        let ok: ClusterConfig = toml::from_str(
            "backend = \"redis\"\non_store_error = \"refuse\"\n[redis]\nhost = \"r\"\n",
        )
        .unwrap();
        assert!(ok.problems().is_empty(), "{:?}", ok.problems());
        assert_eq!(ok.on_store_error, OnStoreError::Refuse);
        assert!(ok.redis.unwrap().tls);
    }
}
