//! Built-in lists: the baseline every identity gets, dangerous functions, protected settings
//! and the relations PostgreSQL keeps in pg_catalog. docs/policy.md prints these lists; keep
//! the two in step.

/// Session settings any identity may SET/RESET (the baseline; `[baseline] settings` narrows it).
pub const HARMLESS_SETTINGS: &[&str] = &[
    "application_name",
    "bytea_output",
    "client_encoding",
    "client_min_messages",
    "datestyle",
    "default_transaction_deferrable",
    "default_transaction_isolation",
    "default_transaction_read_only",
    "extra_float_digits",
    "idle_in_transaction_session_timeout",
    "idle_session_timeout",
    "intervalstyle",
    // Planner knob; asyncpg turns it off around its type introspection.
    "jit",
    "lc_monetary",
    "lc_numeric",
    "lc_time",
    "lock_timeout",
    "statement_timeout",
    "timezone",
    "transaction_deferrable",
    "transaction_isolation",
    "transaction_read_only",
    "xmloption",
];

/// Whether a client_encoding is one pgward accepts: every byte below 0x80 is the ASCII
/// character it looks like, and pgward reads the rest as the server does (see
/// [`crate::encoding`]). In SJIS, BIG5, GBK, GB18030, UHC or JOHAB a backslash or quote can
/// be the second byte of a character, so the server would read later statements differently
/// from pgward. Names compare like PostgreSQL's `clean_encoding_name`.
pub fn safe_client_encoding(value: &str) -> bool {
    crate::encoding::safe_client_encoding(value)
}

/// Settings that change how later SQL is read or who the session is. They need `set` on
/// `setting.<name>` written out in full (a glob such as `setting.*` does not grant them).
pub const PROTECTED_SETTINGS: &[&str] = &[
    "standard_conforming_strings",
    "backslash_quote",
    "search_path",
    "role",
    "session_authorization",
];

/// The protected settings RESET ALL / DISCARD ALL put back to their session defaults
/// (role and session_authorization are not reset by RESET ALL in PostgreSQL).
pub const RESET_ALL_SETTINGS: &[&str] = &[
    "standard_conforming_strings",
    "backslash_quote",
    "search_path",
];

/// pgward's own schema on the upstream (the caller identity, docs/azure.md): nothing in it
/// may be created, changed or dropped through pgward.
pub const PGWARD_SCHEMA: &str = "pgward";

/// The caller identity functions pgward installs in its schema; calling them is part of the
/// baseline.
pub const PGWARD_IDENTITY_FUNCTIONS: &[&str] = &[
    "caller",
    "caller_oid",
    "caller_tid",
    "caller_upn",
    "caller_appid",
    "caller_roles",
];

/// Functions denied unless a held role allows them by name (`functions = [...]` in an allow
/// rule whose name part is not just `*`). Patterns: `*` matches any characters; a pattern with
/// a schema matches only calls written or resolved to that schema.
pub const DANGEROUS_FUNCTIONS: &[&str] = &[
    // Procedural code pgward cannot read (DO blocks).
    "do",
    // Server file access.
    "pg_read_file",
    "pg_read_binary_file",
    "pg_ls_*",
    "pg_stat_file",
    "pg_file_*",
    "pg_logdir_ls",
    // Large objects (a second storage pgward cannot see into).
    "lo_*",
    "loread",
    "lowrite",
    "be_lo_*",
    // Dynamic SQL: functions that run SQL or read tables given as text.
    "query_to_xml",
    "query_to_xml_and_xmlschema",
    "query_to_xmlschema",
    "cursor_to_xml",
    "cursor_to_xmlschema",
    "table_to_xml",
    "table_to_xml_and_xmlschema",
    "table_to_xmlschema",
    "schema_to_xml",
    "schema_to_xml_and_xmlschema",
    "schema_to_xmlschema",
    "database_to_xml",
    "database_to_xml_and_xmlschema",
    "database_to_xmlschema",
    "ts_stat",
    "ts_rewrite",
    "crosstab*",
    "connectby",
    "xpath_table",
    "dblink*",
    "cron.*",
    // Raw pages and WAL: table contents outside any table privilege.
    "get_raw_page",
    "heap_page_item*",
    "tuple_data_split",
    "pg_get_wal_*",
    // Settings (handled as settings too, see docs).
    "set_config",
    // Backend signalling and server control.
    "pg_terminate_backend",
    "pg_cancel_backend",
    "pg_reload_conf",
    "pg_rotate_logfile",
    "pg_promote",
    "pg_log_backend_memory_contexts",
    "pg_switch_wal",
    "pg_create_restore_point",
    "pg_backup_start",
    "pg_backup_stop",
    "pg_start_backup",
    "pg_stop_backup",
    "pg_wal_replay_pause",
    "pg_wal_replay_resume",
    "pg_stat_reset*",
    "pg_stat_statements_reset",
    "pg_import_system_collations",
    // Server state a PostgreSQL role only sees about itself, but pgward's one upstream login
    // is everybody's: other callers' SQL text with its literals, connection details,
    // configuration files, memory and replication state. (With the server's catalog, every
    // built-in that initdb does not let PUBLIC execute is treated like these, per version.)
    "pg_stat_get_activity",
    "pg_stat_get_backend_*",
    "pg_stat_get_wal_receiver",
    "pg_stat_get_wal_senders",
    "pg_stat_get_subscription",
    "pg_get_replication_slots",
    "pg_hba_file_rules",
    "pg_ident_file_mappings",
    "pg_show_all_file_settings",
    "pg_config",
    "pg_current_logfile",
    "pg_get_backend_memory_contexts",
    "pg_get_shmem_allocations",
    "pg_show_replication_origin_status",
    "binary_upgrade_*",
    // Replication.
    "pg_logical_*",
    "pg_create_*_replication_slot",
    "pg_drop_replication_slot",
    "pg_copy_*_replication_slot",
    "pg_replication_*",
    "pg_replication_origin_*",
];

