//! What T-SQL clients may use without a rule: built-in functions, catalog views and
//! session options.
//!
//! The function list is SQL Server's own, from "What are the SQL database functions?"
//! (learn.microsoft.com/sql/t-sql/functions/functions) and its category pages: aggregate,
//! analytic, bit manipulation, conversion, date and time, JSON, logical, mathematical,
//! metadata, ranking, security (read-only ones), string, system, and the `OPENJSON` rowset
//! function. Left out on purpose (they then need a rule like any user function, or are
//! refused): rowset functions that reach outside the database (`OPENROWSET`, `OPENQUERY`,
//! `OPENDATASOURCE`, `OPENXML`), cryptographic key functions (`DECRYPTBY*`, `ENCRYPTBY*`,
//! `SIGNBY*`, `PWDCOMPARE`, `PWDENCRYPT`), `OBJECT_DEFINITION` (module source), cursor,
//! trigger and text/image functions, full-text rowset functions (`CONTAINSTABLE`, ...), and every `fn_*`, `sp_*` and `xp_*`.

/// Built-in functions callable without a rule (lower case, unqualified).
pub(crate) const FUNCTIONS: &[&str] = &[
    // Aggregate.
    "approx_count_distinct",
    "approx_percentile_cont",
    "approx_percentile_disc",
    "avg",
    "checksum_agg",
    "count",
    "count_big",
    "grouping",
    "grouping_id",
    "max",
    "min",
    "stdev",
    "stdevp",
    "string_agg",
    "sum",
    "var",
    "varp",
    // Analytic and ranking.
    "cume_dist",
    "dense_rank",
    "first_value",
    "lag",
    "last_value",
    "lead",
    "ntile",
    "percent_rank",
    "percentile_cont",
    "percentile_disc",
    "rank",
    "row_number",
    // Bit manipulation.
    "bit_count",
    "get_bit",
    "left_shift",
    "right_shift",
    "set_bit",
    // Conversion.
    "cast",
    "convert",
    "parse",
    "try_cast",
    "try_convert",
    "try_parse",
    // Date and time.
    "current_timestamp",
    "current_timezone",
    "current_timezone_id",
    "date_bucket",
    "dateadd",
    "datediff",
    "datediff_big",
    "datefromparts",
    "datename",
    "datepart",
    "datetime2fromparts",
    "datetimefromparts",
    "datetimeoffsetfromparts",
    "datetrunc",
    "day",
    "eomonth",
    "getdate",
    "getutcdate",
    "isdate",
    "month",
    "smalldatetimefromparts",
    "switchoffset",
    "sysdatetime",
    "sysdatetimeoffset",
    "sysutcdatetime",
    "timefromparts",
    "todatetimeoffset",
    "year",
    // Full-text predicates (on columns of tables the statement reads anyway).
    "contains",
    "freetext",
    // JSON.
    "isjson",
    "json_array",
    "json_arrayagg",
    "json_modify",
    "json_object",
    "json_objectagg",
    "json_path_exists",
    "json_query",
    "json_value",
    "openjson",
    // Logical.
    "choose",
    "greatest",
    "iif",
    "least",
    // Mathematical.
    "abs",
    "acos",
    "asin",
    "atan",
    "atn2",
    "ceiling",
    "cos",
    "cot",
    "degrees",
    "exp",
    "floor",
    "log",
    "log10",
    "pi",
    "power",
    "radians",
    "rand",
    "round",
    "sign",
    "sin",
    "sqrt",
    "square",
    "tan",
    // Metadata.
    "app_name",
    "col_length",
    "col_name",
    "columnproperty",
    "databasepropertyex",
    "db_id",
    "db_name",
    "file_id",
    "file_idex",
    "file_name",
    "filegroup_id",
    "filegroup_name",
    "filegroupproperty",
    "fileproperty",
    "fulltextcatalogproperty",
    "fulltextserviceproperty",
    "index_col",
    "indexkey_property",
    "indexproperty",
    "object_id",
    "object_name",
    "object_schema_name",
    "objectproperty",
    "objectpropertyex",
    "schema_id",
    "schema_name",
    "scope_identity",
    "serverproperty",
    "stats_date",
    "type_id",
    "type_name",
    "typeproperty",
    // Security (read-only).
    "current_user",
    "has_perms_by_name",
    "is_member",
    "is_rolemember",
    "is_srvrolemember",
    "original_login",
    "session_user",
    "sessionproperty",
    "suser_id",
    "suser_name",
    "suser_sid",
    "suser_sname",
    "system_user",
    "user",
    "user_id",
    "user_name",
    // String.
    "ascii",
    "char",
    "charindex",
    "concat",
    "concat_ws",
    "difference",
    "format",
    "left",
    "len",
    "lower",
    "ltrim",
    "nchar",
    "patindex",
    "quotename",
    "replace",
    "replicate",
    "reverse",
    "right",
    "rtrim",
    "soundex",
    "space",
    "str",
    "string_escape",
    "string_split",
    "stuff",
    "substring",
    "translate",
    "trim",
    "unicode",
    "upper",
    // System.
    "binary_checksum",
    "checksum",
    "coalesce",
    "compress",
    "connectionproperty",
    "context_info",
    "current_request_id",
    "current_transaction_id",
    "datalength",
    "decompress",
    "error_line",
    "error_message",
    "error_number",
    "error_procedure",
    "error_severity",
    "error_state",
    "formatmessage",
    "getansinull",
    "hashbytes",
    "host_id",
    "host_name",
    "ident_current",
    "ident_incr",
    "ident_seed",
    "isnull",
    "isnumeric",
    "min_active_rowversion",
    "newid",
    "newsequentialid",
    "nullif",
    "rowcount_big",
    "session_context",
    "sql_variant_property",
    "xact_state",
];

