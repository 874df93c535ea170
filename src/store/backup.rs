//! Backups: every key and value of the database in one file, taken while
//! writes are held at the gate, so the copy is one consistent state.
//!
//! Format: the line `WEBHOOKD-BACKUP 1\n`; then per entry a big-endian u32 key
//! length, the key, a u32 value length, the value; then `u32::MAX`, the entry
//! count (u64) and the SHA-256 of everything before it. Values are stored as
//! they are on disk: sealed records stay sealed, so a backup reveals no secret
//! and restoring one needs the same encryption key.

use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::Path;

use sha2::{Digest, Sha256};

use super::{Store, StoreError};

const MAGIC: &[u8] = b"WEBHOOKD-BACKUP 1\n";
const END: u32 = u32::MAX;

/// What a backup or a restore copied.
#[derive(Debug, Clone, Copy)]
pub struct BackupSummary {
    pub entries: u64,
    pub bytes: u64,
}

/// A writer that hashes and counts what passes through it.
struct Hashing<W> {
    inner: W,
    hash: Sha256,
    bytes: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("not a webhookd backup (or of an unknown version)")]
    NotABackup,
    #[error("the backup is truncated or corrupt: {0}")]
    Corrupt(&'static str),
    #[error("{0} is not empty: restore only into a new data directory")]
    NotEmpty(String),
    #[error("reading the backup: {0}")]
    Io(io::Error),
    #[error("putting the restored database in place: {0}")]
    Place(io::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Like `StoreError`, the message carries the cause, with no `source`.
impl From<io::Error> for RestoreError {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}

impl Store {
    /// Writes a consistent copy of the database to `out`. Writes wait while it
    /// is taken; reads go on.
    pub fn backup(&self, out: impl Write) -> Result<BackupSummary, StoreError> {
        self.apply_counters()?;
        let _closed = self.tree.close_gate();
        write_backup(self.tree.iter(), out)
    }

    /// Writes a copy of the database in `data_dir`, which no process has
    /// open (webhookd stopped), to `out`: the records as stored, secrets
    /// sealed, so no key is read, made or needed. A database in use is
    /// `StoreError::is_locked`.
    pub fn backup_stopped(data_dir: &Path, out: impl Write) -> Result<BackupSummary, StoreError> {
        let db_dir = data_dir.join("db");
        let db = super::sled_config(&db_dir).open()?;
        let summary = write_backup(db.iter(), out);
        drop(db);
        if let Ok(db_file) = db_dir.join("db").canonicalize() {
            super::wait_until_closed(&db_file);
        }
        summary
    }

    /// A backup in an unnamed temporary file (in the data dir, so it needs no
    /// other space), positioned at its start.
    pub fn backup_to_temp_file(&self) -> Result<(std::fs::File, BackupSummary), StoreError> {
        use std::io::Seek as _;
        let mut file = match &self.dir {
            Some(dir) => tempfile::tempfile_in(dir),
            None => tempfile::tempfile(),
        }
        .map_err(StoreError::Open)?;
        let summary = self.backup(&mut file)?;
        file.rewind().map_err(StoreError::Open)?;
        Ok((file, summary))
    }

    /// Restores a backup into `data_dir`, which must hold no database yet. The
    /// copy is checked (length prefixes, count, SHA-256) before it is kept;
    /// a bad backup leaves nothing behind. It is written beside the database
    /// (`db.restoring`) and takes the database's place only once whole and
    /// on disk, so an interrupted restore leaves no database that would
    /// open with part of the data (the next restore starts afresh).
    pub fn restore(data_dir: &Path, backup: impl Read) -> Result<BackupSummary, RestoreError> {
        let db_dir = data_dir.join("db");
        if db_dir.exists() {
            return Err(RestoreError::NotEmpty(db_dir.display().to_string()));
        }
        let partial = data_dir.join("db.restoring");
        if partial.exists() {
            std::fs::remove_dir_all(&partial).map_err(RestoreError::Place)?;
        }
        let result = super::sled_config(&partial)
            .open()
            .map_err(|e| RestoreError::Store(e.into()))
            .and_then(|db| {
                let summary = read_backup(backup, Some(&db))?;
                db.flush().map_err(StoreError::from)?;
                Ok(summary)
            });
        if let Ok(db_file) = partial.join("db").canonicalize() {
            super::wait_until_closed(&db_file);
        }
        let result = result.and_then(|summary| {
            std::fs::rename(&partial, &db_dir)
                .and_then(|()| std::fs::File::open(data_dir)?.sync_all())
                .map_err(RestoreError::Place)?;
            Ok(summary)
        });
        if result.is_err() {
            let _ = std::fs::remove_dir_all(&partial);
        }
        result
    }
}

impl Store {
    /// Reads a whole backup and checks it, writing nothing.
    pub fn verify_backup(backup: impl Read) -> Result<BackupSummary, RestoreError> {
        read_backup(backup, None)
    }
}

/// Writes `entries` (a whole database, in key order) as a backup to `out`.
fn write_backup(
    entries: impl Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>,
    out: impl Write,
) -> Result<BackupSummary, StoreError> {
    let io_err = |e: io::Error| StoreError::Open(e);
    let mut w = Hashing {
        inner: BufWriter::new(out),
        hash: Sha256::new(),
        bytes: 0,
    };
    w.write_all(MAGIC).map_err(io_err)?;
    let mut count = 0u64;
    for entry in entries {
        let (k, v) = entry?;
        for part in [&k[..], &v[..]] {
            w.write_all(&(part.len() as u32).to_be_bytes())
                .map_err(io_err)?;
            w.write_all(part).map_err(io_err)?;
        }
        count += 1;
    }
    w.write_all(&END.to_be_bytes()).map_err(io_err)?;
    w.write_all(&count.to_be_bytes()).map_err(io_err)?;
    let digest = w.hash.finalize_reset();
    w.inner.write_all(&digest).map_err(io_err)?;
    w.inner.flush().map_err(io_err)?;
    Ok(BackupSummary {
        entries: count,
        bytes: w.bytes + digest.len() as u64,
    })
}

/// Reads and checks a backup; with `db`, writes its entries there (the last
/// batch only once the checksum matched).
fn read_backup(backup: impl Read, db: Option<&sled::Db>) -> Result<BackupSummary, RestoreError> {
    let mut r = BufReader::new(backup);
    let mut hash = Sha256::new();
    let mut bytes = 0u64;
    let mut read = |buf: &mut [u8], hash: &mut Sha256| -> Result<(), RestoreError> {
        r.read_exact(buf).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => RestoreError::Corrupt("it ends early"),
            _ => RestoreError::Io(e),
        })?;
        hash.update(&*buf);
        bytes += buf.len() as u64;
        Ok(())
    };
    let mut magic = [0u8; MAGIC.len()];
    read(&mut magic, &mut hash).map_err(|_| RestoreError::NotABackup)?;
    if magic != MAGIC {
        return Err(RestoreError::NotABackup);
    }
    let mut batch = sled::Batch::default();
    let mut pending = 0usize;
    let mut entries = 0u64;
    loop {
        let mut len = [0u8; 4];
        read(&mut len, &mut hash)?;
        let key_len = u32::from_be_bytes(len);
        if key_len == END {
            break;
        }
        let mut key = vec![0u8; key_len as usize];
        read(&mut key, &mut hash)?;
        read(&mut len, &mut hash)?;
        let mut value = vec![0u8; u32::from_be_bytes(len) as usize];
        read(&mut value, &mut hash)?;
        pending += key.len() + value.len();
        batch.insert(key, value);
        entries += 1;
        if pending > 8 << 20 {
            if let Some(db) = db {
                db.apply_batch(std::mem::take(&mut batch))
                    .map_err(StoreError::from)?;
            }
            batch = sled::Batch::default();
            pending = 0;
        }
    }
    let mut count = [0u8; 8];
    read(&mut count, &mut hash)?;
    if u64::from_be_bytes(count) != entries {
        return Err(RestoreError::Corrupt("the entry count does not match"));
    }
    let expected = hash.finalize();
    let mut digest = [0u8; 32];
    r.read_exact(&mut digest)
        .map_err(|_| RestoreError::Corrupt("the checksum is missing"))?;
    if digest[..] != expected[..] {
        return Err(RestoreError::Corrupt("the checksum does not match"));
    }
    if let Some(db) = db {
        db.apply_batch(batch).map_err(StoreError::from)?;
    }
    Ok(BackupSummary {
        entries,
        bytes: bytes + 32,
    })
}