/// pg_catalog relations the baseline does NOT let everyone read: they show password hashes,
/// column statistics (sample values of every table), other sessions' SQL text, server
/// configuration files or large-object contents. pgward connects upstream as one identity for
/// everybody, so PostgreSQL's own per-user filtering of these views does not protect callers
/// from each other.
pub const CATALOG_EXCLUDED: &[&str] = &[
    "pg_authid",
    "pg_shadow",
    "pg_user_mapping",
    "pg_user_mappings",
    "pg_statistic",
    "pg_statistic_ext_data",
    "pg_stats",
    "pg_stats_ext",
    "pg_stats_ext_exprs",
    "pg_largeobject",
    "pg_stat_activity",
    "pg_file_settings",
    "pg_hba_file_rules",
    "pg_ident_file_mappings",
    "pg_db_role_setting",
    "pg_subscription",
    "pg_replication_slots",
    "pg_stat_replication",
    "pg_config",
];

/// pg_catalog relations whose rows carry values from other tables or other sessions: column
/// statistics (sample values, most common values), large-object contents, other callers'
/// SQL text with its literals (pgward signs in upstream as one login for everybody). Reading
/// one is decided as a read of the whole database as well, so any deny rule covers it.
pub const DATA_CATALOGS: &[&str] = &[
    "pg_largeobject",
    "pg_stat_activity",
    "pg_statistic",
    "pg_statistic_ext_data",
    "pg_stats",
    "pg_stats_ext",
    "pg_stats_ext_exprs",
];

/// information_schema views the baseline does not let everyone read: user mapping options
/// hold foreign servers' passwords.
pub const INFORMATION_SCHEMA_EXCLUDED: &[&str] =
    &["_pg_user_mappings", "user_mapping_options", "user_mappings"];

/// Functions initdb creates in information_schema (the same in PostgreSQL 11-17): built in
/// when pgward has no catalog of the server to ask. Anything else there is not.
pub const INFORMATION_SCHEMA_FUNCTIONS: &[&str] = &[
    "_pg_char_max_length",
    "_pg_char_octet_length",
    "_pg_datetime_precision",
    "_pg_expandarray",
    "_pg_index_position",
    "_pg_interval_type",
    "_pg_keysequal",
    "_pg_numeric_precision",
    "_pg_numeric_precision_radix",
    "_pg_numeric_scale",
    "_pg_truetypid",
    "_pg_truetypmod",
];

/// Schemas that hold the server's built-ins: nothing may be created, changed or dropped in
/// them through pgward (an object there would pass for a built-in).
pub const SYSTEM_SCHEMAS: &[&str] = &["pg_catalog", "information_schema", "pg_toast"];

