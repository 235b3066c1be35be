//! Tenant API keys, shared by the ingestion endpoint and the query API: one implementation of
//! who may write or read which workspace.
//!
//! ## The keys file
//! JSON, written by `flowhouse keys`, read by the services and reloaded when it changes:
//!
//! ```json
//! {
//!   "version": 1,
//!   "keys": [
//!     {
//!       "id": "k3f9a2c1d0b7e",
//!       "name": "ci pipeline",
//!       "sha256": "5f2b…",
//!       "account_id": "0b0e…",
//!       "workspaces": ["7c1d…"],
//!       "scopes": ["write", "read"],
//!       "created_at": "2026-11-22T04:00:00Z",
//!       "revoked_at": null
//!     }
//!   ]
//! }
//! ```
//!
//! A key is `fh_<id>_<secret>`; only the SHA-256 of the whole key is stored, so the file does not
//! reveal keys (keys are 256-bit random, so a fast hash is enough: there is nothing to brute-force).
//! The `id` names a key in listings and revocations without revealing it.

pub mod cli;
pub mod credentials;
mod file;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use flowhouse_schema::Tenant;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

pub use credentials::{key_from_auth_string, key_from_authorization};
pub use file::{KeyRecord, KeysFile};

/// What a key may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Send events and logs.
    Write,
    /// Query metrics, events and logs.
    Read,
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Scope::Write => "write",
            Scope::Read => "read",
        })
    }
}

/// Why a request was refused. `Missing` and `Unknown` are 401s; `Forbidden` is a 403.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error(
        "no API key: send `Authorization: Bearer <key>` (Prefect: PREFECT_API_KEY), or Basic \
         credentials with the key as password (Prefect: PREFECT_API_AUTH_STRING)"
    )]
    Missing,
    #[error("unknown or revoked API key")]
    Unknown,
    #[error("{0}")]
    Forbidden(String),
}

impl AuthError {
    /// The one mapping of a refusal to HTTP, shared by every service: 401 when the caller is
    /// not known (no key, unknown or revoked key), 403 when a known key may not do this.
    pub fn status(&self) -> http::StatusCode {
        match self {
            AuthError::Missing | AuthError::Unknown => http::StatusCode::UNAUTHORIZED,
            AuthError::Forbidden(_) => http::StatusCode::FORBIDDEN,
        }
    }
}

/// The hash a key is stored and looked up by.
pub fn key_hash(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// The keys in force, looked up by hash.
#[derive(Clone, Debug, Default)]
pub struct KeySet {
    by_hash: HashMap<String, KeyRecord>,
}

impl KeySet {
    pub fn from_file(file: &KeysFile) -> Self {
        let by_hash = file
            .keys
            .iter()
            .filter(|record| record.revoked_at.is_none())
            .map(|record| (record.sha256.clone(), record.clone()))
            .collect();
        Self { by_hash }
    }

    /// Checks `key` for `scope` on the workspace named by the request path. The tenant returned
    /// is the path's, and only once the key is proven to hold it.
    pub fn authorize(
        &self,
        key: Option<&str>,
        account_id: Uuid,
        workspace_id: Uuid,
        scope: Scope,
    ) -> Result<Tenant, AuthError> {
        let key = key
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .ok_or(AuthError::Missing)?;
        let record = self.by_hash.get(&key_hash(key)).ok_or(AuthError::Unknown)?;
        if record.account_id != account_id || !record.workspaces.contains(&workspace_id) {
            return Err(AuthError::Forbidden(format!(
                "this key does not hold workspace {workspace_id} of account {account_id}"
            )));
        }
        if !record.scopes.contains(&scope) {
            return Err(AuthError::Forbidden(format!(
                "this key lacks the `{scope}` scope"
            )));
        }
        Ok(Tenant {
            account_id,
            workspace_id,
        })
    }

    /// Every workspace `key` holds with `scope`, in the order the keys file lists them: what a
    /// dashboard signs in to. The same refusals as [`KeySet::authorize`]: no key, an unknown or
    /// revoked one, or one without the scope.
    pub fn workspaces(&self, key: Option<&str>, scope: Scope) -> Result<Vec<Tenant>, AuthError> {
        let key = key
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .ok_or(AuthError::Missing)?;
        let record = self.by_hash.get(&key_hash(key)).ok_or(AuthError::Unknown)?;
        if !record.scopes.contains(&scope) {
            return Err(AuthError::Forbidden(format!(
                "this key lacks the `{scope}` scope"
            )));
        }
        Ok(record
            .workspaces
            .iter()
            .map(|&workspace_id| Tenant {
                account_id: record.account_id,
                workspace_id,
            })
            .collect())
    }

    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }
}

