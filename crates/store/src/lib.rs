//! Where a lake or a pipeline's state lives: a local directory or a prefix in an object store
//! (S3 and S3-compatible servers, Google Cloud Storage, Azure Blob Storage), read from a
//! `path` or `state_dir` ([`Location`]), configured from the standard environment variables
//! and an optional `storage` table ([`StorageOptions`]), and opened as one [`Store`] whatever
//! the provider. Spec section 5 is the contract.

mod location;
mod options;
mod store;
#[cfg(feature = "testing")]
pub mod testing;

pub use location::{Location, LocationError, ObjectLocation, StoreKind};
pub use object_store::path::Path as ObjectPath;
pub use object_store::{ObjectMeta, PutMode, UpdateVersion};
pub use options::StorageOptions;
pub use store::{
    PART_BYTES, PARTS_IN_FLIGHT, RequestFailure, StagedUpload, Store, StoreError, UPLOADS_DIR,
};
