//! The admin token: checked in constant time, and replaceable while webhookd
//! runs (`webhookd token rotate`). Each replacement starts a new generation,
//! which ends the dashboard sessions signed in with the old token.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use subtle::ConstantTimeEq;

pub struct AdminToken {
    current: RwLock<Arc<str>>,
    generation: AtomicU64,
    /// The token file; `None` when the token is configured.
    file: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum RotateError {
    #[error("the admin token is configured (WEBHOOKD_ADMIN_TOKEN or admin_token): change it there")]
    Configured,
    #[error("writing the new admin token to {path}: {source}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// A new admin token.
pub fn generate() -> String {
    format!("whd_{}", crate::domain::random_token())
}

/// The directory a file named `path` is in (`.` for a bare file name, whose
/// parent is the empty path).
pub fn dir_of(path: &std::path::Path) -> &std::path::Path {
    path.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."))
}

/// Makes the names in `dir` (a file created, renamed or removed) durable.
pub fn sync_dir(dir: &std::path::Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Gives a file just written into `dir` to `dir`'s owner when root wrote
/// it into a directory someone else owns: an offline command run with
/// `sudo` in the service's data dir must not leave an owner-only file
/// (a key, a token) the service can no longer read. Where root may not
/// change owners (a container without that capability, an owner outside a
/// user namespace), the file stays root's, with a warning.
pub fn give_to_dir_owner(file: &std::fs::File, dir: &std::path::Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt as _;
        let meta = dir.metadata()?;
        if file.metadata()?.uid() == 0
            && meta.uid() != 0
            && let Err(e) = std::os::unix::fs::fchown(file, Some(meta.uid()), Some(meta.gid()))
        {
            tracing::warn!(
                dir = %dir.display(),
                error = %e,
                "could not give a new file to the directory's owner; it stays root's"
            );
        }
    }
    Ok(())
}

/// Replaces the token file at `path` atomically (owner-only) with `token`.
pub fn write_token_file(path: &std::path::Path, token: &str) -> Result<(), RotateError> {
    let write = || -> std::io::Result<()> {
        let dir = dir_of(path);
        // NamedTempFile creates the file with mode 0600.
        let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
        std::io::Write::write_all(&mut tmp, format!("{token}\n").as_bytes())?;
        give_to_dir_owner(tmp.as_file(), dir)?;
        tmp.as_file().sync_all()?;
        tmp.persist(path)?;
        sync_dir(dir)
    };
    write().map_err(|source| RotateError::Write {
        path: path.display().to_string(),
        source,
    })
}

impl AdminToken {
    pub fn new(token: Arc<str>, file: Option<PathBuf>) -> Self {
        Self {
            current: RwLock::new(token),
            generation: AtomicU64::new(0),
            file,
        }
    }

    fn current(&self) -> Arc<str> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Is `given` the admin token? (constant time)
    pub fn matches(&self, given: &str) -> bool {
        bool::from(given.as_bytes().ct_eq(self.current().as_bytes()))
    }

    /// Which token is current: changes with every rotation.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Writes a new token to the token file, then uses it; the old one stops
    /// working at once.
    pub fn rotate(&self) -> Result<(), RotateError> {
        let path = self.file.as_ref().ok_or(RotateError::Configured)?;
        let token = generate();
        write_token_file(path, &token)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = token.into();
        self.generation.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_replaces_the_token_and_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin-token");
        let t = AdminToken::new("whd_first".into(), Some(path.clone()));
        assert!(t.matches("whd_first") && !t.matches("whd_firs") && !t.matches(""));
        t.rotate().unwrap();
        assert!(!t.matches("whd_first"));
        let written = std::fs::read_to_string(&path).unwrap();
        assert!(t.matches(written.trim()));
        assert_eq!(t.generation(), 1);
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let configured = AdminToken::new("configured-token".into(), None);
        assert!(matches!(configured.rotate(), Err(RotateError::Configured)));
        assert!(configured.matches("configured-token"));
    }

    /// Written by root into a directory another user owns (the service's
    /// data dir, an offline command run with sudo), the token file is that
    /// user's; anyone else's file stays theirs.
    #[test]
    fn a_token_file_written_by_root_belongs_to_the_data_dirs_owner() {
        use std::os::unix::fs::MetadataExt as _;
        let dir = tempfile::tempdir().unwrap();
        let me = std::fs::metadata(dir.path()).unwrap().uid();
        if me == 0 {
            std::os::unix::fs::chown(dir.path(), Some(61_234), Some(61_235)).unwrap();
        }
        let path = dir.path().join("admin-token");
        write_token_file(&path, "whd_token").unwrap();
        let file = std::fs::metadata(&path).unwrap();
        let owner = if me == 0 {
            (61_234, 61_235)
        } else {
            (me, file.gid())
        };
        assert_eq!((file.uid(), file.gid()), owner);
    }
}
