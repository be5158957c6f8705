//! The store against a real S3 server (SeaweedFS on loopback).
#![allow(clippy::unwrap_used)]

use chatlake_store::testing::SeaweedFs;
use chatlake_store::{Location, PART_BYTES, PutMode, RequestFailure, StorageOptions, Store};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn object(url: &str) -> chatlake_store::ObjectLocation {
    match Location::parse(url).unwrap() {
        Location::Object(o) => o,
        other => panic!("{other:?}"),
    }
}

#[test]
fn check_passes_on_a_good_bucket_and_names_the_url_on_a_missing_one() {
    let s3 = SeaweedFs::start();
    s3.create_bucket("lake");
    let rt = runtime();
    let good = Store::open(&object("s3://lake/chat"), &s3.storage_options()).unwrap();
    rt.block_on(good.check()).unwrap();
    // The probe leaves nothing behind.
    assert!(rt.block_on(good.list("")).unwrap().is_empty());

    let missing = Store::open(&object("s3://no-such-bucket/chat"), &s3.storage_options()).unwrap();
    let err = rt.block_on(missing.check()).unwrap_err().to_string();
    assert!(err.contains("s3://no-such-bucket/chat"), "{err}");

    let wrong = StorageOptions {
        secret_access_key: Some(chatlake_core::secret::Secret::new("Wr0ng-Secret-Value")),
        ..s3.storage_options()
    };
    let denied = Store::open(&object("s3://lake/chat"), &wrong).unwrap();
    let err = rt.block_on(denied.check()).unwrap_err().to_string();
    assert!(err.contains("s3://lake/chat"), "{err}");
    assert!(!err.contains("Wr0ng-Secret-Value"), "{err}");
}

#[test]
fn create_only_and_versioned_writes_refuse_a_second_writer() {
    let s3 = SeaweedFs::start();
    s3.create_bucket("state");
    let rt = runtime();
    let store = s3.store("state");
    let key = store.key("demo/ledger.json");
    rt.block_on(async {
        let v1 = store
            .write(&key, "one".into(), PutMode::Create)
            .await
            .unwrap();
        let again = store.write(&key, "two".into(), PutMode::Create).await;
        assert_eq!(
            again.unwrap_err().failure(),
            Some(RequestFailure::AlreadyExists)
        );
        let v2 = store
            .write(&key, "two".into(), PutMode::Update(v1.clone()))
            .await
            .unwrap();
        // A writer holding the old version is refused.
        let stale = store.write(&key, "three".into(), PutMode::Update(v1)).await;
        assert_eq!(
            stale.unwrap_err().failure(),
            Some(RequestFailure::Precondition)
        );
        let (bytes, version) = store.read(&key).await.unwrap().unwrap();
        assert_eq!(&bytes[..], b"two");
        assert_eq!(version.e_tag, v2.e_tag);
        assert!(store.read(&store.key("absent")).await.unwrap().is_none());
    });
}

#[test]
fn uploads_round_trip_small_and_multipart_files() {
    let s3 = SeaweedFs::start();
    s3.create_bucket("files");
    let rt = runtime();
    let store = s3.store("files");
    let dir = tempfile::tempdir().unwrap();
    let small = dir.path().join("small");
    std::fs::write(&small, b"hello").unwrap();
    // Over one part: goes as a multipart upload of three parts.
    let large = dir.path().join("large");
    let content: Vec<u8> = (0..(2 * PART_BYTES + 12345))
        .map(|i| (i % 251) as u8)
        .collect();
    std::fs::write(&large, &content).unwrap();
    rt.block_on(async {
        assert_eq!(
            store.upload(&small, &store.key("a/small")).await.unwrap(),
            5
        );
        assert_eq!(
            store.upload(&large, &store.key("a/large")).await.unwrap(),
            content.len() as u64
        );
        let back = dir.path().join("back");
        store.download(&store.key("a/large"), &back).await.unwrap();
        assert_eq!(std::fs::read(&back).unwrap(), content);
        // A finished upload leaves no note behind.
        let mut names: Vec<String> = store
            .list("")
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.location.to_string())
            .collect();
        names.sort();
        assert_eq!(names, ["a/large", "a/small"]);
    });
}

