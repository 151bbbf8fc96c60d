//! The conformance suite's backends: each on a real store, started per case.

use std::sync::Arc;

use sluice_storage::file::{FileStorage, Resolver};
use sluice_storage::s3::{ChecksumMode, S3Backends};
use sluice_storage::{ObjectUri, Storage};
use sluice_tests::azurite::Azurite;
use sluice_tests::gcsserver::GcsServer;
use sluice_tests::s3server::S3Server;

/// A backend, the base prefix of a case, and what keeps the store alive.
pub(crate) struct Fixture {
    pub(crate) storage: Arc<dyn Storage>,
    pub(crate) base: ObjectUri,
    _keep: Box<dyn std::any::Any>,
}

pub(crate) async fn file_fixture(resolver: Option<Resolver>) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = std::fs::canonicalize(dir.path()).unwrap();
    let roots = std::slice::from_ref(&root);
    let storage = Arc::new(match resolver {
        Some(r) => FileStorage::with_resolver(roots, r).unwrap(),
        None => FileStorage::new(roots).unwrap(),
    });
    let base = ObjectUri::parse(&format!("file://{}/suite/", root.display())).unwrap();
    Fixture {
        storage,
        base,
        _keep: Box::new(dir),
    }
}

pub(crate) async fn direct_fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = std::fs::canonicalize(dir.path()).unwrap();
    let storage = Arc::new(
        sluice_storage::direct::DirectStorage::new(&sluice_storage::direct::DirectConfig {
            roots: vec![root.clone()],
            ..Default::default()
        })
        .unwrap(),
    );
    let base = ObjectUri::parse(&format!("direct://{}/suite/", root.display())).unwrap();
    Fixture {
        storage,
        base,
        _keep: Box::new(dir),
    }
}

pub(crate) async fn s3_fixture(checksum: ChecksumMode) -> Fixture {
    let server = S3Server::start().await;
    let bucket = server.bucket("conformance").await;
    let config = sluice_storage::s3::S3Config {
        request_checksum: checksum,
        ..server.config()
    };
    let storage = S3Backends::new(&config)
        .await
        .unwrap()
        .for_uri(&bucket)
        .unwrap();
    Fixture {
        storage,
        base: bucket.with_key("suite/"),
        _keep: Box::new(server),
    }
}

pub(crate) async fn gcs_fixture() -> Fixture {
    let server = GcsServer::start().await;
    let bucket = server.bucket("conformance").await;
    let storage = Arc::new(sluice_storage::gcs::GcsStorage::new(&server.config()).unwrap());
    Fixture {
        storage,
        base: bucket.with_key("suite/"),
        _keep: Box::new(server),
    }
}

pub(crate) async fn azure_fixture(sas: bool) -> Fixture {
    let server = Azurite::start().await;
    let container = server.container("conformance").await;
    let config = if sas {
        let token = sluice_storage::azure::account_sas(
            sluice_tests::azurite::ACCOUNT,
            sluice_tests::azurite::KEY,
            std::time::Duration::from_secs(3600),
        )
        .unwrap();
        server.config_with(sluice_storage::azure::AzureAccount {
            sas_token: Some(sluice_storage::s3::Secret::new(token)),
            ..server.account()
        })
    } else {
        server.config()
    };
    let storage = sluice_storage::azure::AzureBackends::new(&config)
        .unwrap()
        .for_uri(&container)
        .unwrap();
    Fixture {
        storage,
        base: container.with_key("suite/"),
        _keep: Box::new(server),
    }
}
