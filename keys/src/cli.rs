//! `flowhouse keys create | list | revoke`.

use std::path::PathBuf;

use anyhow::bail;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore as _;
use uuid::Uuid;

use crate::{KeyRecord, KeysFile, Scope, key_hash};

/// Flags of `flowhouse keys`.
#[derive(clap::Args, Clone, Debug)]
pub struct Args {
    /// The keys file the endpoint and the query API read.
    #[arg(
        long,
        env = "FLOWHOUSE_KEYS_FILE",
        default_value = "keys.json",
        global = true
    )]
    pub keys_file: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(clap::Subcommand, Clone, Debug)]
pub enum Command {
    /// Create a key and print it, alone, on the last line (it cannot be recovered later).
    Create {
        /// The account the key belongs to.
        #[arg(long)]
        account: Uuid,
        /// A workspace the key opens; repeat for several.
        #[arg(long, required = true)]
        workspace: Vec<Uuid>,
        /// What the key may do.
        #[arg(long, value_delimiter = ',', default_value = "write,read")]
        scopes: Vec<Scope>,
        /// A note on what the key is for.
        #[arg(long)]
        name: Option<String>,
    },
    /// List the keys (never the keys themselves: they are not stored).
    List,
    /// Revoke a key by its id; services stop accepting it within seconds.
    Revoke {
        /// The key's id, as `list` shows it.
        id: String,
    },
}

pub fn run(args: Args) -> anyhow::Result<()> {
    match args.command {
        Command::Create {
            account,
            workspace,
            scopes,
            name,
        } => {
            let key = create(&args.keys_file, account, workspace, scopes, name)?;
            println!("{key}");
        }
        Command::List => {
            let file = KeysFile::read(&args.keys_file)?;
            println!(
                "{:<15} {:<8} {:<36} {:<12} {:<20} name / workspaces",
                "id", "state", "account", "scopes", "created"
            );
            for key in &file.keys {
                let state = if key.revoked_at.is_some() {
                    "revoked"
                } else {
                    "active"
                };
                let scopes: Vec<String> = key.scopes.iter().map(ToString::to_string).collect();
                let workspaces: Vec<String> =
                    key.workspaces.iter().map(ToString::to_string).collect();
                println!(
                    "{:<15} {:<8} {:<36} {:<12} {:<20} {}{}",
                    key.id,
                    state,
                    key.account_id,
                    scopes.join(","),
                    key.created_at.format("%Y-%m-%d %H:%M:%S"),
                    key.name
                        .as_deref()
                        .map(|n| format!("{n}: "))
                        .unwrap_or_default(),
                    workspaces.join(","),
                );
            }
        }
        Command::Revoke { id } => {
            revoke(&args.keys_file, &id)?;
            println!("revoked {id}");
        }
    }
    Ok(())
}

/// Marks the key `id` revoked (kept in the file, so that `list` shows it).
pub fn revoke(keys_file: &std::path::Path, id: &str) -> anyhow::Result<()> {
    KeysFile::update(keys_file, |file| {
        let Some(key) = file.keys.iter_mut().find(|key| key.id == id) else {
            bail!("no key with id {id} in {}", keys_file.display());
        };
        if key.revoked_at.is_none() {
            key.revoked_at = Some(chrono::Utc::now());
        }
        Ok(())
    })
}

/// Adds a new key to the file and returns it.
pub fn create(
    path: &std::path::Path,
    account: Uuid,
    workspaces: Vec<Uuid>,
    scopes: Vec<Scope>,
    name: Option<String>,
) -> anyhow::Result<String> {
    if scopes.is_empty() {
        bail!("a key needs at least one scope");
    }
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let secret = URL_SAFE_NO_PAD.encode(bytes);
    let id = format!("k{}", &Uuid::new_v4().simple().to_string()[..12]);
    let key = format!("fh_{id}_{secret}");
    KeysFile::update(path, |file| {
        file.keys.push(KeyRecord {
            id,
            name,
            sha256: key_hash(&key),
            account_id: account,
            workspaces,
            scopes,
            created_at: chrono::Utc::now(),
            revoked_at: None,
        });
        Ok(())
    })?;
    Ok(key)
}