/// The keys file as the services use it: loaded at start, reloaded when it changes on disk.
/// A file that fails to parse after an edit keeps the previous keys in force (and says so in the
/// logs), so a typo does not lock every tenant out.
#[derive(Clone)]
pub struct Keys {
    current: Arc<RwLock<Arc<KeySet>>>,
    path: PathBuf,
    /// The file's modification time and size when it was last read: the watcher's baseline,
    /// taken at load so that a change made before the watcher starts is still seen.
    loaded: Arc<RwLock<Option<(SystemTime, u64)>>>,
}

/// Metrics of the keys file (on the `/metrics` of every service that reads it).
pub const KEYS_LOADED: &str = "flowhouse_keys_loaded";
pub const KEYS_RELOAD_FAILURES: &str = "flowhouse_keys_reload_failures_total";

impl Keys {
    /// Loads the file; a missing or broken file at start is an error (nothing would authenticate).
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        // The stamp first: a change that lands while the file is read is seen by the watcher.
        let stamp = file_stamp(path);
        let file = KeysFile::read(path)?;
        let set = KeySet::from_file(&file);
        metrics::describe_gauge!(KEYS_LOADED, "API keys in force (not revoked).");
        metrics::describe_counter!(
            KEYS_RELOAD_FAILURES,
            "Reloads of the keys file that failed; the previous keys stayed in force."
        );
        metrics::gauge!(KEYS_LOADED).set(set.len() as f64);
        Ok(Self {
            current: Arc::new(RwLock::new(Arc::new(set))),
            path: path.to_path_buf(),
            loaded: Arc::new(RwLock::new(stamp)),
        })
    }

    /// A fixed key set, for tests.
    pub fn fixed(set: KeySet) -> Self {
        Self {
            current: Arc::new(RwLock::new(Arc::new(set))),
            path: PathBuf::new(),
            loaded: Arc::new(RwLock::new(None)),
        }
    }

    pub fn current(&self) -> Arc<KeySet> {
        self.current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    pub fn authorize(
        &self,
        key: Option<&str>,
        account_id: Uuid,
        workspace_id: Uuid,
        scope: Scope,
    ) -> Result<Tenant, AuthError> {
        self.current()
            .authorize(key, account_id, workspace_id, scope)
    }

    pub fn workspaces(&self, key: Option<&str>, scope: Scope) -> Result<Vec<Tenant>, AuthError> {
        self.current().workspaces(key, scope)
    }

    /// Re-reads the file whenever its modification time or size changes, every `interval`,
    /// until the returned task is dropped or aborted.
    pub fn watch(&self, interval: Duration) -> tokio::task::JoinHandle<()> {
        let keys = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                keys.reload_if_changed();
            }
        })
    }

    /// Re-reads the file if it changed since it was last read; true if it did.
    pub fn reload_if_changed(&self) -> bool {
        let stamp = file_stamp(&self.path);
        let mut loaded = self
            .loaded
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if stamp == *loaded {
            return false;
        }
        *loaded = stamp;
        drop(loaded);
        self.reload();
        true
    }

    /// Re-reads the file now. A file that fails to read keeps the previous keys in force.
    pub fn reload(&self) {
        match KeysFile::read(&self.path) {
            Ok(file) => {
                let set = KeySet::from_file(&file);
                tracing::info!(path = %self.path.display(), keys = set.len(), "reloaded API keys");
                metrics::gauge!(KEYS_LOADED).set(set.len() as f64);
                *self
                    .current
                    .write()
                    .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(set);
            }
            Err(error) => {
                metrics::counter!(KEYS_RELOAD_FAILURES).increment(1);
                tracing::error!(
                    path = %self.path.display(),
                    error = format!("{error:#}"),
                    "cannot reload API keys; the previous keys stay in force"
                );
            }
        }
    }
}

