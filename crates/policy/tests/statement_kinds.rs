//! Every statement kind PostgreSQL's grammar (this pg_query version) knows is mapped to its
//! actions and objects: a new kind after a pg_query upgrade fails this test until it is
//! given an example here and a mapping in src/analyze.rs.

use pgward_policy::{analyze, STATEMENT_KINDS};

/// One statement of each kind. Kinds that only occur inside another statement are given
/// in that statement.
const EXAMPLES: &[(&str, &str)] = &[
    ("InsertStmt", "INSERT INTO t VALUES (1)"),
    ("DeleteStmt", "DELETE FROM t"),
    ("UpdateStmt", "UPDATE t SET a = 1"),
    ("SelectStmt", "SELECT 1"),
    ("AlterTableStmt", "ALTER TABLE t ADD COLUMN b int"),
    ("AlterDomainStmt", "ALTER DOMAIN d ADD CONSTRAINT c CHECK (VALUE > 0)"),
    ("GrantStmt", "GRANT SELECT ON t TO r"),
    ("GrantRoleStmt", "GRANT r TO s"),
    ("AlterDefaultPrivilegesStmt", "ALTER DEFAULT PRIVILEGES IN SCHEMA s GRANT SELECT ON TABLES TO r"),
    ("ClosePortalStmt", "CLOSE c"),
    ("ClusterStmt", "CLUSTER t USING i"),
    ("CopyStmt", "COPY t TO STDOUT"),
    ("CreateStmt", "CREATE TABLE t (a int)"),
    ("DefineStmt", "CREATE OPERATOR public.=== (function = public.f, leftarg = int, rightarg = int)"),
    ("DropStmt", "DROP TABLE t"),
    ("TruncateStmt", "TRUNCATE t"),
    ("CommentStmt", "COMMENT ON TABLE t IS 'x'"),
    ("FetchStmt", "FETCH 1 FROM c"),
    ("IndexStmt", "CREATE INDEX ON t (a)"),
    ("CreateFunctionStmt", "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'"),
    ("AlterFunctionStmt", "ALTER FUNCTION f() IMMUTABLE"),
    ("DoStmt", "DO $$ BEGIN END $$"),
    ("RenameStmt", "ALTER TABLE t RENAME TO u"),
    ("RuleStmt", "CREATE RULE r AS ON INSERT TO t DO NOTHING"),
    ("NotifyStmt", "NOTIFY c"),
    ("ListenStmt", "LISTEN c"),
    ("UnlistenStmt", "UNLISTEN c"),
    ("TransactionStmt", "BEGIN"),
    ("ViewStmt", "CREATE VIEW v AS SELECT 1"),
    ("LoadStmt", "LOAD 'auto_explain'"),
    ("CreateDomainStmt", "CREATE DOMAIN d AS int"),
    ("CreatedbStmt", "CREATE DATABASE d"),
    ("DropdbStmt", "DROP DATABASE d"),
    ("VacuumStmt", "VACUUM t"),
    ("ExplainStmt", "EXPLAIN SELECT 1"),
    ("CreateTableAsStmt", "CREATE TABLE u AS SELECT 1"),
    ("CreateSeqStmt", "CREATE SEQUENCE s"),
    ("AlterSeqStmt", "ALTER SEQUENCE s RESTART"),
    ("VariableSetStmt", "SET timezone = 'UTC'"),
    ("VariableShowStmt", "SHOW timezone"),
    ("DiscardStmt", "DISCARD ALL"),
    ("CreateTrigStmt", "CREATE TRIGGER g BEFORE INSERT ON t FOR EACH ROW EXECUTE FUNCTION f()"),
    ("CreatePlangStmt", "CREATE LANGUAGE plsample HANDLER plsample_call_handler"),
    ("CreateRoleStmt", "CREATE ROLE r"),
    ("AlterRoleStmt", "ALTER ROLE r NOLOGIN"),
    ("DropRoleStmt", "DROP ROLE r"),
    ("LockStmt", "LOCK t"),
    ("ConstraintsSetStmt", "SET CONSTRAINTS ALL DEFERRED"),
    ("ReindexStmt", "REINDEX TABLE t"),
    ("CheckPointStmt", "CHECKPOINT"),
    ("CreateSchemaStmt", "CREATE SCHEMA s"),
    ("AlterDatabaseStmt", "ALTER DATABASE d CONNECTION LIMIT 5"),
    ("AlterDatabaseSetStmt", "ALTER DATABASE d SET work_mem = '8MB'"),
    ("AlterRoleSetStmt", "ALTER ROLE r SET work_mem = '8MB'"),
    ("CreateConversionStmt", "CREATE CONVERSION c FOR 'LATIN1' TO 'UTF8' FROM public.conv"),
    ("CreateCastStmt", "CREATE CAST (public.t1 AS public.t2) WITH FUNCTION public.f(public.t1)"),
    ("CreateOpClassStmt", "CREATE OPERATOR CLASS c FOR TYPE int USING btree AS OPERATOR 1 <, FUNCTION 1 btint4cmp(int, int)"),
    ("CreateOpFamilyStmt", "CREATE OPERATOR FAMILY f USING btree"),
    ("AlterOpFamilyStmt", "ALTER OPERATOR FAMILY f USING btree ADD FUNCTION 1 public.cmp(int, int)"),
    ("PrepareStmt", "PREPARE p AS SELECT 1"),
    ("ExecuteStmt", "EXECUTE p"),
    ("DeallocateStmt", "DEALLOCATE p"),
    ("DeclareCursorStmt", "DECLARE c CURSOR FOR SELECT 1"),
    ("CreateTableSpaceStmt", "CREATE TABLESPACE ts LOCATION '/tmp/ts'"),
    ("DropTableSpaceStmt", "DROP TABLESPACE ts"),
    ("AlterObjectDependsStmt", "ALTER FUNCTION f() DEPENDS ON EXTENSION e"),
    ("AlterObjectSchemaStmt", "ALTER TABLE t SET SCHEMA s"),
    ("AlterOwnerStmt", "ALTER FUNCTION f() OWNER TO r"),
    ("AlterOperatorStmt", "ALTER OPERATOR public.=== (int, int) SET (restrict = public.sel)"),
    ("AlterTypeStmt", "ALTER TYPE ty SET (send = public.ty_send)"),
    ("DropOwnedStmt", "DROP OWNED BY r"),
    ("ReassignOwnedStmt", "REASSIGN OWNED BY r TO s"),
    ("CompositeTypeStmt", "CREATE TYPE ty AS (a int)"),
    ("CreateEnumStmt", "CREATE TYPE ty AS ENUM ('a')"),
    ("CreateRangeStmt", "CREATE TYPE floatrange AS RANGE (subtype = float8, subtype_diff = float8mi)"),
    ("AlterEnumStmt", "ALTER TYPE ty ADD VALUE 'b'"),
    ("AlterTsdictionaryStmt", "ALTER TEXT SEARCH DICTIONARY d (StopWords = english)"),
    ("AlterTsconfigurationStmt", "ALTER TEXT SEARCH CONFIGURATION c ALTER MAPPING FOR word WITH simple"),
    ("CreateFdwStmt", "CREATE FOREIGN DATA WRAPPER w HANDLER public.h"),
    ("AlterFdwStmt", "ALTER FOREIGN DATA WRAPPER w VALIDATOR public.v"),
    ("CreateForeignServerStmt", "CREATE SERVER s FOREIGN DATA WRAPPER w"),
    ("AlterForeignServerStmt", "ALTER SERVER s VERSION '2'"),
    ("CreateUserMappingStmt", "CREATE USER MAPPING FOR r SERVER s OPTIONS (user 'u')"),
    ("AlterUserMappingStmt", "ALTER USER MAPPING FOR r SERVER s OPTIONS (SET user 'v')"),
    ("DropUserMappingStmt", "DROP USER MAPPING FOR r SERVER s"),
    ("AlterTableSpaceOptionsStmt", "ALTER TABLESPACE ts SET (seq_page_cost = 2)"),
    ("AlterTableMoveAllStmt", "ALTER TABLE ALL IN TABLESPACE a SET TABLESPACE b"),
    ("SecLabelStmt", "SECURITY LABEL FOR p ON TABLE t IS 'x'"),
    ("CreateForeignTableStmt", "CREATE FOREIGN TABLE ft (a int) SERVER s"),
    ("ImportForeignSchemaStmt", "IMPORT FOREIGN SCHEMA r FROM SERVER s INTO l"),
    ("CreateExtensionStmt", "CREATE EXTENSION e"),
    ("AlterExtensionStmt", "ALTER EXTENSION e UPDATE"),
    ("AlterExtensionContentsStmt", "ALTER EXTENSION e ADD TABLE t"),
    ("CreateEventTrigStmt", "CREATE EVENT TRIGGER g ON ddl_command_start EXECUTE FUNCTION public.f()"),
    ("AlterEventTrigStmt", "ALTER EVENT TRIGGER g DISABLE"),
    ("RefreshMatViewStmt", "REFRESH MATERIALIZED VIEW m"),
    ("ReplicaIdentityStmt", "ALTER TABLE t REPLICA IDENTITY FULL"),
    ("AlterSystemStmt", "ALTER SYSTEM SET work_mem = '8MB'"),
    ("CreatePolicyStmt", "CREATE POLICY p ON t USING (true)"),
    ("AlterPolicyStmt", "ALTER POLICY p ON t USING (false)"),
    ("CreateTransformStmt", "CREATE TRANSFORM FOR int LANGUAGE plpython3u (FROM SQL WITH FUNCTION public.f(internal), TO SQL WITH FUNCTION public.g(internal))"),
    ("CreateAmStmt", "CREATE ACCESS METHOD a TYPE TABLE HANDLER public.h"),
    ("CreatePublicationStmt", "CREATE PUBLICATION p FOR TABLE t WHERE (a > 0)"),
    ("AlterPublicationStmt", "ALTER PUBLICATION p ADD TABLE u"),
    ("CreateSubscriptionStmt", "CREATE SUBSCRIPTION s CONNECTION 'host=x' PUBLICATION p"),
    ("AlterSubscriptionStmt", "ALTER SUBSCRIPTION s DISABLE"),
    ("DropSubscriptionStmt", "DROP SUBSCRIPTION s"),
    ("CreateStatsStmt", "CREATE STATISTICS st ON a, b FROM t"),
    ("AlterCollationStmt", "ALTER COLLATION c REFRESH VERSION"),
    ("CallStmt", "CALL p()"),
    ("AlterStatsStmt", "ALTER STATISTICS st SET STATISTICS 10"),
    ("MergeStmt", "MERGE INTO t USING u ON t.a = u.a WHEN MATCHED THEN DELETE"),
    ("AlterDatabaseRefreshCollStmt", "ALTER DATABASE d REFRESH COLLATION VERSION"),
    ("ReturnStmt", "CREATE FUNCTION f() RETURNS int LANGUAGE sql RETURN 1"),
];

