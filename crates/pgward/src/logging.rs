//! Structured logs on stderr, text or JSON. `PGWARD_LOG` overrides the configured filter.

use anyhow::Context;
use pgward_proxy::config::{LogConfig, LogFormat};
use tracing_subscriber::EnvFilter;

pub fn init(cfg: &LogConfig) -> anyhow::Result<()> {
    let filter = match std::env::var("PGWARD_LOG") {
        Ok(f) => EnvFilter::try_new(f).context("PGWARD_LOG is not a valid filter")?,
        Err(_) => EnvFilter::try_new(&cfg.level).context("[log] level is not a valid filter")?,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match cfg.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    result.map_err(|e| anyhow::anyhow!("cannot start logging: {e}"))
}
