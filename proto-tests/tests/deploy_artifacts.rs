//! deploy/ passes the checks that can run here (deploy/validate.py; docs/operations.md says
//! what they cover and what they don't): `helm lint --strict` and template rendering with
//! Helm's Go SDK, Kubernetes schema validation of the rendered objects, a Bicep parse with
//! resource checks, hadolint on the Dockerfile, `systemd-analyze verify` and `security` on
//! the unit, and `pgward check` on every configuration the artifacts produce — with and
//! without a `[cluster]` store (a PostgreSQL control database or Redis). And the
//! production build they describe (no `dev-tools` feature) links none of the test
//! stand-ins: no devkit, no rcgen, no code that mints or forges tokens.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use pgward_proto_tests::*;

#[test]
fn deploy_artifacts_pass_the_available_validation() {
    let started = Instant::now();
    let dir = tempfile::Builder::new()
        .prefix("pgward-deploy-")
        .tempdir()
        .unwrap();
    let certs = pgward_devkit::certs::generate(dir.path(), "deploy", &["localhost"]).unwrap();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/validate.py");
    let out = Command::new(python())
        .arg(&script)
        .arg(dir.path().join("out"))
        .env("PGWARD_BIN", pgward_bin())
        .env("PGWARD_TEST_CERT", &certs.cert)
        .env("PGWARD_TEST_KEY", &certs.key)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "deploy/validate.py failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for check in [
        "ok helm lint --strict",
        "ok helm template [default]",
        "ok chart cross-references [default]",
        "ok helm template [monitoring+hmac+clusterip]",
        "ok helm template [cluster-postgres]",
        "ok chart cross-references [cluster-postgres]",
        "ok helm template [cluster-redis]",
        "ok chart cross-references [cluster-redis]",
        "ok chart refuses",
        "ok bicep parsed",
        "ok Dockerfile: hadolint clean",
        "ok systemd unit",
        "ok pgward check bicep.toml",
        "ok pgward check bicep-redis.toml",
        "ok pgward check helm-cluster-postgres.toml",
        "ok pgward check helm-cluster-redis.toml",
        "ok pgward check helm-default.toml",
        "ok pgward check systemd.toml",
        "all deploy checks passed",
    ] {
        assert!(
            stdout.lines().any(|l| l.starts_with(check)),
            "missing `{check}` in:\n{stdout}"
        );
    }
    eprintln!("{stdout}deploy validation took {:?}", started.elapsed());
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The arguments of the `cargo build` an artifact's build runs (continuation lines joined),
/// up to the end of that shell command.
fn cargo_build_args(artifact: &str) -> Vec<String> {
    let text = std::fs::read_to_string(repo_root().join(artifact)).unwrap();
    let joined = text.replace("\\\n", " ");
    let line = joined
        .lines()
        .find(|l| l.contains("cargo build"))
        .unwrap_or_else(|| panic!("{artifact} names no `cargo build`"));
    let after = line.split_once("cargo build").unwrap().1;
    let command = after.split(['&', ';', '|']).next().unwrap_or_default();
    command
        .split_whitespace()
        .take_while(|w| !w.starts_with('#') && !w.starts_with('('))
        .map(str::to_string)
        .collect()
}

/// One package of `cargo tree --prefix none --format {p}`: its name and, for workspace
/// crates, its directory.
struct TreePackage {
    name: String,
    dir: Option<PathBuf>,
}

/// The normal (non-dev, non-build) dependency tree of a build with these cargo arguments.
/// `None` when there is no cargo to ask.
fn normal_tree(build_args: &[String]) -> Option<Vec<TreePackage>> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    // A profile changes nothing in the tree; `cargo tree` does not take one.
    let args: Vec<&String> = build_args.iter().filter(|a| *a != "--release").collect();
    let out = match Command::new(&cargo)
        .current_dir(repo_root())
        .args([
            "tree", "-e", "normal", "--prefix", "none", "--format", "{p}",
        ])
        .args(&args)
        .output()
    {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => panic!("running {cargo:?} tree: {e}"),
    };
    assert!(
        out.status.success(),
        "cargo tree {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let packages: Vec<TreePackage> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let name = l.split_whitespace().next().unwrap_or_default().to_string();
            let dir = l
                .split_once(" (/")
                .and_then(|(_, rest)| rest.split_once(')'))
                .map(|(path, _)| PathBuf::from(format!("/{path}")));
            TreePackage { name, dir }
        })
        .collect();
    assert!(
        packages.iter().any(|p| p.name == "pgward"),
        "cargo tree {args:?} did not show pgward"
    );
    Some(packages)
}

/// What defines the development issuer and its forged tokens (crates/devkit's
/// entra_issuer.rs): no source file of a production build's crates may contain these.
const FORGERY_MARKERS: [&str; 4] = [
    "enum Forgery",
    "fn forge(",
    "struct DevIssuer",
    "struct TokenSpec",
];

/// Workspace crates in `tree` whose sources define the issuer or forgery code, with the
/// marker found.
fn crates_with_forgery_code(tree: &[TreePackage]) -> Vec<(String, &'static str)> {
    fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                rust_files(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let mut found = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for p in tree {
        let Some(dir) = &p.dir else { continue };
        if !seen.insert(dir.clone()) {
            continue;
        }
        let mut files = Vec::new();
        rust_files(&dir.join("src"), &mut files);
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap();
            if let Some(m) = FORGERY_MARKERS.iter().find(|m| text.contains(*m)) {
                found.push((format!("{} ({})", p.name, f.display()), *m));
            }
        }
    }
    found
}

/// The container image (which the Helm chart deploys) and the systemd install are built
/// without `dev-tools`: their tree has no devkit, no rcgen, no token-forging code and no
/// `ring`. The dev-tools build is checked the same way as a control, so the checks are
/// seen to find what they look for.
#[test]
fn production_builds_link_no_test_stand_ins() {
    for artifact in ["deploy/Dockerfile", "deploy/systemd/pgward.service"] {
        let args = cargo_build_args(artifact);
        assert!(
            args.windows(2).any(|w| w[0] == "-p" && w[1] == "pgward"),
            "{artifact} builds {args:?}, not -p pgward"
        );
        assert!(
            !args
                .iter()
                .any(|a| a.contains("dev-tools") || a == "--all-features"),
            "{artifact} turns the development tools on: {args:?}"
        );
        let Some(tree) = normal_tree(&args) else {
            eprintln!("skipped: no cargo to run `cargo tree` with");
            return;
        };
        for banned in ["pgward-devkit", "rcgen", "ring"] {
            assert!(
                !tree.iter().any(|p| p.name == banned),
                "the build of {artifact} ({args:?}) links {banned}"
            );
        }
        let forgery = crates_with_forgery_code(&tree);
        assert!(
            forgery.is_empty(),
            "the build of {artifact} links token-forging code: {forgery:?}"
        );
    }

    let dev: Vec<String> = ["--locked", "-p", "pgward", "--features", "dev-tools"]
        .map(String::from)
        .to_vec();
    let tree = normal_tree(&dev).expect("cargo ran a moment ago");
    for wanted in ["pgward-devkit", "rcgen"] {
        assert!(
            tree.iter().any(|p| p.name == wanted),
            "the dev-tools build does not link {wanted}: is the check looking at the right tree?"
        );
    }
    assert!(
        !tree.iter().any(|p| p.name == "ring"),
        "dev-tools build links ring"
    );
    let forgery = crates_with_forgery_code(&tree);
    assert!(
        forgery.iter().any(|(c, _)| c.starts_with("pgward-devkit ")),
        "the forgery markers were not found in devkit: {forgery:?}"
    );
}