/// Kinds PostgreSQL's raw parser never produces for a client's SQL: the wrapper of every
/// statement, PL/pgSQL's assignment (only its own parser makes one) and the set-operation
/// tree of parse analysis (a raw UNION is a SelectStmt). The analyser refuses the first two
/// if they ever appear and walks the third.
const NOT_FROM_SQL: &[&str] = &["RawStmt", "PlassignStmt", "SetOperationStmt"];

/// Statements whose kind is not the outer statement's.
const NESTED: &[&str] = &["ReplicaIdentityStmt", "ReturnStmt"];

#[test]
fn every_statement_kind_is_mapped() {
    let mut missing = Vec::new();
    for kind in STATEMENT_KINDS {
        if NOT_FROM_SQL.contains(kind) {
            continue;
        }
        let Some((_, sql)) = EXAMPLES.iter().find(|(k, _)| k == kind) else {
            missing.push(format!(
                "{kind}: no example (map it in src/analyze.rs, then add one)"
            ));
            continue;
        };
        let parsed = pg_query::parse(sql).unwrap_or_else(|e| panic!("{kind}: {sql}: {e}"));
        let debug = format!("{:?}", parsed.protobuf);
        assert!(debug.contains(kind), "{kind}: {sql} holds no {kind}");
        let a = analyze(sql).unwrap_or_else(|e| panic!("{kind}: {sql}: {e}"));
        assert_eq!(a.statements.len(), 1, "{sql}");
        let st = &a.statements[0];
        if !NESTED.contains(kind) {
            assert_eq!(st.kind, *kind, "{sql}");
        }
        if st
            .not_understood
            .iter()
            .any(|w| w.contains("not supported by pgward"))
        {
            missing.push(format!("{kind}: {:?}", st.not_understood));
        }
        // Mapped means it names what it acts on (or is one of the statements that act on
        // nothing: transaction control, SHOW, cursors, DEALLOCATE, UNLISTEN, ...).
        let acts = !st.accesses.is_empty()
            || !st.functions.is_empty()
            || !st.settings.is_empty()
            || st.executes.is_some()
            || st.fetches.is_some()
            || !st.effects.is_empty();
        let harmless = [
            "TransactionStmt",
            "VariableShowStmt",
            "UnlistenStmt",
            "ConstraintsSetStmt",
            "SelectStmt",
            "ExplainStmt",
        ];
        assert!(
            acts || harmless.contains(kind),
            "{kind}: {sql} names nothing: {st:?}"
        );
    }
    for (kind, _) in EXAMPLES {
        assert!(
            STATEMENT_KINDS.contains(kind),
            "{kind} is not a statement kind"
        );
    }
    assert!(
        missing.is_empty(),
        "statement kinds pgward does not map:\n{}",
        missing.join("\n")
    );
}

