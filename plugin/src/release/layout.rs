//! Where things live in a packed release directory (`OUT`):
//!
//! ```text
//! OUT/manifest.json            the signed manifest (written last)
//! OUT/files/<path>             each file of the release
//! OUT/tables/<blake3>.sgct     chunk tables, named by their own hash
//! OUT/placement.json           BLAKE3 -> CID map, written by `publish`
//! ```

use std::path::{Path, PathBuf};

use super::manifest::Blake3;

pub const MANIFEST: &str = "manifest.json";
pub const PLACEMENT: &str = "placement.json";
pub const FILES_DIR: &str = "files";
pub const TABLES_DIR: &str = "tables";
pub const TABLE_EXT: &str = "sgct";

/// A packed release directory.
#[derive(Debug, Clone)]
pub struct ReleaseDir {
    root: PathBuf,
}

impl ReleaseDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// Accepts either the directory or a path to its `manifest.json`.
    pub fn from_arg(arg: &Path) -> Self {
        if arg.file_name().is_some_and(|n| n == MANIFEST) && arg.is_file() {
            Self::new(arg.parent().unwrap_or(Path::new(".")))
        } else {
            Self::new(arg)
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn manifest(&self) -> PathBuf {
        self.root.join(MANIFEST)
    }

    pub fn placement(&self) -> PathBuf {
        self.root.join(PLACEMENT)
    }

    /// Path of a release file. `path` must have passed `check_path`.
    pub fn file(&self, path: &str) -> PathBuf {
        let mut p = self.root.join(FILES_DIR);
        p.extend(path.split('/'));
        p
    }

    pub fn table(&self, hash: &Blake3) -> PathBuf {
        self.root.join(TABLES_DIR).join(format!("{hash}.{TABLE_EXT}"))
    }
}
