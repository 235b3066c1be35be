//! The keys file as the CLI writes it and the services read it.

use std::time::Duration;

use flowhouse_keys::{AuthError, Keys, KeysFile, Scope, cli};
use uuid::Uuid;

#[test]
fn created_keys_authenticate_and_revoked_ones_stop() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys.json");
    let (account, workspace) = (Uuid::new_v4(), Uuid::new_v4());
    let key = cli::create(
        &path,
        account,
        vec![workspace],
        vec![Scope::Write],
        Some("ci".into()),
    )
    .unwrap();
    assert!(key.starts_with("fh_k"));

    let text = std::fs::read_to_string(&path).unwrap();
    assert!(!text.contains(&key), "the key itself must not be stored");

    let keys = Keys::load(&path).unwrap();
    assert!(
        keys.authorize(Some(&key), account, workspace, Scope::Write)
            .is_ok()
    );

    let id = KeysFile::read(&path).unwrap().keys[0].id.clone();
    cli::run(cli::Args {
        keys_file: path,
        command: cli::Command::Revoke { id },
    })
    .unwrap();
    keys.reload();
    assert_eq!(
        keys.authorize(Some(&key), account, workspace, Scope::Write),
        Err(AuthError::Unknown)
    );
}

#[test]
fn concurrent_creates_lose_no_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys.json");
    let account = Uuid::new_v4();
    let created: Vec<(Uuid, String)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let path = path.clone();
                scope.spawn(move || {
                    let workspace = Uuid::new_v4();
                    let key = cli::create(&path, account, vec![workspace], vec![Scope::Read], None)
                        .unwrap();
                    (workspace, key)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let keys = Keys::load(&path).unwrap();
    assert_eq!(keys.current().len(), 8);
    for (workspace, key) in &created {
        assert!(
            keys.authorize(Some(key), account, *workspace, Scope::Read)
                .is_ok()
        );
    }
}

#[tokio::test]
async fn services_pick_up_changes_and_survive_a_broken_edit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys.json");
    let (account, workspace) = (Uuid::new_v4(), Uuid::new_v4());
    let first = cli::create(&path, account, vec![workspace], vec![Scope::Read], None).unwrap();
    let keys = Keys::load(&path).unwrap();
    let watcher = keys.watch(Duration::from_millis(50));

    let second = cli::create(&path, account, vec![workspace], vec![Scope::Read], None).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while keys
        .authorize(Some(&second), account, workspace, Scope::Read)
        .is_err()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new key was never picked up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    std::fs::write(&path, "{ not json").unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        keys.authorize(Some(&first), account, workspace, Scope::Read)
            .is_ok()
    );
    assert!(
        keys.authorize(Some(&second), account, workspace, Scope::Read)
            .is_ok()
    );
    watcher.abort();
}

#[test]
fn a_missing_or_foreign_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.json");
    let error = format!("{:#}", Keys::load(&missing).err().unwrap());
    assert!(error.contains("cannot read the keys file"), "{error}");
    let future = dir.path().join("future.json");
    std::fs::write(&future, r#"{"version": 9, "keys": []}"#).unwrap();
    let error = format!("{:#}", Keys::load(&future).err().unwrap());
    assert!(error.contains("format version 9"), "{error}");
}

#[test]
fn a_change_made_between_load_and_the_watcher_is_seen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys.json");
    let (account, workspace) = (Uuid::new_v4(), Uuid::new_v4());
    cli::create(&path, account, vec![workspace], vec![Scope::Read], None).unwrap();
    let keys = Keys::load(&path).unwrap();
    assert!(!keys.reload_if_changed(), "nothing changed since the load");
    // The edit lands after the load and before any watcher looked: the baseline is the load's.
    // Sizes differ, so the change is seen whatever the file system's time resolution.
    let later = cli::create(&path, account, vec![workspace], vec![Scope::Read], None).unwrap();
    assert!(keys.reload_if_changed());
    assert!(
        keys.authorize(Some(&later), account, workspace, Scope::Read)
            .is_ok()
    );
    assert!(!keys.reload_if_changed());
}
