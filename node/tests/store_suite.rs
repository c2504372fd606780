//! openraft's storage conformance suite against the sled store
//! (`aof_node::store::{LogStore, StateMachineStore}`).

use aof_node::store::{LogStore, StateMachineStore, Store};
use aof_node::types::{StorageError, TypeConfig};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{AnyError, StorageIOError};

/// Builds a fresh store in a new temp dir; the dir is removed when the guard drops.
struct SledStoreBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir> for SledStoreBuilder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachineStore), StorageError> {
        let dir = tempfile::tempdir().expect("create temp dir");
        let store = Store::open(dir.path(), 8 * 1024 * 1024)
            .map_err(|e| StorageError::IO { source: StorageIOError::write(AnyError::new(&e)) })?;
        Ok((dir, store.log_store(), store.state_machine()))
    }
}

#[test]
fn openraft_storage_suite() {
    if let Err(e) = Suite::test_all(SledStoreBuilder) {
        panic!("openraft storage suite failed: {e}");
    }
}