/// Relations (tables and views) in pg_catalog of PostgreSQL 13-17. An unqualified name in this
/// list resolves to pg_catalog (which PostgreSQL searches first); any other unqualified name is
/// resolved against the search path. A name missing here only makes pgward stricter.
pub const CATALOG_RELATIONS: &[&str] = &[
    "pg_aggregate",
    "pg_am",
    "pg_amop",
    "pg_amproc",
    "pg_attrdef",
    "pg_attribute",
    "pg_auth_members",
    "pg_authid",
    "pg_available_extension_versions",
    "pg_available_extensions",
    "pg_backend_memory_contexts",
    "pg_cast",
    "pg_class",
    "pg_collation",
    "pg_config",
    "pg_constraint",
    "pg_conversion",
    "pg_cursors",
    "pg_database",
    "pg_db_role_setting",
    "pg_default_acl",
    "pg_depend",
    "pg_description",
    "pg_enum",
    "pg_event_trigger",
    "pg_extension",
    "pg_file_settings",
    "pg_foreign_data_wrapper",
    "pg_foreign_server",
    "pg_foreign_table",
    "pg_group",
    "pg_hba_file_rules",
    "pg_ident_file_mappings",
    "pg_index",
    "pg_indexes",
    "pg_inherits",
    "pg_init_privs",
    "pg_language",
    "pg_largeobject",
    "pg_largeobject_metadata",
    "pg_locks",
    "pg_matviews",
    "pg_namespace",
    "pg_opclass",
    "pg_operator",
    "pg_opfamily",
    "pg_parameter_acl",
    "pg_partitioned_table",
    "pg_policies",
    "pg_policy",
    "pg_prepared_statements",
    "pg_prepared_xacts",
    "pg_proc",
    "pg_publication",
    "pg_publication_namespace",
    "pg_publication_rel",
    "pg_publication_tables",
    "pg_range",
    "pg_replication_origin",
    "pg_replication_origin_status",
    "pg_replication_slots",
    "pg_rewrite",
    "pg_roles",
    "pg_rules",
    "pg_seclabel",
    "pg_seclabels",
    "pg_sequence",
    "pg_sequences",
    "pg_settings",
    "pg_shadow",
    "pg_shdepend",
    "pg_shdescription",
    "pg_shmem_allocations",
    "pg_shseclabel",
    "pg_stat_activity",
    "pg_stat_all_indexes",
    "pg_stat_all_tables",
    "pg_stat_archiver",
    "pg_stat_bgwriter",
    "pg_stat_checkpointer",
    "pg_stat_database",
    "pg_stat_database_conflicts",
    "pg_stat_gssapi",
    "pg_stat_io",
    "pg_stat_progress_analyze",
    "pg_stat_progress_basebackup",
    "pg_stat_progress_cluster",
    "pg_stat_progress_copy",
    "pg_stat_progress_create_index",
    "pg_stat_progress_vacuum",
    "pg_stat_recovery_prefetch",
    "pg_stat_replication",
    "pg_stat_replication_slots",
    "pg_stat_slru",
    "pg_stat_ssl",
    "pg_stat_subscription",
    "pg_stat_subscription_stats",
    "pg_stat_sys_indexes",
    "pg_stat_sys_tables",
    "pg_stat_user_functions",
    "pg_stat_user_indexes",
    "pg_stat_user_tables",
    "pg_stat_wal",
    "pg_stat_wal_receiver",
    "pg_stat_xact_all_tables",
    "pg_stat_xact_sys_tables",
    "pg_stat_xact_user_functions",
    "pg_stat_xact_user_tables",
    "pg_statio_all_indexes",
    "pg_statio_all_sequences",
    "pg_statio_all_tables",
    "pg_statio_sys_indexes",
    "pg_statio_sys_sequences",
    "pg_statio_sys_tables",
    "pg_statio_user_indexes",
    "pg_statio_user_sequences",
    "pg_statio_user_tables",
    "pg_statistic",
    "pg_statistic_ext",
    "pg_statistic_ext_data",
    "pg_stats",
    "pg_stats_ext",
    "pg_stats_ext_exprs",
    "pg_subscription",
    "pg_subscription_rel",
    "pg_tables",
    "pg_tablespace",
    "pg_timezone_abbrevs",
    "pg_timezone_names",
    "pg_transform",
    "pg_trigger",
    "pg_ts_config",
    "pg_ts_config_map",
    "pg_ts_dict",
    "pg_ts_parser",
    "pg_ts_template",
    "pg_type",
    "pg_user",
    "pg_user_mapping",
    "pg_user_mappings",
    "pg_views",
    "pg_wait_events",
];

/// Whether `name` is (probably) a built-in pg_catalog function; see `gen_builtins.py`.
pub(crate) fn is_builtin_function(name: &str) -> bool {
    crate::builtin_functions::BUILTIN_FUNCTIONS
        .binary_search(&name)
        .is_ok()
}

/// Whether `name` is a pg_catalog relation (the list is sorted).
pub(crate) fn is_catalog_relation(name: &str) -> bool {
    CATALOG_RELATIONS.binary_search(&name).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_are_sorted_and_lower_case() {
        // is_catalog_relation relies on binary search.
        assert!(CATALOG_RELATIONS.windows(2).all(|w| w[0] < w[1]));
        let builtins = crate::builtin_functions::BUILTIN_FUNCTIONS;
        assert!(builtins.windows(2).all(|w| w[0] < w[1]));
        for f in [
            "count",
            "now",
            "generate_series",
            "format_type",
            "pg_read_file",
            "lower",
            "nextval",
        ] {
            assert!(is_builtin_function(f), "{f}");
        }
        assert!(!is_builtin_function("dblink"));
        for list in [
            HARMLESS_SETTINGS,
            PROTECTED_SETTINGS,
            CATALOG_EXCLUDED,
            DANGEROUS_FUNCTIONS,
        ] {
            assert!(list
                .iter()
                .all(|s| s.chars().all(|c| !c.is_ascii_uppercase())));
        }
        for s in CATALOG_EXCLUDED {
            assert!(is_catalog_relation(s), "{s}");
        }
        assert!(HARMLESS_SETTINGS
            .iter()
            .all(|s| !PROTECTED_SETTINGS.contains(s)));
    }
}
