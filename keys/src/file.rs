//! Reading and writing the keys file: atomic replacement under an exclusive lock, so that two
//! `flowhouse keys` commands never lose each other's change and a service never reads half a file.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::Scope;

pub const FORMAT_VERSION: u32 = 1;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct KeysFile {
    pub version: u32,
    pub keys: Vec<KeyRecord>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KeyRecord {
    /// Public name of the key, also part of the key itself.
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// SHA-256 of the whole key, hex.
    pub sha256: String,
    pub account_id: Uuid,
    pub workspaces: Vec<Uuid>,
    pub scopes: Vec<Scope>,
    pub created_at: DateTime<Utc>,
    #[serde(default)]
    pub revoked_at: Option<DateTime<Utc>>,
}

impl KeysFile {
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the keys file {}", path.display()))?;
        let file: KeysFile = serde_json::from_str(&text)
            .with_context(|| format!("the keys file {} is not valid", path.display()))?;
        if file.version != FORMAT_VERSION {
            bail!(
                "the keys file {} has format version {}, this Flowhouse reads version {FORMAT_VERSION}",
                path.display(),
                file.version
            );
        }
        Ok(file)
    }

    /// Applies `change` to the file (created if missing) under an exclusive lock and replaces it
    /// atomically.
    pub fn update<T>(
        path: &Path,
        change: impl FnOnce(&mut KeysFile) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        let lock_path = sidecar(path, ".lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .with_context(|| format!("cannot open {}", lock_path.display()))?;
        lock.lock()
            .with_context(|| format!("cannot lock {}", lock_path.display()))?;

        let mut file = if path.exists() {
            Self::read(path)?
        } else {
            KeysFile {
                version: FORMAT_VERSION,
                keys: Vec::new(),
            }
        };
        let result = change(&mut file)?;

        let temporary = sidecar(path, ".tmp");
        let mut out = File::create(&temporary)
            .with_context(|| format!("cannot write {}", temporary.display()))?;
        restrict_permissions(&out)?;
        serde_json::to_writer_pretty(&mut out, &file)?;
        out.write_all(b"\n")?;
        out.sync_all()?;
        std::fs::rename(&temporary, path)
            .with_context(|| format!("cannot replace {}", path.display()))?;
        Ok(result)
    }
}

fn sidecar(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    path.with_file_name(name)
}

/// Hashes are not secrets, but nobody else needs to read the file.
fn restrict_permissions(file: &File) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    Ok(())
}
