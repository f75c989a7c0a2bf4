//! Throw-away stores for tests, one per engine: a redb file in a temporary directory, and a
//! fresh database on the PostgreSQL server named by `SAFETYTWIN_TEST_POSTGRES` (a superuser
//! URL; `cargo xtask test` starts one), dropped afterwards. Without that variable the
//! PostgreSQL engine is skipped with a message, unless `SAFETYTWIN_POSTGRES_REQUIRED=1`.

use std::sync::atomic::{AtomicU32, Ordering};

use crate::{Store, StoreUrl};

/// A store's location that lives as long as this value.
pub struct Scratch {
    /// Where the store is.
    pub url: StoreUrl,
    /// The engine's name, for test messages.
    pub engine: &'static str,
    _dir: Option<tempfile::TempDir>,
    database: Option<(String, String)>,
}

impl Scratch {
    /// Opens the store (again: a second open is a second replayer on the same history).
    pub fn open(&self) -> Store {
        Store::connect(&self.url)
            .unwrap_or_else(|e| panic!("open the {} store {}: {e}", self.engine, self.url))
    }

    /// An embedded store in a fresh directory.
    pub fn redb() -> Scratch {
        let dir = tempfile::tempdir().expect("temp dir");
        Scratch {
            url: StoreUrl::Redb(dir.path().join("history.redb")),
            engine: "redb",
            _dir: Some(dir),
            database: None,
        }
    }

    /// A fresh, empty PostgreSQL database, or `None` (with a message) where no server is set.
    pub fn postgres() -> Option<Scratch> {
        let Ok(admin) = std::env::var("SAFETYTWIN_TEST_POSTGRES") else {
            assert!(
                std::env::var("SAFETYTWIN_POSTGRES_REQUIRED").as_deref() != Ok("1"),
                "SAFETYTWIN_POSTGRES_REQUIRED=1 but SAFETYTWIN_TEST_POSTGRES is not set"
            );
            eprintln!(
                "skipped the PostgreSQL engine: set SAFETYTWIN_TEST_POSTGRES to a superuser URL \
                 (`cargo xtask test` starts a server)"
            );
            return None;
        };
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "st_test_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        // Two statements, not one batch: a batch is one transaction, which these refuse.
        admin_sql(
            &admin,
            &[
                format!("DROP DATABASE IF EXISTS {name}"),
                format!("CREATE DATABASE {name}"),
            ],
        )
        .unwrap_or_else(|e| panic!("create the test database on {admin}: {e}"));
        let url = database_url(&admin, &name);
        Some(Scratch {
            url: StoreUrl::Postgres(url),
            engine: "postgres",
            _dir: None,
            database: Some((admin, name)),
        })
    }

    /// Every engine this run can test: redb always, PostgreSQL where a server is set.
    pub fn each() -> Vec<Scratch> {
        let mut all = vec![Scratch::redb()];
        all.extend(Scratch::postgres());
        all
    }
}

/// `admin` (`postgres://user@host:port/db?…`) with its database replaced by `name`.
fn database_url(admin: &str, name: &str) -> String {
    let (base, query) = admin
        .split_once('?')
        .map_or((admin, None), |(b, q)| (b, Some(q)));
    let after_scheme = base.find("://").map_or(0, |i| i + 3);
    let base = match base[after_scheme..].find('/') {
        Some(slash) => &base[..after_scheme + slash],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{name}?{q}"),
        None => format!("{base}/{name}"),
    }
}

/// Runs `statements` one by one as the superuser, on a thread of its own: the synchronous
/// client runs a runtime of its own, which an async test's thread refuses to start.
fn admin_sql(admin: &str, statements: &[String]) -> Result<(), postgres::Error> {
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut client = postgres::Client::connect(admin, postgres::NoTls)?;
            for sql in statements {
                client.batch_execute(sql)?;
            }
            Ok(())
        })
        .join()
        .expect("the admin thread panicked")
    })
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Some((admin, name)) = self.database.take() {
            // FORCE: a store still open elsewhere in the test (a pool's idle connections).
            let _ = admin_sql(
                &admin,
                &[format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")],
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_database_is_replaced_in_the_url() {
        assert_eq!(
            database_url("postgres://postgres@127.0.0.1:5/postgres", "x"),
            "postgres://postgres@127.0.0.1:5/x"
        );
        assert_eq!(
            database_url("postgres://u@h?sslmode=disable", "x"),
            "postgres://u@h/x?sslmode=disable"
        );
    }
}
