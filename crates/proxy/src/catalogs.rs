//! The upstream servers' own catalogs, which the policy resolves names against (see
//! crates/policy/src/server_catalog.rs): which functions and relations are built in *in that
//! server's version*, which functions anyone created, which operators and casts run code.
//!
//! One catalog per (upstream, database), fetched with pgward's own login on a connection of
//! its own. The first session to a database waits for it (a session is refused if it cannot
//! be read: the policy cannot be decided without it); later it is read again in the
//! background every `[policy] catalog_refresh_secs`, after DDL that pgward forwarded, and
//! after a policy reload. A decision checks for a newer one with one atomic load. Functions created through pgward are added at once
//! (before the refresh), so `(x).new_function` is decided as a call from the next statement
//! on.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use pgward_policy::ServerCatalog;
use pgward_upstream::Upstream;
use tracing::{info, warn};

type Key = (String, String);

/// The shortest time between two reads of one catalog.
const MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(1);

struct Entry {
    catalog: Arc<ServerCatalog>,
    /// `catalog`'s generation, readable without the lock (the per-decision check).
    generation: Arc<AtomicU64>,
    fetched: Instant,
    upstream: Arc<Upstream>,
    database: String,
    /// A background refresh is under way.
    refreshing: bool,
    /// Something changed while it was: refresh once more when it ends.
    again: bool,
}

/// Every upstream database's catalog, shared by all sessions.
pub struct ServerCatalogs {
    entries: RwLock<HashMap<Key, Entry>>,
    /// Serialises first fetches per key, so a burst of first sessions fetches once.
    first: Mutex<HashMap<Key, Arc<tokio::sync::Mutex<()>>>>,
    refresh_every: Duration,
    /// The policy version last seen: a reload refreshes every catalog.
    policy_version: Mutex<u64>,
    /// The policy has column masks: relations' columns and views' definitions are read
    /// too (masks are planned against them).
    columns: std::sync::atomic::AtomicBool,
}

/// A session's handle on its database's catalog.
#[derive(Clone)]
pub struct CatalogHandle {
    store: Arc<ServerCatalogs>,
    key: Key,
    generation: Arc<AtomicU64>,
}

impl ServerCatalogs {
    pub fn new(refresh_every: Duration) -> Arc<Self> {
        Arc::new(Self {
            entries: RwLock::new(HashMap::new()),
            first: Mutex::new(HashMap::new()),
            refresh_every,
            policy_version: Mutex::new(0),
            columns: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Whether catalogs also read relations' columns and views (when the policy has
    /// masks); set before the first fetch and at each reload.
    pub fn want_columns(&self, on: bool) {
        self.columns.store(on, Ordering::Release);
    }

    fn columns_wanted(&self) -> bool {
        self.columns.load(Ordering::Acquire)
    }

    /// The catalog of `database` on `upstream`, fetched now if there is none yet.
    pub async fn handle(
        self: &Arc<Self>,
        upstream: &Arc<Upstream>,
        database: &str,
    ) -> Result<CatalogHandle, String> {
        let key: Key = (upstream.name().to_owned(), database.to_owned());
        if let Some(h) = self.existing(&key) {
            return Ok(h);
        }
        let gate = {
            let mut first = self.first.lock().unwrap_or_else(|p| p.into_inner());
            Arc::clone(first.entry(key.clone()).or_default())
        };
        let _turn = gate.lock().await;
        if let Some(h) = self.existing(&key) {
            return Ok(h);
        }
        let catalog = fetch(upstream, database, self.columns_wanted()).await?;
        info!(
            upstream = upstream.name(),
            database,
            server_version_num = catalog.version_num(),
            functions = catalog.function_count(),
            "upstream catalog read"
        );
        let generation = Arc::new(AtomicU64::new(catalog.generation()));
        self.write().insert(
            key.clone(),
            Entry {
                catalog: Arc::new(catalog),
                generation: Arc::clone(&generation),
                fetched: Instant::now(),
                upstream: Arc::clone(upstream),
                database: database.to_owned(),
                refreshing: false,
                again: false,
            },
        );
        // Read again every refresh_every, off the decision path.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let store = Arc::downgrade(self);
            let every = self.refresh_every;
            let k = key.clone();
            runtime.spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    let Some(store) = store.upgrade() else { return };
                    store.refresh(&k);
                }
            });
        }
        Ok(CatalogHandle {
            store: Arc::clone(self),
            key,
            generation,
        })
    }

    fn existing(self: &Arc<Self>, key: &Key) -> Option<CatalogHandle> {
        let entries = self.entries.read().unwrap_or_else(|p| p.into_inner());
        entries.get(key).map(|e| CatalogHandle {
            store: Arc::clone(self),
            key: key.clone(),
            generation: Arc::clone(&e.generation),
        })
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<Key, Entry>> {
        self.entries.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts a background refresh of `key` (or asks the running one to go again).
    fn refresh(self: &Arc<Self>, key: &Key) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (upstream, database) = {
            let mut entries = self.write();
            let Some(e) = entries.get_mut(key) else {
                return;
            };
            if e.refreshing {
                e.again = true;
                return;
            }
            e.refreshing = true;
            (Arc::clone(&e.upstream), e.database.clone())
        };
        let store = Arc::clone(self);
        let key = key.clone();
        runtime.spawn(async move {
            loop {
                // A burst of DDL (a client library's test suite) reads the catalog at most
                // once a second: functions created through pgward are known without it.
                let since = {
                    let entries = store.entries.read().unwrap_or_else(|p| p.into_inner());
                    entries.get(&key).map(|e| e.fetched.elapsed())
                };
                if let Some(wait) = since.and_then(|s| MIN_REFRESH_INTERVAL.checked_sub(s)) {
                    tokio::time::sleep(wait).await;
                }
                let result = fetch(&upstream, &database, store.columns_wanted()).await;
                let mut entries = store.write();
                let Some(e) = entries.get_mut(&key) else { return };
                match result {
                    Ok(c) => {
                        e.generation.store(c.generation(), Ordering::Release);
                        e.catalog = Arc::new(c);
                        e.fetched = Instant::now();
                    }
                    // The old catalog stays in force; the next trigger tries again.
                    Err(err) => {
                        warn!(upstream = %key.0, database = %key.1, error = %err, "upstream catalog refresh failed; keeping the previous one");
                        e.fetched = Instant::now();
                    }
                }
                if !std::mem::take(&mut e.again) {
                    e.refreshing = false;
                    return;
                }
            }
        });
    }

    /// Refreshes every catalog once the policy version changes (a reload).
    fn note_policy_version(self: &Arc<Self>, version: u64) {
        let changed = {
            let mut seen = self
                .policy_version
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let changed = *seen != version;
            *seen = version;
            changed
        };
        if changed {
            let keys: Vec<Key> = self
                .entries
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .keys()
                .cloned()
                .collect();
            for k in keys {
                self.refresh(&k);
            }
        }
    }
}