/// Functions DDL names run later (whenever the object is used): each is recorded as a call.
#[test]
fn functions_named_by_ddl_are_calls() {
    let cases = [
        ("CREATE TYPE r AS RANGE (subtype = float8, subtype_diff = public.d, canonical = public.c)", &["public.d", "public.c"][..]),
        ("CREATE FOREIGN DATA WRAPPER w HANDLER public.h VALIDATOR public.v", &["public.h", "public.v"]),
        ("ALTER FOREIGN DATA WRAPPER w HANDLER public.h", &["public.h"]),
        ("CREATE PUBLICATION p FOR TABLE t WHERE (public.f(a) > 0)", &["public.f"]),
        ("CREATE OPERATOR CLASS c FOR TYPE int USING btree AS FUNCTION 1 public.cmp(int, int)", &["public.cmp"]),
        ("CREATE CAST (int AS text) WITH FUNCTION public.f(int)", &["public.f"]),
        ("CREATE EVENT TRIGGER g ON ddl_command_start EXECUTE FUNCTION public.f()", &["public.f"]),
        ("CREATE TRANSFORM FOR int LANGUAGE plperl (FROM SQL WITH FUNCTION public.a(internal), TO SQL WITH FUNCTION public.b(internal))", &["public.a", "public.b"]),
        ("CREATE LANGUAGE l HANDLER public.h INLINE public.i VALIDATOR public.v", &["public.h", "public.i", "public.v"]),
        ("CREATE ACCESS METHOD a TYPE INDEX HANDLER public.h", &["public.h"]),
        ("ALTER TYPE ty SET (receive = public.r, send = public.s)", &["public.r", "public.s"]),
        ("ALTER OPERATOR public.=== (int, int) SET (restrict = public.sel, join = public.jsel)", &["public.sel", "public.jsel"]),
        ("CREATE OPERATOR public.=== (function = public.f, leftarg = int, rightarg = int, restrict = public.sel)", &["public.f", "public.sel"]),
        ("CREATE TEXT SEARCH TEMPLATE t (init = public.i, lexize = public.l)", &["public.i", "public.l"]),
        ("CREATE CONVERSION c FOR 'LATIN1' TO 'UTF8' FROM public.conv", &["public.conv"]),
        ("ALTER DOMAIN d ADD CONSTRAINT c CHECK (public.ok(VALUE))", &["public.ok"]),
    ];
    for (sql, want) in cases {
        let a = analyze(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
        let st = &a.statements[0];
        assert!(
            st.not_understood.is_empty(),
            "{sql}: {:?}",
            st.not_understood
        );
        let got: Vec<String> = st
            .functions
            .iter()
            .map(|f| format!("{}.{}", f.schema.as_deref().unwrap_or(""), f.name))
            .collect();
        for w in want {
            assert!(got.iter().any(|g| g == w), "{sql}: {w} not among {got:?}");
        }
    }
    // `RESTRICT = NONE` removes a function: nothing to call, nothing misread.
    let a = analyze("ALTER OPERATOR public.=== (int, int) SET (restrict = NONE)").unwrap();
    assert!(a.statements[0].functions.is_empty() && a.statements[0].not_understood.is_empty());
}

/// DROP, COMMENT, OWNER TO and RENAME name the object kinds the new statements create the
/// same way: each maps to the object CREATE acts on.
#[test]
fn other_statements_on_the_new_object_kinds_are_mapped() {
    use pgward_policy::{Action, ObjectRef};
    let all = |a: Action| (a, ObjectRef::All);
    let pseudo = |a: Action, kind: &'static str, name: &str| {
        (
            a,
            ObjectRef::Pseudo {
                kind,
                name: name.into(),
            },
        )
    };
    let rel = |a: Action, s: &str, n: &str| {
        (
            a,
            ObjectRef::Relation {
                schema: Some(s.into()),
                name: n.into(),
            },
        )
    };
    let cases: Vec<(&str, Vec<(Action, ObjectRef)>)> = vec![
        (
            "DROP PUBLICATION p",
            vec![pseudo(Action::Drop, "publication", "p")],
        ),
        (
            "ALTER PUBLICATION p RENAME TO q",
            vec![pseudo(Action::Alter, "publication", "p")],
        ),
        (
            "ALTER PUBLICATION p OWNER TO r",
            vec![pseudo(Action::Alter, "publication", "p")],
        ),
        (
            "DROP FOREIGN DATA WRAPPER w",
            vec![pseudo(Action::Drop, "fdw", "w")],
        ),
        (
            "COMMENT ON FOREIGN DATA WRAPPER w IS 'x'",
            vec![pseudo(Action::Alter, "fdw", "w")],
        ),
        (
            "ALTER SUBSCRIPTION s OWNER TO r",
            vec![pseudo(Action::Alter, "subscription", "s")],
        ),
        ("DROP SERVER s", vec![pseudo(Action::Drop, "server", "s")]),
        ("DROP CAST (int AS text)", vec![all(Action::Drop)]),
        ("DROP EVENT TRIGGER g", vec![all(Action::Drop)]),
        ("DROP ACCESS METHOD a", vec![all(Action::Drop)]),
        (
            "DROP TRANSFORM FOR int LANGUAGE plperl",
            vec![all(Action::Drop)],
        ),
        (
            "DROP OPERATOR public.=== (int, int)",
            vec![rel(Action::Drop, "public", "===")],
        ),
        (
            "DROP OPERATOR CLASS public.c USING btree",
            vec![rel(Action::Drop, "public", "c")],
        ),
        (
            "DROP OPERATOR FAMILY public.f USING hash",
            vec![rel(Action::Drop, "public", "f")],
        ),
        (
            "ALTER OPERATOR CLASS public.c USING btree RENAME TO d",
            vec![rel(Action::Alter, "public", "c")],
        ),
        (
            "DROP TEXT SEARCH PARSER public.p",
            vec![rel(Action::Drop, "public", "p")],
        ),
        (
            "DROP TEXT SEARCH TEMPLATE public.t",
            vec![rel(Action::Drop, "public", "t")],
        ),
        (
            "DROP LANGUAGE l",
            vec![pseudo(Action::Drop, "language", "l")],
        ),
    ];
    for (sql, want) in cases {
        let a = analyze(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
        let st = &a.statements[0];
        assert!(
            st.not_understood.is_empty(),
            "{sql}: {:?}",
            st.not_understood
        );
        let got: Vec<(Action, ObjectRef)> = st
            .accesses
            .iter()
            .map(|x| (x.action, x.object.clone()))
            .collect();
        assert_eq!(got, want, "{sql}");
    }
}
