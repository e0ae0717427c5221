//! azure-cli: the SDK runs `az account get-access-token`; a fake `az` on PATH answers
//! like Azure CLI 2.54+. Alone in its test binary because it changes PATH.

// Test code: a failed step should panic with its message.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::time::{SystemTime, UNIX_EPOCH};

use pgward_credentials::{CredentialConfig, TokenSource, POSTGRES_SCOPE};

#[test]
fn azure_cli_token_from_a_fake_az() {
    let dir = std::env::temp_dir().join(format!("pgward-fake-az-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let expires = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let args_file = dir.join("args");
    let script = format!(
        "#!/bin/sh\necho \"$@\" > '{}'\ncat <<JSON\n{{\"accessToken\": \"cli-token\", \"expiresOn\": \"2030-01-01 00:00:00.000000\", \"expires_on\": {expires}, \"subscription\": \"s\", \"tenant\": \"t\", \"tokenType\": \"Bearer\"}}\nJSON\n",
        args_file.display()
    );
    let az = dir.join("az");
    std::fs::write(&az, script).unwrap();
    std::fs::set_permissions(&az, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    // Before any runtime thread exists.
    std::env::set_var("PATH", path);

    let cfg: CredentialConfig = toml::from_str(
        "type = \"azure-cli\"\nuser = \"dev@contoso.com\"\ntenant_id = \"72f988bf-86f1-41af-91ab-2d7cd011db47\"",
    )
    .unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let src = TokenSource::new("main", &cfg, POSTGRES_SCOPE).unwrap();
        assert_eq!(src.current().await.unwrap().expose(), "cli-token");
        let left = src.health().seconds_until_expiry().unwrap();
        assert!(left > 3500.0 && left <= 3600.0, "{left}");
        assert_eq!(src.user(), "dev@contoso.com");
    });
    let args = std::fs::read_to_string(&args_file).unwrap();
    assert!(args.contains("account get-access-token"), "{args}");
    assert!(
        args.contains(&format!("--scope {POSTGRES_SCOPE}")),
        "{args}"
    );
    assert!(
        args.contains("--tenant 72f988bf-86f1-41af-91ab-2d7cd011db47"),
        "{args}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
