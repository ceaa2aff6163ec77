//! The storage engine: one redb table of byte keys to byte values.
//!
//! Why redb: a pure-Rust, actively maintained embedded store with ACID transactions, a stable
//! file format, MVCC (readers never block the writer) and ordered B+trees, so SCAN-by-prefix is
//! a range query. No C/C++ toolchain (RocksDB) and no unmaintained beta (sled).

use std::path::Path;

use redb::{Database, Durability, ReadableDatabase, TableDefinition};
use thiserror::Error;

const TABLE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("kv");

/// A storage failure (reported to clients as a server error).
#[derive(Debug, Error)]
#[error("storage: {0}")]
pub struct StoreError(String);

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError(e.to_string())
}

/// The key-value store.
pub struct Store {
    db: Database,
    durability: Durability,
}

impl Store {
    /// Opens (or creates) the store at `path`. With `sync` every write is on disk when it is
    /// acknowledged; without, writes survive a crash of the process but not of the machine
    /// before a later synced commit.
    pub fn open(path: &Path, sync: bool) -> Result<Store, StoreError> {
        let db = Database::create(path).map_err(err)?;
        Self::init(db, sync)
    }

    /// A store in memory (tests, benchmarks).
    pub fn in_memory() -> Result<Store, StoreError> {
        let db = Database::builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .map_err(err)?;
        Self::init(db, false)
    }

    fn init(db: Database, sync: bool) -> Result<Store, StoreError> {
        // Create the table so that readers find it.
        let txn = db.begin_write().map_err(err)?;
        txn.open_table(TABLE).map_err(err)?;
        txn.commit().map_err(err)?;
        Ok(Store {
            db,
            durability: if sync {
                Durability::Immediate
            } else {
                Durability::None
            },
        })
    }

    /// The value of `key`, appended to `out`; whether it exists.
    pub fn get(&self, key: &[u8], out: &mut Vec<u8>) -> Result<bool, StoreError> {
        let txn = self.db.begin_read().map_err(err)?;
        let table = txn.open_table(TABLE).map_err(err)?;
        match table.get(key).map_err(err)? {
            Some(v) => {
                out.extend_from_slice(v.value());
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Sets `key` to `value`.
    pub fn set(&self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        let mut txn = self.db.begin_write().map_err(err)?;
        txn.set_durability(self.durability).map_err(err)?;
        {
            let mut table = txn.open_table(TABLE).map_err(err)?;
            table.insert(key, value).map_err(err)?;
        }
        txn.commit().map_err(err)
    }

    /// Removes `key`; whether it existed.
    pub fn delete(&self, key: &[u8]) -> Result<bool, StoreError> {
        let mut txn = self.db.begin_write().map_err(err)?;
        txn.set_durability(self.durability).map_err(err)?;
        let existed = {
            let mut table = txn.open_table(TABLE).map_err(err)?;
            let old = table.remove(key).map_err(err)?;
            old.is_some()
        };
        txn.commit().map_err(err)?;
        Ok(existed)
    }

    /// Calls `each(key, value)` for keys starting with `prefix`, in order, until it returns
    /// `false` or `limit` entries were visited.
    pub fn scan(
        &self,
        prefix: &[u8],
        limit: usize,
        mut each: impl FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StoreError> {
        let txn = self.db.begin_read().map_err(err)?;
        let table = txn.open_table(TABLE).map_err(err)?;
        for entry in table.range(prefix..).map_err(err)?.take(limit) {
            let (k, v) = entry.map_err(err)?;
            if !k.value().starts_with(prefix) || !each(k.value(), v.value()) {
                break;
            }
        }
        Ok(())
    }
}
