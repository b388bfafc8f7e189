//! Opening the embedded databases (redb): the usage ledger and the release
//! registry. A path is created with its directory; no path keeps the
//! database in memory (tests, and gateways that need no durability).

use std::path::Path;

/// Opens or creates the database at `path`, or an in-memory one. The error
/// is a sentence for the caller to wrap with the database's role and path.
pub(crate) fn open_db(path: Option<&Path>) -> Result<redb::Database, String> {
    match path {
        Some(p) => {
            if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
            }
            redb::Database::create(p).map_err(|e| e.to_string())
        }
        None => redb::Database::builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .map_err(|e| e.to_string()),
    }
}

/// How a database is named in errors.
pub(crate) fn shown(path: Option<&Path>) -> String {
    path.map(|p| p.display().to_string()).unwrap_or_else(|| "(memory)".into())
}