impl CatalogHandle {
    /// The generation of the catalog in force: it changes each time the catalog is read
    /// again (on a timer, after DDL through pgward, after a reload).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The catalog now in force, if it is not the one with generation `have`: on the
    /// decision path, one atomic load unless it changed.
    pub fn newer_than(&self, have: Option<u64>) -> Option<Arc<ServerCatalog>> {
        if have == Some(self.generation.load(Ordering::Acquire)) {
            return None;
        }
        let entries = self.store.entries.read().unwrap_or_else(|p| p.into_inner());
        let e = entries.get(&self.key)?;
        (have != Some(e.catalog.generation())).then(|| Arc::clone(&e.catalog))
    }

    /// Whether catalogs read columns and views (the policy has masks).
    pub fn want_columns(&self, on: bool) {
        self.store.want_columns(on);
    }

    /// A policy reload was seen: every catalog is read again (once per reload).
    pub fn policy_changed(&self, policy_version: u64) {
        self.store.note_policy_version(policy_version);
    }

    /// After pgward forwarded a statement that creates or renames functions (as schema,
    /// name): they are known at once, and the catalog is read again to learn the rest.
    pub fn created(&self, functions: &[(String, String)]) -> Option<Arc<ServerCatalog>> {
        let updated = {
            let mut entries = self.store.write();
            let e = entries.get_mut(&self.key)?;
            if let Some(c) = e.catalog.with_created(functions) {
                e.generation.store(c.generation(), Ordering::Release);
                e.catalog = Arc::new(c);
            }
            Arc::clone(&e.catalog)
        };
        self.store.refresh(&self.key);
        Some(updated)
    }

    /// After pgward forwarded DDL that may change what the catalog says.
    pub fn changed(&self) {
        self.store.refresh(&self.key);
    }
}

async fn fetch(
    upstream: &Upstream,
    database: &str,
    columns: bool,
) -> Result<ServerCatalog, String> {
    let failed = |e: pgward_upstream::ConnectError| {
        format!(
            "cannot read the catalog of upstream {:?}: {e}",
            upstream.name()
        )
    };
    if !columns {
        let rows = upstream
            .query_rows(database, ServerCatalog::QUERY)
            .await
            .map_err(failed)?;
        return ServerCatalog::from_rows(rows).map_err(|e| e.to_string());
    }
    // Views' definitions are read with only pg_catalog on the path, so every other name
    // in them is schema-qualified.
    let mut session = upstream
        .own_session(database, "pgward (catalog)")
        .await
        .map_err(failed)?;
    let sql = format!(
        "{}; SET search_path = pg_catalog; {}",
        ServerCatalog::QUERY.trim(),
        ServerCatalog::COLUMNS_QUERY.trim()
    );
    let rows = upstream.query_on(&mut session, &sql).await;
    upstream.close_session(&mut session).await;
    ServerCatalog::from_rows(rows.map_err(failed)?).map_err(|e| e.to_string())
}
