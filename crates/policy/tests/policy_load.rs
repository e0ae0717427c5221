//! Policy loading: validation errors name the line, role mapping.

use pgward_policy::{Mode, Policy, Principal};

fn problems(text: &str) -> Vec<(usize, String)> {
    match Policy::from_toml(text) {
        Ok(_) => panic!("policy should not load:\n{text}"),
        Err(e) => e
            .problems
            .into_iter()
            .map(|p| (p.line, p.message))
            .collect(),
    }
}

const GOOD: &str = r#"
mode = "observe"
search_path = ["app", "public"]

[baseline]
catalog_reads = true
settings = ["application_name", "TimeZone"]

[[roles]]
name = "analyst"
members = { groups = ["AAAAAAAA-0000-0000-0000-000000000001"], app_roles = ["Data.Read"], users = ["Alice@Contoso.com", "00000000-0000-0000-0000-0000000000b0"] }
upstream_role = "analyst_ro"
allow = [ { actions = ["select"], objects = ["public.orders", "reporting.*"] } ]
deny  = [ { objects = ["*.salaries"] } ]

[[roles]]
name = "writer"
members = { app_roles = ["Data.Write"] }
upstream_role = "writer_rw"
allow = [ { name = "write_orders", actions = ["insert", "update"], objects = ["public.orders"] } ]
"#;

#[test]
fn good_policy_loads() {
    let p = Policy::from_toml(GOOD).unwrap();
    assert_eq!(p.mode(), Mode::Observe);
    assert_eq!(p.default_search_path(), ["app", "public"]);
    assert_eq!(p.role_names().collect::<Vec<_>>(), ["analyst", "writer"]);
}

#[test]
fn roles_from_every_kind_of_member() {
    let p = Policy::from_toml(GOOD).unwrap();
    let by_upn = p.roles_for(&Principal {
        upn: "alice@contoso.COM".into(),
        ..Default::default()
    });
    assert_eq!(by_upn.names(), ["analyst"]);
    let by_oid = p.roles_for(&Principal {
        oid: "00000000-0000-0000-0000-0000000000B0".into(),
        ..Default::default()
    });
    assert_eq!(by_oid.names(), ["analyst"]);
    let by_group = p.roles_for(&Principal {
        groups: vec!["aaaaaaaa-0000-0000-0000-000000000001".into()],
        ..Default::default()
    });
    assert_eq!(by_group.names(), ["analyst"]);
    let both = p.roles_for(&Principal {
        app_roles: vec!["Data.Read".into(), "Data.Write".into()],
        ..Default::default()
    });
    assert_eq!(both.names(), ["analyst", "writer"]);
    assert_eq!(p.upstream_role(&both), Some("analyst_ro"));
    // App role values are case-sensitive, as Entra issues them.
    assert!(p
        .roles_for(&Principal {
            app_roles: vec!["data.read".into()],
            ..Default::default()
        })
        .is_empty());
    let nobody = p.roles_for(&Principal {
        upn: "mallory@contoso.com".into(),
        ..Default::default()
    });
    assert!(nobody.is_empty());
    assert_eq!(p.upstream_role(&nobody), None);
    // Empty claims never match (an empty upn must not match a role listing "").
    assert!(p.roles_for(&Principal::default()).is_empty());
}

#[test]
fn roles_named() {
    let p = Policy::from_toml(GOOD).unwrap();
    assert_eq!(
        p.roles_named(&["writer", "analyst"]).unwrap().names(),
        ["analyst", "writer"]
    );
    assert!(p.roles_named(&["nope"]).is_err());
}

#[test]
fn role_set_from_another_policy_grants_nothing() {
    let p = Policy::from_toml(GOOD).unwrap();
    let other = Policy::from_toml(&GOOD.replace(
        "public.orders\", \"reporting",
        "public.customers\", \"reporting",
    ))
    .unwrap();
    let roles = other.roles_named(&["analyst"]).unwrap();
    let session = pgward_policy::SessionState::new(&p);
    let d = p.decide_query(&roles, "SELECT * FROM public.orders", &session);
    assert_eq!(d.decision.rule, "default_deny");
}

