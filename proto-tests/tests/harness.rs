//! The test harness itself. Tests run in parallel and every outgoing connection takes an
//! ephemeral port, so a port found free can be taken before a server binds it: the
//! PostgreSQL servers and pgward processes the tests start move to a fresh port then,
//! rather than failing the test.

use pgward_devkit::postgres::PgOptions;
use pgward_proto_tests::*;

#[test]
fn servers_move_off_a_port_another_process_holds() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();

    let db = Database::start_with(PgOptions {
        port: Some(port),
        ..Default::default()
    });
    assert_ne!(db.pg.port, port);
    assert_eq!(db.sql("app", "SELECT count(*) FROM orders"), "100");

    let pgward = Pgward::start(
        &db,
        PgwardOptions {
            listen_port: Some(port),
            ..Default::default()
        },
    );
    assert_ne!(pgward.port, port);
    let out = psql_ok(
        &pgward.conn("app", "require"),
        &["-tA", "-c", "SELECT count(*) FROM orders"],
    );
    assert_eq!(out.trim(), "100");
    drop(taken);
}
