//! deploy/ passes the checks that can run here (deploy/validate.py; docs/operations.md says
//! what they cover and what they don't): `helm lint --strict` and template rendering with
//! Helm's Go SDK, Kubernetes schema validation of the rendered objects, a Bicep parse with
//! resource checks, hadolint on the Dockerfile, `systemd-analyze verify` and `security` on
//! the unit, and `pgward check` on every configuration the artifacts produce.

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
        "ok chart refuses",
        "ok bicep parsed",
        "ok Dockerfile: hadolint clean",
        "ok systemd unit",
        "ok pgward check bicep.toml",
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
