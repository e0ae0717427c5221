//! tokio-postgres through pgward: pipelining, COPY, notifications, cancel, wide rows.

use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt, TryStreamExt};
use pgward_proto_tests::*;
use tokio_postgres::{AsyncMessage, NoTls};

async fn connect(conn: &str) -> (tokio_postgres::Client, tokio::task::JoinHandle<()>) {
    let (client, connection) = tokio_postgres::connect(conn, NoTls).await.unwrap();
    let handle = tokio::spawn(async move {
        let _ = connection.await;
    });
    (client, handle)
}

fn setup() -> (Database, Pgward) {
    let db = Database::start();
    let pgward = Pgward::start(
        &db,
        PgwardOptions {
            tls: false,
            ..Default::default()
        },
    );
    (db, pgward)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_queries_and_prepared_statements() {
    let (_db, pgward) = setup();
    let (client, _h) = connect(&pgward.conn("app", "disable")).await;
    let stmt = client.prepare("SELECT $1::int * 2").await.unwrap();
    // tokio-postgres pipelines concurrent requests on one connection.
    let futures = (0..500).map(|i| {
        let client = &client;
        let stmt = &stmt;
        async move {
            let row = client.query_one(stmt, &[&i]).await.unwrap();
            assert_eq!(row.get::<_, i32>(0), i * 2);
        }
    });
    futures_util::future::join_all(futures).await;
    // Errors inside a pipeline affect only their own statement.
    let (ok, bad, ok2) = tokio::join!(
        client.query_one("SELECT 1", &[]),
        client.query_one("SELECT 1/0", &[]),
        client.query_one("SELECT 2", &[]),
    );
    assert!(ok.is_ok() && ok2.is_ok());
    assert_eq!(bad.unwrap_err().code().unwrap().code(), "22012");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_in_and_out() {
    let (_db, pgward) = setup();
    let (client, _h) = connect(&pgward.conn("app", "disable")).await;
    client
        .batch_execute("CREATE TABLE c (id int, v text)")
        .await
        .unwrap();
    let sink = client.copy_in("COPY c FROM STDIN").await.unwrap();
    futures_util::pin_mut!(sink);
    for chunk in 0..100 {
        let mut data = String::new();
        for i in 0..1000 {
            data.push_str(&format!("{}\tvalue-{}\n", chunk * 1000 + i, i));
        }
        sink.send(Bytes::from(data)).await.unwrap();
    }
    assert_eq!(sink.finish().await.unwrap(), 100_000);
    let stream = client
        .copy_out("COPY (SELECT * FROM c ORDER BY id) TO STDOUT")
        .await
        .unwrap();
    let chunks: Vec<Bytes> = stream.try_collect().await.unwrap();
    let text: Vec<u8> = chunks.concat();
    assert_eq!(text.iter().filter(|b| **b == b'\n').count(), 100_000);
    // A failed COPY (bad data) leaves the session usable.
    let sink = client.copy_in("COPY c FROM STDIN").await.unwrap();
    futures_util::pin_mut!(sink);
    sink.send(Bytes::from_static(b"not-a-number\tx\n"))
        .await
        .unwrap();
    assert!(sink.finish().await.is_err());
    let n: i64 = client
        .query_one("SELECT count(*) FROM c", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 100_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_notify_between_sessions() {
    let (_db, pgward) = setup();
    let conn = pgward.conn("app", "disable");
    let (listener, mut connection) = tokio_postgres::connect(&conn, NoTls).await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let stream = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
    tokio::spawn(async move {
        futures_util::pin_mut!(stream);
        while let Some(Ok(msg)) = stream.next().await {
            if let AsyncMessage::Notification(n) = msg {
                let _ = tx.send((n.channel().to_owned(), n.payload().to_owned()));
            }
        }
    });
    listener.batch_execute("LISTEN jobs").await.unwrap();
    let (sender, _h) = connect(&conn).await;
    for i in 0..5 {
        sender
            .batch_execute(&format!("NOTIFY jobs, 'job {i}'"))
            .await
            .unwrap();
    }
    for i in 0..5 {
        let (ch, payload) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("notification in time")
            .unwrap();
        assert_eq!((ch.as_str(), payload), ("jobs", format!("job {i}")));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_reaches_the_right_session_only() {
    let (db, pgward) = setup();
    let conn = pgward.conn("app", "disable");
    let (victim, _h1) = connect(&conn).await;
    let (bystander, _h2) = connect(&conn).await;
    let token = victim.cancel_token();
    let slow = tokio::spawn(async move { victim.batch_execute("SELECT pg_sleep(30)").await });
    let bystander_query =
        tokio::spawn(async move { bystander.query_one("SELECT 7 FROM pg_sleep(2)", &[]).await });
    // Wait until the sleep is really running upstream, then cancel through pgward.
    assert!(wait_until(Duration::from_secs(10), || {
        db.sql(
            "postgres",
            "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(30)'",
        ) == "1"
    }));
    token.cancel_query(NoTls).await.unwrap();
    let err = tokio::time::timeout(Duration::from_secs(10), slow)
        .await
        .expect("cancel took effect")
        .unwrap()
        .unwrap_err();
    assert_eq!(err.code().unwrap().code(), "57014");
    let row = bystander_query.await.unwrap().unwrap();
    assert_eq!(
        row.get::<_, i32>(0),
        7,
        "the other session was not cancelled"
    );
    assert!(pgward.metric("pgward_cancel_requests_total") >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wide_rows_stream_through() {
    let (_db, pgward) = setup();
    let (client, _h) = connect(&pgward.conn("app", "disable")).await;
    // A 64 MiB value in one DataRow, and many rows of 1 MiB.
    let row = client
        .query_one("SELECT repeat('w', 64 * 1024 * 1024)", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, &str>(0).len(), 64 * 1024 * 1024);
    let rows = client
        .query(
            "SELECT repeat('r', 1024 * 1024) FROM generate_series(1, 40)",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 40);
    // And a 32 MiB parameter sent to the server.
    let big = "b".repeat(32 * 1024 * 1024);
    let n: i32 = client
        .query_one("SELECT length($1::text)", &[&big])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 32 * 1024 * 1024);
}
