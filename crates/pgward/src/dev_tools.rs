//! `pgward demo`, `pgward token` and `pgward issuer`: development tools, compiled in only
//! with the `dev-tools` cargo feature (off by default). Production builds — the container
//! image, the Helm chart's image, the systemd install — leave it off, so their dependency
//! tree holds no devkit, no certificate generation and no code that mints or forges
//! tokens. In those builds the three names still parse (hidden from `--help`), so someone
//! following the demo instructions with the wrong binary is told why, not just that the
//! subcommand is unknown.

use clap::Subcommand;

/// The development subcommands, flattened into the top-level command list.
#[cfg(feature = "dev-tools")]
#[derive(Subcommand)]
pub enum DevCommand {
    /// One-command local trial: a throwaway PostgreSQL with sample data and pgward in
    /// front of it on 127.0.0.1. Ctrl-C removes everything it made.
    Demo {
        #[arg(long, default_value_t = 6432)]
        port: u16,
    },
    /// Run the development token issuer alone (OIDC discovery, JWKS and minting on
    /// loopback) for benchmarks and local testing. Never trusted unless a config's
    /// [entra] authority names it.
    Issuer {
        /// Loopback address to serve on.
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: std::net::SocketAddr,
        /// Tenant id the issuer signs for.
        #[arg(long, default_value = pgward_devkit::entra_issuer::DEMO_TENANT)]
        tenant: String,
    },
    /// Mint an access token from a running demo's development issuer. Such tokens are
    /// trusted only by a pgward whose [entra] authority is that issuer.
    Token(crate::token::TokenArgs),
}

#[cfg(feature = "dev-tools")]
impl DevCommand {
    pub fn run(self) -> anyhow::Result<()> {
        match self {
            DevCommand::Demo { port } => crate::demo::run(port),
            DevCommand::Token(args) => crate::token::run(args),
            DevCommand::Issuer { listen, tenant } => crate::token::serve_issuer(listen, &tenant),
        }
    }
}

/// The development subcommands' names in a build without them: each only explains.
#[cfg(not(feature = "dev-tools"))]
#[derive(Subcommand)]
pub enum DevCommand {
    #[command(hide = true, disable_help_flag = true)]
    Demo(Absent),
    #[command(hide = true, disable_help_flag = true)]
    Issuer(Absent),
    #[command(hide = true, disable_help_flag = true)]
    Token(Absent),
}

/// Whatever arguments the full build's subcommand would have taken (`--port`, `--help`…),
/// accepted unread so the explanation, not an argument error, is what the user sees.
#[cfg(not(feature = "dev-tools"))]
#[derive(clap::Args)]
pub struct Absent {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
    _args: Vec<String>,
}

#[cfg(not(feature = "dev-tools"))]
impl DevCommand {
    pub fn run(self) -> anyhow::Result<()> {
        let name = match self {
            DevCommand::Demo(_) => "demo",
            DevCommand::Issuer(_) => "issuer",
            DevCommand::Token(_) => "token",
        };
        anyhow::bail!(
            "`pgward {name}` is one of the development tools, which this production build of \
             pgward leaves out (they come with the `dev-tools` feature). Run the demo with \
             scripts/demo, or build with `cargo build -p pgward --features dev-tools` \
             (docs/cli.md)"
        )
    }
}