#[test]
fn syntax_error_has_line() {
    let e = problems("mode = \"enforce\"\n\n[[roles]]\nname = \n");
    assert_eq!(e[0].0, 4, "{e:?}");
}

#[test]
fn unknown_keys_are_errors() {
    let e = problems("mode = \"enforce\"\nsearch_paths = [\"x\"]\n");
    assert_eq!(e[0].0, 2, "{e:?}");
    assert!(e[0].1.contains("search_paths"), "{e:?}");
    let e = problems("[[roles]]\nname = \"a\"\nmembers = { users = [\"x\"] }\nallow = [ { actions = [\"select\"], object = [\"a.b\"] } ]\n");
    assert_eq!(e[0].0, 4, "{e:?}");
    let e = problems("[[roles]]\nname = \"a\"\nmembers = { user = [\"x\"] }\n");
    assert_eq!(e[0].0, 3, "{e:?}");
}

#[test]
fn semantic_errors_have_lines_and_are_all_reported() {
    let text = r#"mode = "audit"
[[roles]]
name = "a"
members = { users = ["x@y"] }
allow = [
  { actions = ["selct"], objects = ["public.orders"] },
  { actions = ["select"], objects = ["orders"] },
  { actions = ["select"], objects = ["public.\"unterminated"] },
  { actions = ["select"] },
]
[[roles]]
name = "a"
members = {}
"#;
    let e = problems(text);
    let lines: Vec<usize> = e.iter().map(|p| p.0).collect();
    assert!(e[0].1.contains("mode"), "{e:?}");
    assert_eq!(lines, [1, 6, 7, 8, 9, 12, 12], "{e:?}");
    assert!(e[1].1.contains("unknown action \"selct\""), "{e:?}");
    assert!(e[2].1.contains("schema.name"), "{e:?}");
    assert!(e[3].1.contains("unterminated"), "{e:?}");
    assert!(e[4].1.contains("needs objects or functions"), "{e:?}");
    assert!(e.iter().any(|p| p.1.contains("no members")), "{e:?}");
    assert!(e.iter().any(|p| p.1.contains("defined twice")), "{e:?}");
}

#[test]
fn search_path_and_baseline_validation() {
    let e = problems("search_path = [\"$user\", \"public\"]\n");
    assert_eq!(e[0].0, 1);
    let e = problems("[baseline]\nsettings = [\"application_name\",\n  \"search_path\"]\n");
    assert_eq!(e[0].0, 3, "{e:?}");
    assert!(e[0].1.contains("only narrow"), "{e:?}");
    let e = problems("[baseline]\ncatalog_read = false\n");
    assert_eq!(e[0].0, 2, "{e:?}");
}

#[test]
fn error_display_names_lines() {
    let err = Policy::from_toml("mode = \"x\"\n").unwrap_err();
    assert_eq!(
        err.to_string(),
        "line 1: mode must be \"enforce\" or \"observe\", not \"x\""
    );
}

#[test]
fn rule_names_derived_and_explicit() {
    let p = Policy::from_toml(GOOD).unwrap();
    let session = pgward_policy::SessionState::new(&p);
    let analyst = p.roles_named(&["analyst"]).unwrap();
    let writer = p.roles_named(&["writer"]).unwrap();
    assert_eq!(
        p.decide_query(&analyst, "SELECT * FROM public.orders", &session)
            .decision
            .rule,
        "analyst.allow[0]"
    );
    assert_eq!(
        p.decide_query(&analyst, "SELECT * FROM x.salaries", &session)
            .decision
            .rule,
        "analyst.deny[0]"
    );
    assert_eq!(
        p.decide_query(&writer, "INSERT INTO public.orders VALUES (1)", &session)
            .decision
            .rule,
        "write_orders"
    );
}
