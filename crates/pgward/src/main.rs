//! The `pgward` command: wires the library crates together; no proxy logic lives here.

mod audit_cmd;
#[cfg(feature = "dev-tools")]
mod demo;
mod dev_tools;
mod logging;
mod policy_cmd;
mod process;
#[cfg(feature = "dev-tools")]
mod token;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use pgward_proxy::{Config, Server};

#[derive(Parser)]
#[command(
    name = "pgward",
    version,
    about = "Identity-aware access proxy for PostgreSQL"
)]
#[cfg_attr(
    not(feature = "dev-tools"),
    command(
        after_help = "This is a production build: `demo`, `token` and `issuer` come \
                          only with the `dev-tools` feature (docs/cli.md)."
    )
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Serve {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a configuration; prints every problem and exits non-zero on any.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    // demo, issuer, token: only in builds with the `dev-tools` feature (dev_tools.rs).
    #[command(flatten)]
    Dev(dev_tools::DevCommand),
    /// Inspect the policy: `pgward policy explain` shows how a statement is decided.
    Policy(policy_cmd::PolicyArgs),
    /// Read the audit log: search, verify the hash chain, tail.
    // Boxed: its options are several times larger than every other command's.
    Audit(Box<audit_cmd::AuditArgs>),
}

fn main() -> ExitCode {
    // A file-size limit (RLIMIT_FSIZE) must surface as a write error the audit log can
    // act on (refusing statements), not kill the process with SIGXFSZ.
    // SAFETY: setting a signal disposition to SIG_IGN at start, before any threads.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve { config } => serve(&config),
        Command::Check { config } => return check(&config),
        Command::Dev(command) => command.run(),
        // Both choose their own exit status (deny, broken chain, usage error).
        Command::Policy(args) => return policy_cmd::run(args),
        Command::Audit(args) => return audit_cmd::run(*args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pgward: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn check(path: &Path) -> ExitCode {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let problems = config.problems();
    if problems.is_empty() {
        println!("{}: ok", path.display());
        ExitCode::SUCCESS
    } else {
        for p in &problems {
            eprintln!("{}: {p}", path.display());
        }
        eprintln!("{} problem(s)", problems.len());
        ExitCode::FAILURE
    }
}

fn serve(path: &Path) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    logging::init(&config.log)?;
    // Sessions run on their own workers ([listen] worker_threads); this runtime has the
    // accept loop and the background work (admin endpoint, refreshes, grants).
    let rt = process::runtime(2)?;
    rt.block_on(async {
        let server = Server::bind(config).await.map_err(anyhow::Error::msg)?;
        process::spawn_signal_handlers(server.handle().reloading_from(path))?;
        server.run().await;
        Ok(())
    })
}