#[test]
fn an_unfinished_multipart_upload_is_aborted_by_the_next_run() {
    let s3 = SeaweedFs::start();
    s3.create_bucket("killed");
    let rt = runtime();
    let store = s3.store("killed");
    let dir = tempfile::tempdir().unwrap();
    let large = dir.path().join("large");
    std::fs::write(&large, vec![7u8; 3 * PART_BYTES]).unwrap();
    rt.block_on(async {
        // "Killed" mid-upload: the upload task is dropped after its note is written.
        let key = store.key("lake/part-0.parquet");
        let upload = store.upload(&large, &key);
        tokio::select! {
            _ = upload => panic!("the upload should not finish this fast"),
            _ = async {
                loop {
                    if !store.list(chatlake_store::UPLOADS_DIR).await.unwrap().is_empty() {
                        break;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                }
            } => {}
        }
        assert!(store.read(&key).await.unwrap().is_none(), "nothing visible");
        assert_eq!(store.abort_unfinished_uploads().await.unwrap(), 1);
        assert!(store.list("").await.unwrap().is_empty());
        assert_eq!(store.abort_unfinished_uploads().await.unwrap(), 0);
    });
}

#[test]
fn a_writer_aborts_only_its_own_unfinished_uploads() {
    let s3 = SeaweedFs::start();
    s3.create_bucket("shared");
    let rt = runtime();
    let store = s3.store("shared");
    let dir = tempfile::tempdir().unwrap();
    let large = dir.path().join("large");
    std::fs::write(&large, vec![7u8; 3 * PART_BYTES]).unwrap();
    rt.block_on(async {
        // Two writers' uploads "killed" mid-way; a Hive-escaped key keeps its `%` and `~`.
        let mine =
            chatlake_store::ObjectPath::parse("x=a%3Ab~1/part-p.mine.w.0000.parquet").unwrap();
        let theirs = store.key("part-p.theirs.w.0000.parquet");
        for key in [&mine, &theirs] {
            let upload = store.upload(&large, key);
            tokio::select! {
                _ = upload => panic!("the upload should not finish this fast"),
                _ = async {
                    loop {
                        let notes = store.list(chatlake_store::UPLOADS_DIR).await.unwrap();
                        if notes.iter().any(|n| n.location.as_ref().contains(key.filename().unwrap())) {
                            break;
                        }
                        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                    }
                } => {}
            }
        }
        let owned = |key: &chatlake_store::ObjectPath| {
            key.filename().is_some_and(|n| n.starts_with("part-p.mine."))
        };
        assert_eq!(store.abort_unfinished_uploads_of(owned).await.unwrap(), 1);
        let notes = store.list(chatlake_store::UPLOADS_DIR).await.unwrap();
        assert_eq!(notes.len(), 1, "the other writer's note stays: {notes:?}");
        assert!(notes[0].location.as_ref().contains("theirs"));
        assert_eq!(store.abort_unfinished_uploads().await.unwrap(), 1);
        assert!(store.list("").await.unwrap().is_empty());
    });
}

#[test]
fn probes_a_killed_check_left_are_removed_once_stale() {
    let s3 = SeaweedFs::start();
    s3.create_bucket("probes");
    let rt = runtime();
    let store = s3.store("probes");
    rt.block_on(async {
        let left = store.key("_chatlake_probe/123-456");
        store
            .write(&left, "probe".into(), PutMode::Create)
            .await
            .unwrap();
        let minute = std::time::Duration::from_secs(60);
        assert_eq!(store.remove_stale_probes(minute).await.unwrap(), 0);
        assert_eq!(
            store.list("").await.unwrap().len(),
            1,
            "a fresh probe stays"
        );
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
        let second = std::time::Duration::from_millis(100);
        assert_eq!(store.remove_stale_probes(second).await.unwrap(), 1);
        assert!(store.list("").await.unwrap().is_empty());
    });
}
