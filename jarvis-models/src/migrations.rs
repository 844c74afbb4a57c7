//! The seed's migrations beside the bookkeeping set, and the functions that apply both.
//!
//! Everything of [`jarvis_db::migrations`] is re-exported here ([`Backend`], [`MigrationSet`],
//! [`BOOKKEEPING`], the `*_of` functions, ...). This module adds:
//!
//! - [`SEED`] (`migrations/seed`): the original system's application tables (`users`,
//!   `api_keys`, `oauth_tokens` and their summary views), for the seed's models;
//! - [`run_pending_migrations`], [`revert_all_migrations`], [`migration_status`] and their
//!   `*_blocking` variants, which work on both sets ([`BOOKKEEPING`], then [`SEED`]), as the
//!   `jarvis` binary does;
//! - [`POSTGRES_MIGRATIONS`] and [`SQLITE_MIGRATIONS`], every migration of both sets for one
//!   backend as one diesel source (`migrations/postgres`, `migrations/sqlite`).
//!
//! The two sets never share a version, so a database migrated before the split (one set of
//! eleven migrations) has every version of both already and upgrades without running
//! anything.

use diesel_migrations::{EmbeddedMigrations, embed_migrations};

pub use jarvis_db::migrations::*;

/// Every PostgreSQL migration of both sets (`migrations/postgres`, which links those of
/// `migrations/bookkeeping/postgres` and `migrations/seed/postgres`), embedded at compile
/// time: what [`run_pending_migrations`] applies on PostgreSQL.
pub const POSTGRES_MIGRATIONS: EmbeddedMigrations = embed_migrations!("../migrations/postgres");

/// Every SQLite migration of both sets (`migrations/sqlite`).
pub const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("../migrations/sqlite");

/// The seed's application tables: users, API keys, OAuth tokens and their summary views.
pub const SEED: MigrationSet = MigrationSet::new(
    "seed",
    &embed_migrations!("../migrations/seed/postgres"),
    &embed_migrations!("../migrations/seed/sqlite"),
);

/// What the functions of this module apply: the bookkeeping tables, then the seed's.
const ALL: [MigrationSet; 2] = [BOOKKEEPING, SEED];

/// Applies every pending migration of both sets ([`BOOKKEEPING`], [`SEED`]) to the database
/// at `database_url`, oldest first, and returns the migrations applied (empty when the schema
/// was up to date).
pub async fn run_pending_migrations(
    database_url: &str,
) -> Result<Vec<MigrationInfo>, MigrationError> {
    run_pending_migrations_of(database_url, &ALL).await
}

/// Reverts every applied migration of both sets, newest first, and returns the migrations
/// reverted. This drops every jarvis table and its rows.
pub async fn revert_all_migrations(
    database_url: &str,
) -> Result<Vec<MigrationInfo>, MigrationError> {
    revert_all_migrations_of(database_url, &ALL).await
}

/// Lists the applied and pending migrations of both sets of the database at `database_url`.
///
/// Creates diesel's bookkeeping table `__diesel_schema_migrations` if it does not exist.
pub async fn migration_status(database_url: &str) -> Result<MigrationStatus, MigrationError> {
    migration_status_of(database_url, &ALL).await
}

/// [`run_pending_migrations`] on the calling thread. Do not call it from an async task.
pub fn run_pending_migrations_blocking(
    database_url: &str,
) -> Result<Vec<MigrationInfo>, MigrationError> {
    run_pending_migrations_of_blocking(database_url, &ALL)
}

/// [`revert_all_migrations`] on the calling thread. Do not call it from an async task.
pub fn revert_all_migrations_blocking(
    database_url: &str,
) -> Result<Vec<MigrationInfo>, MigrationError> {
    revert_all_migrations_of_blocking(database_url, &ALL)
}

/// [`migration_status`] on the calling thread. Do not call it from an async task.
pub fn migration_status_blocking(database_url: &str) -> Result<MigrationStatus, MigrationError> {
    migration_status_of_blocking(database_url, &ALL)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_migrations_match_between_backends() {
        let postgres = Backend::Postgres.embedded_migrations();
        let sqlite = Backend::Sqlite.embedded_migrations();
        assert!(!postgres.is_empty());
        assert_eq!(postgres, sqlite, "both backends have the same migrations");
        assert_eq!(postgres[0].name, "2026-11-28-000001_create_users");
        assert_eq!(postgres[0].version, "20261128000001");
    }

    #[test]
    fn the_sets_share_no_version() {
        for backend in [Backend::Postgres, Backend::Sqlite] {
            let bookkeeping = backend.embedded_migrations_of(&[BOOKKEEPING]);
            let seed = backend.embedded_migrations_of(&[SEED]);
            assert!(!bookkeeping.is_empty() && !seed.is_empty());
            for info in &bookkeeping {
                assert!(!seed.iter().any(|s| s.version == info.version), "{info}");
            }
            assert_eq!(
                bookkeeping.len() + seed.len(),
                backend.embedded_migrations().len()
            );
        }
    }

    /// `migrations/postgres` and `migrations/sqlite` link every migration of both sets, and
    /// nothing else: the combined constants and `Backend::migrations()` are both sets.
    #[test]
    fn every_migration_is_linked_in_the_combined_folders() {
        for (backend, combined) in [
            (Backend::Postgres, POSTGRES_MIGRATIONS),
            (Backend::Sqlite, SQLITE_MIGRATIONS),
        ] {
            let sets = backend.embedded_migrations_of(&ALL);
            let listed = match backend {
                Backend::Postgres => {
                    diesel::migration::MigrationSource::<diesel::pg::Pg>::migrations(&combined)
                        .map(|m| m.iter().map(|m| m.name().to_string()).collect::<Vec<_>>())
                }
                Backend::Sqlite => {
                    diesel::migration::MigrationSource::<diesel::sqlite::Sqlite>::migrations(
                        &combined,
                    )
                    .map(|m| m.iter().map(|m| m.name().to_string()).collect::<Vec<_>>())
                }
            };
            let mut listed = listed.expect("embedded");
            listed.sort();
            let names: Vec<String> = sets.iter().map(|m| m.name.clone()).collect();
            assert_eq!(
                listed,
                names,
                "{backend}: migrations/{} links",
                backend.name()
            );
            assert_eq!(backend.embedded_migrations(), sets);
        }
    }
}