fn file_stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let metadata = std::fs::metadata(path).ok()?;
    Some((metadata.modified().ok()?, metadata.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set_with(record: KeyRecord) -> KeySet {
        KeySet::from_file(&KeysFile {
            version: 1,
            keys: vec![record],
        })
    }

    fn record(key: &str, account: Uuid, workspace: Uuid, scopes: &[Scope]) -> KeyRecord {
        KeyRecord {
            id: "k1".into(),
            name: None,
            sha256: key_hash(key),
            account_id: account,
            workspaces: vec![workspace],
            scopes: scopes.to_vec(),
            created_at: chrono::Utc::now(),
            revoked_at: None,
        }
    }

    #[test]
    fn a_key_opens_only_its_workspaces_and_scopes() {
        let (account, workspace, other) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let set = set_with(record("fh_a_secret", account, workspace, &[Scope::Write]));

        assert_eq!(
            set.authorize(Some("fh_a_secret"), account, workspace, Scope::Write),
            Ok(Tenant {
                account_id: account,
                workspace_id: workspace
            })
        );
        assert!(matches!(
            set.authorize(Some("fh_a_secret"), account, other, Scope::Write),
            Err(AuthError::Forbidden(_))
        ));
        assert!(matches!(
            set.authorize(Some("fh_a_secret"), other, workspace, Scope::Write),
            Err(AuthError::Forbidden(_))
        ));
        assert!(matches!(
            set.authorize(Some("fh_a_secret"), account, workspace, Scope::Read),
            Err(AuthError::Forbidden(_))
        ));
        assert_eq!(
            set.authorize(Some("fh_a_secreT"), account, workspace, Scope::Write),
            Err(AuthError::Unknown)
        );
        assert_eq!(
            set.authorize(None, account, workspace, Scope::Write),
            Err(AuthError::Missing)
        );
        assert_eq!(
            set.authorize(Some("  "), account, workspace, Scope::Write),
            Err(AuthError::Missing)
        );
    }

    #[test]
    fn a_key_lists_only_its_own_workspaces_for_its_scopes() {
        let (account, w1, w2) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let mut both = record("fh_c_secret", account, w1, &[Scope::Read]);
        both.workspaces.push(w2);
        let other = record(
            "fh_d_secret",
            Uuid::new_v4(),
            Uuid::new_v4(),
            &[Scope::Write],
        );
        let set = KeySet::from_file(&KeysFile {
            version: 1,
            keys: vec![both, other],
        });
        let tenants = set.workspaces(Some("fh_c_secret"), Scope::Read).unwrap();
        assert_eq!(
            tenants.iter().map(|t| t.workspace_id).collect::<Vec<_>>(),
            vec![w1, w2]
        );
        assert!(tenants.iter().all(|t| t.account_id == account));
        assert!(matches!(
            set.workspaces(Some("fh_d_secret"), Scope::Read),
            Err(AuthError::Forbidden(_))
        ));
        assert_eq!(
            set.workspaces(Some("fh_x_secret"), Scope::Read),
            Err(AuthError::Unknown)
        );
        assert_eq!(set.workspaces(None, Scope::Read), Err(AuthError::Missing));
    }

    #[test]
    fn revoked_keys_open_nothing() {
        let (account, workspace) = (Uuid::new_v4(), Uuid::new_v4());
        let mut revoked = record("fh_b_secret", account, workspace, &[Scope::Read]);
        revoked.revoked_at = Some(chrono::Utc::now());
        let set = set_with(revoked);
        assert_eq!(
            set.authorize(Some("fh_b_secret"), account, workspace, Scope::Read),
            Err(AuthError::Unknown)
        );
    }
}
