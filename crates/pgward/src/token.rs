//! `pgward token`: asks a running development issuer (started by `pgward demo`) to mint
//! an access token, and prints it. For demos and local testing only.

use anyhow::Context;
use clap::Args;
use pgward_devkit::entra_issuer::{mint_remote, TokenSpec};

#[derive(Args)]
pub struct TokenArgs {
    /// The development issuer's URL, as `pgward demo` prints it.
    #[arg(long)]
    issuer: String,
    /// A person's user principal name, e.g. alice@contoso.com.
    #[arg(long, conflicts_with_all = ["managed_identity", "service_principal"])]
    user: Option<String>,
    /// A managed identity's name (sign in with that name as the user).
    #[arg(long)]
    managed_identity: Option<String>,
    /// A service principal's application id (sign in with its object id as the user).
    #[arg(long)]
    service_principal: Option<String>,
    /// Group object ids to put in the `groups` claim.
    #[arg(long = "group")]
    groups: Vec<String>,
    /// App roles to put in the `roles` claim.
    #[arg(long = "role")]
    roles: Vec<String>,
    /// Token lifetime in seconds.
    #[arg(long, default_value_t = 3600)]
    lifetime: i64,
    /// Mint a v1 token (sts.windows.net-style issuer) instead of v2.
    #[arg(long)]
    v1: bool,
}

pub fn run(args: TokenArgs) -> anyhow::Result<()> {
    let mut spec = if let Some(mi) = &args.managed_identity {
        TokenSpec::managed_identity(mi)
    } else if let Some(app) = &args.service_principal {
        TokenSpec::service_principal(app)
    } else {
        let user = args.user.as_deref().context(
            "say who the token is for: --user, --managed-identity or --service-principal",
        )?;
        TokenSpec::user(user)
    };
    spec.groups = args.groups;
    spec.roles = args.roles;
    spec.lifetime_secs = args.lifetime;
    if args.v1 {
        spec = spec.v1();
    }
    let rt = crate::process::runtime(1)?;
    let token = rt
        .block_on(mint_remote(&args.issuer, &spec))
        .with_context(|| format!("cannot mint a token from {}", args.issuer))?;
    println!("{token}");
    Ok(())
}

/// `pgward issuer`: serves the development issuer until Ctrl-C or SIGTERM. Prints the
/// authority URL on the first line of stdout, so scripts can read it.
pub fn serve_issuer(listen: std::net::SocketAddr, tenant: &str) -> anyhow::Result<()> {
    let rt = crate::process::runtime(1)?;
    rt.block_on(async {
        let issuer = pgward_devkit::entra_issuer::DevIssuer::start(listen, tenant)
            .await
            .map_err(|e| anyhow::anyhow!("development issuer: {e}"))?;
        println!("{}", issuer.authority());
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        drop(issuer);
        anyhow::Ok(())
    })
}
