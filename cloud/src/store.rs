//! The cloud's storage: a sled database with a versioned schema.
//!
//! Every change goes through [`Store`], so that another backend can replace
//! sled behind the same methods.

use std::path::Path;

/// The schema this build reads and writes.
pub const SCHEMA_VERSION: u32 = 1;
const META_TREE: &str = "meta";
const SCHEMA_KEY: &str = "schema_version";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Sled(#[from] sled::Error),
    #[error(
        "the data folder holds schema version {found}, newer than this ferry-cloud understands ({supported}); \
         run the newer ferry-cloud that wrote it, or restore a backup"
    )]
    TooNew { found: u32, supported: u32 },
    #[error("the stored schema version is corrupt ({0} bytes instead of 4)")]
    CorruptVersion(usize),
}

#[derive(Clone)]
pub struct Store {
    db: sled::Db,
}

impl Store {
    /// Opens (or creates) the database in `dir` and checks its schema version.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let db = sled::open(dir.join("db"))?;
        let meta = db.open_tree(META_TREE)?;
        match meta.get(SCHEMA_KEY)? {
            None => {
                meta.insert(SCHEMA_KEY, &SCHEMA_VERSION.to_be_bytes())?;
                db.flush()?;
                tracing::info!(version = SCHEMA_VERSION, "new database");
            }
            Some(bytes) => {
                let found = u32::from_be_bytes(
                    bytes.as_ref().try_into().map_err(|_| StoreError::CorruptVersion(bytes.len()))?,
                );
                if found > SCHEMA_VERSION {
                    return Err(StoreError::TooNew { found, supported: SCHEMA_VERSION });
                }
                // Version 1 is the first schema: nothing older to migrate yet.
            }
        }
        Ok(Store { db })
    }

    pub fn schema_version(&self) -> Result<u32, StoreError> {
        let meta = self.db.open_tree(META_TREE)?;
        let bytes = meta.get(SCHEMA_KEY)?.ok_or(StoreError::CorruptVersion(0))?;
        Ok(u32::from_be_bytes(
            bytes.as_ref().try_into().map_err(|_| StoreError::CorruptVersion(bytes.len()))?,
        ))
    }

    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }
}
