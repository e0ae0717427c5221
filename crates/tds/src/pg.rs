//! The PostgreSQL backend messages a TDS result turns into (text format only), built by
//! the wire crate like every other message pgward writes.

pub use pgward_wire::build::{
    command_complete, data_row, empty_query, row_description, TextColumn as PgColumn,
};
