//! Writes one record of each event kind to a temporary log and prints it, verified:
//! the samples in docs/audit.md come from here.
//! `cargo run -p pgward-audit --example sample`

use pgward_audit::*;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("pgward.jsonl");
    let log = AuditLogBuilder::new("pgward-0")
        .file(&path)
        .redaction(Redaction::Types)
        .open()?;
    let info = SessionInfo {
        session: "7f3a9c".into(),
        client: Client {
            addr: "203.0.113.7:52144".into(),
            user: Some("alice@contoso.com".into()),
            application_name: Some("psql".into()),
            tls: true,
            tls_version: Some("TLSv1.3".into()),
        },
        identity: Some(Identity {
            oid: Some("9c3f8c1e-5a1b-4d7e-8f00-2b6c1d0e4a11".into()),
            tid: Some("72f988bf-86f1-41af-91ab-2d7cd011db47".into()),
            upn: Some("alice@contoso.com".into()),
            appid: Some("04b07795-8ddb-461a-bbee-02f9e1bf7b46".into()),
            roles: vec!["analyst".into()],
        }),
        database: Some("app".into()),
    };
    let s = log.session(&info);
    s.connect(&Connect {
        upstream: Some("main"),
        upstream_role: Some("analyst_ro"),
    })
    .await?;
    let params = Params::capture(
        log.redaction(),
        [ParamIn {
            type_oid: 23,
            value: Some(b"42"),
            binary: false,
        }],
    );
    s.statement(&Statement {
        sql: "SELECT id, total FROM public.orders WHERE customer_id = $1",
        params: params.as_ref(),
        protocol: Protocol::Extended,
        objects: &[ObjectAction {
            object: "public.orders",
            action: "select",
        }],
        decision: Decision::Allow,
        rule: Some("analyst"),
        outcome: Outcome {
            command_tag: Some("SELECT 3"),
            rows: Some(3),
            ..Outcome::default()
        },
        duration_us: 1840,
    })
    .await?;
    s.statement(&Statement {
        sql: "DELETE FROM hr.salaries",
        objects: &[ObjectAction {
            object: "hr.salaries",
            action: "delete",
        }],
        decision: Decision::Deny,
        rule: Some("analyst: deny *.salaries"),
        outcome: Outcome {
            sqlstate: Some("42501"),
            message: Some("pgward: permission denied by rule \"analyst: deny *.salaries\""),
            ..Outcome::default()
        },
        duration_us: 95,
        ..Statement::default()
    })
    .await?;
    s.disconnect(&Disconnect {
        duration_us: 73_512_004,
        statements: 2,
        bytes_in: 412,
        bytes_out: 1830,
        reason: Some("client terminated"),
    })
    .await?;
    let failed = SessionInfo {
        session: "7f3a9d".into(),
        client: Client {
            addr: "198.51.100.23:40022".into(),
            user: Some("mallory@contoso.com".into()),
            application_name: Some("DBeaver 24.1".into()),
            tls: true,
            tls_version: Some("TLSv1.3".into()),
        },
        identity: None,
        database: Some("app".into()),
    };
    log.session(&failed)
        .auth_failed("token expired at 1763829000 (now 1763832611, clock skew 60s)")
        .await?;
    log.close("shutdown").await?;
    print!("{}", std::fs::read_to_string(&path)?);
    let report = verify(&[path], None)?;
    eprintln!("verify ok: {}", report.is_ok());
    Ok(())
}
