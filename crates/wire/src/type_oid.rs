//! The OIDs of PostgreSQL's built-in types that pgward writes or reads in RowDescription
//! (`pg_type.oid`; fixed since the types were created, the same in every server version).

/// bool
pub const BOOL: u32 = 16;
/// bytea
pub const BYTEA: u32 = 17;
/// int8
pub const INT8: u32 = 20;
/// int2
pub const INT2: u32 = 21;
/// int4
pub const INT4: u32 = 23;
/// text
pub const TEXT: u32 = 25;
/// oid
pub const OID: u32 = 26;
/// json
pub const JSON: u32 = 114;
/// float4
pub const FLOAT4: u32 = 700;
/// float8
pub const FLOAT8: u32 = 701;
/// varchar
pub const VARCHAR: u32 = 1043;
/// date
pub const DATE: u32 = 1082;
/// time
pub const TIME: u32 = 1083;
/// timestamp
pub const TIMESTAMP: u32 = 1114;
/// timestamptz
pub const TIMESTAMPTZ: u32 = 1184;
/// numeric
pub const NUMERIC: u32 = 1700;
/// uuid
pub const UUID: u32 = 2950;
/// jsonb
pub const JSONB: u32 = 3802;
