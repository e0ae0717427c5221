//! SQL Server error numbers as SQLSTATEs (docs/azure-sql.md has the table). Anything not
//! listed is XX000 with the server's message.

/// (SQL Server error number, SQLSTATE).
pub const SQLSTATES: &[(u32, &str)] = &[
    (102, "42601"),   // incorrect syntax near ...
    (156, "42601"),   // incorrect syntax near the keyword ...
    (170, "42601"),   // line n: incorrect syntax
    (207, "42703"),   // invalid column name
    (208, "42P01"),   // invalid object name
    (2812, "42883"),  // could not find stored procedure
    (4121, "42883"),  // cannot find the function
    (2714, "42P07"),  // there is already an object named ...
    (3701, "42704"),  // cannot drop, it does not exist or no permission
    (229, "42501"),   // permission denied on object
    (230, "42501"),   // permission denied on column
    (262, "42501"),   // permission denied in database
    (297, "42501"),   // user does not have permission
    (300, "42501"),   // permission was denied
    (2627, "23505"),  // violation of PRIMARY KEY / UNIQUE constraint
    (2601, "23505"),  // duplicate key row in unique index
    (547, "23503"),   // statement conflicted with a FOREIGN KEY / REFERENCE constraint
    (515, "23502"),   // cannot insert NULL
    (8134, "22012"),  // divide by zero
    (245, "22P02"),   // conversion failed (varchar to int, ...)
    (8114, "22P02"),  // error converting data type
    (241, "22007"),   // conversion failed when converting date and/or time
    (242, "22008"),   // datetime out of range
    (220, "22003"),   // arithmetic overflow (tinyint)
    (232, "22003"),   // arithmetic overflow (type)
    (8115, "22003"),  // arithmetic overflow converting
    (8152, "22001"),  // string or binary data would be truncated
    (2628, "22001"),  // string or binary data would be truncated in column
    (1205, "40P01"),  // deadlock victim
    (3960, "40001"),  // snapshot isolation update conflict
    (1222, "55P03"),  // lock request time out
    (3902, "25P01"),  // COMMIT TRANSACTION has no corresponding BEGIN TRANSACTION
    (3903, "25P01"),  // ROLLBACK TRANSACTION has no corresponding BEGIN TRANSACTION
    (3930, "25P02"),  // the transaction cannot be committed (doomed)
    (266, "25000"),   // transaction count mismatch
    (50000, "P0001"), // RAISERROR / THROW with a user message
    (18456, "28000"), // login failed
    (4060, "3D000"),  // cannot open database
    (40613, "08006"), // database is not currently available
    (40501, "53300"), // service is busy
    (10928, "53300"), // resource limit reached
    (3980, "57014"),  // request aborted (attention)
];

/// The SQLSTATE for a SQL Server error number.
pub fn sqlstate(number: u32) -> &'static str {
    SQLSTATES
        .iter()
        .find(|(n, _)| *n == number)
        .map(|(_, s)| *s)
        .unwrap_or("XX000")
}

/// A SQL Server error as the client reads it: its message and number.
pub fn server_message(t: &tiberius::error::TokenError) -> String {
    format!("{} (SQL Server error {})", t.message(), t.code())
}

/// (SQLSTATE, message) for any tiberius error met while running a batch.
pub fn from_tiberius(e: &tiberius::error::Error) -> (String, String) {
    match e {
        tiberius::error::Error::Server(t) => (sqlstate(t.code()).to_owned(), server_message(t)),
        tiberius::error::Error::Io { .. } => (
            "08006".to_owned(),
            "connection to the azure-sql upstream was lost".to_owned(),
        ),
        other => ("XX000".to_owned(), format!("azure-sql upstream: {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_consistent() {
        assert_eq!(sqlstate(208), "42P01");
        assert_eq!(sqlstate(2627), "23505");
        assert_eq!(sqlstate(123_456), "XX000");
        for (_, s) in SQLSTATES {
            assert_eq!(s.len(), 5);
        }
        let mut numbers: Vec<u32> = SQLSTATES.iter().map(|(n, _)| *n).collect();
        numbers.sort_unstable();
        numbers.dedup();
        assert_eq!(numbers.len(), SQLSTATES.len(), "duplicate error number");
    }
}