/// Catalog views under `sys.` (and `INFORMATION_SCHEMA`) read without a rule, like the
/// PostgreSQL baseline's `pg_catalog`: they show metadata, filtered by SQL Server to what
/// the session may see. Not these (they need a rule naming them): views of credentials,
/// logins and keys, and every dynamic management view (`dm_*`) and Query Store view, which
/// show other sessions' SQL text, plans and identities (pgward's sessions all sign in as
/// pgward, so SQL Server's own filtering would not separate callers).
pub(crate) fn catalog_view_is_baseline(schema: &str, name: &str) -> bool {
    match schema {
        "information_schema" => true,
        "sys" => {
            !(name.starts_with("dm_")
                || name.starts_with("query_store_")
                || name.starts_with("fn_")
                || name.starts_with("sp_")
                || name.starts_with("xp_")
                || CATALOG_EXCLUDED.contains(&name))
        }
        _ => false,
    }
}

/// `sys.` views outside the baseline besides `dm_*` and `query_store_*` (module source is
/// left out as `OBJECT_DEFINITION` is).
const CATALOG_EXCLUDED: &[&str] = &[
    "asymmetric_keys",
    "certificates",
    "column_encryption_keys",
    "column_encryption_key_values",
    "column_master_keys",
    "credentials",
    "crypt_properties",
    "cryptographic_providers",
    "database_audit_specifications",
    "database_credentials",
    "database_scoped_credentials",
    "external_data_sources",
    "key_encryptions",
    "linked_logins",
    "login_token",
    "master_key_passwords",
    "remote_logins",
    "server_principals",
    "sql_logins",
    "sql_modules",
    "all_sql_modules",
    "system_sql_modules",
    "syscomments",
    "symmetric_keys",
    "syslogins",
    "sysprocesses",
    "traces",
    "user_token",
];

/// How a `SET` option is decided.
pub(crate) enum SetOption {
    /// Does not change how batches are read, what runs or as whom: no rule needed.
    Baseline,
    /// Changes how later text is read or what a statement does: refused.
    Refused(&'static str),
    /// Any other: the setting `setting.<name>` needs a rule.
    Rule,
}

/// Decides a `SET option value` by the option's name (lower case). From "SET statements
/// (Transact-SQL)" (learn.microsoft.com/sql/t-sql/statements/set-statements-transact-sql).
pub(crate) fn set_option(name: &str, value: &str) -> SetOption {
    match name {
        "nocount"
        | "xact_abort"
        | "ansi_nulls"
        | "ansi_padding"
        | "ansi_warnings"
        | "ansi_null_dflt_on"
        | "ansi_null_dflt_off"
        | "arithabort"
        | "arithignore"
        | "concat_null_yields_null"
        | "numeric_roundabort"
        | "datefirst"
        | "dateformat"
        | "language"
        | "lock_timeout"
        | "deadlock_priority"
        | "textsize"
        | "statistics"
        | "statistics io"
        | "statistics time"
        | "statistics xml"
        | "statistics profile"
        | "transaction_isolation"
        | "query_governor_cost_limit"
        | "cursor_close_on_commit"
        | "rowcount" => SetOption::Baseline,
        // Parse-time options: SQL Server would read the text after them differently.
        "quoted_identifier" | "ansi_defaults" if value.eq_ignore_ascii_case("on") => {
            SetOption::Baseline
        }
        "implicit_transactions" if value.eq_ignore_ascii_case("off") => SetOption::Baseline,
        "quoted_identifier" | "ansi_defaults" => {
            SetOption::Refused("it changes how SQL Server reads the batch")
        }
        "parseonly"
        | "noexec"
        | "fmtonly"
        | "showplan_all"
        | "showplan_text"
        | "showplan_xml"
        | "forceplan"
        | "offsets"
        | "no_browsetable"
        | "remote_proc_transactions"
        | "implicit_transactions" => {
            SetOption::Refused("it changes what the statements after it do")
        }
        "context_info" => SetOption::Refused(
            "CONTEXT_INFO can carry identity for row-level security; pgward pins SESSION_CONTEXT",
        ),
        _ => SetOption::Rule,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_are_sorted_lower_case_and_without_dangerous_names() {
        for f in FUNCTIONS {
            assert_eq!(*f, f.to_lowercase());
            for bad in ["open", "fn_", "sp_", "xp_", "pwd", "decrypt", "encrypt"] {
                assert!(
                    !f.starts_with(bad) || *f == "openjson",
                    "{f} should not be in the baseline"
                );
            }
        }
        assert!(catalog_view_is_baseline("sys", "tables"));
        assert!(!catalog_view_is_baseline("sys", "sql_logins"));
        assert!(!catalog_view_is_baseline("sys", "dm_exec_requests"));
        assert!(!catalog_view_is_baseline("sys", "dm_exec_sql_text"));
        assert!(!catalog_view_is_baseline("dbo", "tables"));
    }
}
