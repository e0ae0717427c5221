//! The PostgreSQL store's connection slots against a real PostgreSQL: a replica holding many
//! slots of one scope (more than its own lock re-entrance could hide) gives back every one,
//! another replica then gets exactly the cap; a refused call of two scopes holds nothing; an
//! instance name is claimed once.
// Test helpers outside #[test] functions may unwrap too (clippy.toml only covers the tests).
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use pgward_cluster::{Acquired, Cluster, ClusterConfig, Scope};
use pgward_devkit::postgres::{EphemeralPostgres, PgOptions};

const PASSWORD: &str = "slots-secret-Vb40";

fn config(port: u16) -> ClusterConfig {
    toml::from_str(&format!(
        r#"
backend = "postgres"
lease_secs = 3
[postgres]
host = "127.0.0.1"
port = {port}
database = "pgward_control"
tls = "disable"
[postgres.credential]
type = "password"
user = "pgward_cluster"
password = "{PASSWORD}"
"#
    ))
    .unwrap()
}

/// A control database on a new server, and two replicas `a` and `b` on it.
async fn control_store() -> (Arc<EphemeralPostgres>, Arc<Cluster>, Arc<Cluster>) {
    let pg = Arc::new(EphemeralPostgres::start(PgOptions::default()).unwrap());
    pg.create_login("pgward_cluster", PASSWORD, "scram-sha-256")
        .unwrap();
    pg.psql(
        "postgres",
        "CREATE DATABASE pgward_control OWNER pgward_cluster",
    )
    .unwrap();
    let a = Cluster::start(config(pg.port), "a", no_cancels())
        .await
        .unwrap();
    let b = Cluster::start(config(pg.port), "b", no_cancels())
        .await
        .unwrap();
    (pg, a, b)
}

fn no_cancels() -> pgward_cluster::CancelSink {
    Arc::new(|_, _| false)
}

async fn take(cluster: &Arc<Cluster>, scope: &Scope, n: usize) -> Vec<pgward_cluster::Slots> {
    let mut held = Vec::new();
    for _ in 0..n {
        match cluster.acquire(std::slice::from_ref(scope)).await.unwrap() {
            Acquired::Held(s) => held.push(s),
            Acquired::Full(_) => break,
        }
    }
    held
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slots_are_exact_and_all_come_back() {
    let (pg, a, b) = control_store().await;
    let scope = Scope {
        key: "identity alice".into(),
        limit: 30,
    };

    // One replica takes 20 (its earlier slots are its own re-entrant locks: skipped).
    let held = take(&a, &scope, 20).await;
    assert_eq!(held.len(), 20);
    // The other gets the remaining 10, and no more.
    let other = take(&b, &scope, 40).await;
    assert_eq!(other.len(), 10);
    // Releasing 20 (in the background) lets exactly 20 in again.
    drop(held);
    let mut again = Vec::new();
    for _ in 0..50 {
        again.extend(take(&b, &scope, 20 - again.len()).await);
        if again.len() == 20 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(again.len(), 20, "slots given back by a");
    assert!(take(&b, &scope, 1).await.is_empty(), "the cap is exact");

    // A second scope in the same call: all or nothing.
    let role = Scope {
        key: "role etl".into(),
        limit: 1,
    };
    drop(again);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let both = [scope.clone(), role.clone()];
    let first = a.acquire(&both).await.unwrap();
    assert!(matches!(first, Acquired::Held(_)));
    assert!(matches!(a.acquire(&both).await.unwrap(), Acquired::Full(1)));
    // The refused call gave its identity slot back: 30 - 10 (b) - 1 (first) remain.
    let rest = take(&a, &scope, 40).await;
    assert_eq!(rest.len(), 19);

    // The instance name is claimed once.
    let dup = Cluster::start(config(pg.port), "a", no_cancels()).await;
    assert!(dup.unwrap_err().contains("already claimed"));
    drop(other);
}

/// A call abandoned at its timeout (the store blocked, not down) drops the connection; the
/// reconnect ends the abandoned backend, which still holds the replica's locks, and takes
/// the name and every slot in use again — none of them is left for another replica to take.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_call_loses_no_slot() {
    let (pg, a, b) = control_store().await;
    let scope = Scope {
        key: "identity carol".into(),
        limit: 5,
    };
    let held = take(&a, &scope, 5).await;
    assert_eq!(held.len(), 5);

    // Someone holds the buckets table for 2 s: a's lease call blocks, times out (500 ms),
    // and a reconnects while its old backend still waits for the lock.
    let blocker = {
        let pg = pg.clone();
        std::thread::spawn(move || {
            pg.psql(
                "pgward_control",
                "BEGIN; LOCK TABLE pgward_cluster.buckets; SELECT pg_sleep(2); COMMIT;",
            )
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let e = a.lease("rate carol", 10.0, 10.0, 1.0).await.unwrap_err();
    assert!(matches!(e, pgward_cluster::StoreError::Timeout(_)), "{e}");
    // The blocker ends (its transaction was not the abandoned backend's). Both replicas
    // are up again (b's heartbeat was blocked too); b still finds every slot taken, now and
    // after the abandoned backend would have gone.
    let _ = blocker.join();
    for c in [&a, &b] {
        for _ in 0..100 {
            if c.is_up() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(c.is_up(), "{c:?} reconnected");
    }
    assert!(
        take(&b, &scope, 1).await.is_empty(),
        "a slot was lost in the reconnect"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        take(&b, &scope, 1).await.is_empty(),
        "a slot was lost in the reconnect"
    );
    // And a's name is still a's.
    let dup = Cluster::start(config(pg.port), "a", no_cancels()).await;
    assert!(dup.unwrap_err().contains("already claimed"));
    drop(held);
}
