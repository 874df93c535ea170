//! The commands beside `serve`: backup, restore and admin-token rotation. Like
//! `main`, this module may use `app` (for the data dir, keys and token).
//!
//! A running webhookd holds its database exclusively, so `backup` and `token
//! rotate` ask it over its API when it runs, and work on the data dir directly
//! when it does not.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use futures_util::StreamExt as _;

use crate::app;
use crate::config::Config;
use crate::store::{BackupSummary, Store};

/// Where a running webhookd of this configuration answers: the URL it wrote
/// into the data dir, else the configured listen address.
fn local_url(config: &Config) -> String {
    match std::fs::read_to_string(config.data_dir.join(app::URL_FILE)) {
        Ok(url) if !url.trim().is_empty() => url.trim().to_owned(),
        _ => format!("http://{}", app::local_addr(config.listen)),
    }
}

/// Whether a process has the database in `data_dir` open: sled holds an
/// exclusive lock on its file while it does.
#[cfg(unix)]
fn database_in_use(data_dir: &Path) -> bool {
    use rustix::fs::{FlockOperation, flock};
    std::fs::File::open(data_dir.join("db").join("db")).is_ok_and(|f| {
        flock(&f, FlockOperation::NonBlockingLockExclusive)
            .is_err_and(|e| e == rustix::io::Errno::WOULDBLOCK)
    })
}

#[cfg(not(unix))]
fn database_in_use(_data_dir: &Path) -> bool {
    false
}

/// A new owner-only file in the directory of `to`, to be renamed onto it.
fn temp_beside(to: &Path) -> anyhow::Result<tempfile::NamedTempFile> {
    let dir = crate::admin::dir_of(to);
    tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("creating a file in {}", dir.display()))
}

/// `webhookd backup --to FILE`: from the running daemon (`server`, or the
/// configured listen address when the database is in use), else from the data
/// dir directly.
pub fn backup(config: &Config, to: &Path, server: Option<&str>) -> anyhow::Result<BackupSummary> {
    if server.is_none() {
        if !config.data_dir.join("db").exists() {
            bail!("there is no database in {}", config.data_dir.display());
        }
        // No key is read (or made): the records are copied sealed.
        let tmp = temp_beside(to)?;
        match Store::backup_stopped(&config.data_dir, tmp.as_file()) {
            Ok(summary) => {
                tmp.as_file().sync_all()?;
                persist(tmp, to)?;
                return Ok(summary);
            }
            Err(e) if e.is_locked() => {}
            Err(e) => return Err(e).context("copying the database"),
        }
    }
    let url = format!(
        "{}/api/v1/webhookd/backup",
        server.map_or_else(|| local_url(config), |s| s.trim_end_matches('/').to_owned())
    );
    let token = app::read_admin_token(config)?;
    let mut tmp = temp_beside(to)?;
    actix_web::rt::System::new().block_on(async {
        let client = awc::Client::builder().disable_timeout().finish();
        let mut res = client
            .get(&url)
            .bearer_auth(token)
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("asking {url} for a backup: {e}"))?;
        if !res.status().is_success() {
            let body = res.body().await.unwrap_or_default();
            bail!(
                "{url} answered {}: {}",
                res.status(),
                String::from_utf8_lossy(&body)
            );
        }
        while let Some(chunk) = res.next().await {
            let chunk = chunk.map_err(|e| anyhow::anyhow!("receiving the backup: {e}"))?;
            tmp.write_all(&chunk)?;
        }
        anyhow::Ok(())
    })?;
    tmp.as_file().sync_all()?;
    let summary = Store::verify_backup(std::fs::File::open(tmp.path())?)
        .context("the backup received is damaged")?;
    persist(tmp, to)?;
    Ok(summary)
}

/// Puts a backup written to `tmp` in its place at `to`, durably.
fn persist(tmp: tempfile::NamedTempFile, to: &Path) -> anyhow::Result<()> {
    tmp.persist(to)
        .with_context(|| format!("writing {}", to.display()))?;
    crate::admin::sync_dir(crate::admin::dir_of(to))?;
    Ok(())
}

/// `webhookd token rotate`: through the running webhookd when there is one
/// (which starts using the new token at once), else in the data dir. Returns
/// the token file.
pub fn rotate_admin_token(config: &Config) -> anyhow::Result<PathBuf> {
    if config.admin_token.is_some() {
        bail!("{}", crate::admin::RotateError::Configured);
    }
    let path = config.data_dir.join(app::TOKEN_FILE);
    let token = app::read_admin_token(config)?;
    let url = format!("{}/api/v1/webhookd/admin-token/rotate", local_url(config));
    let online = actix_web::rt::System::new().block_on(async {
        let client = awc::Client::default();
        match client.post(&url).bearer_auth(&token).send().await {
            Ok(res) if res.status().is_success() => Ok(true),
            Ok(mut res) => {
                let body = res.body().await.unwrap_or_default();
                bail!(
                    "{url} answered {}: {}",
                    res.status(),
                    String::from_utf8_lossy(&body)
                )
            }
            // Nobody listens: webhookd is not running, unless it holds its
            // database (starting, not listening yet): it would keep the
            // token it read until a restart.
            Err(awc::error::SendRequestError::Connect(_)) if database_in_use(&config.data_dir) => {
                bail!(
                    "webhookd is running (its database is in use) but does not answer at {url}; \
                     try again once it is ready"
                )
            }
            Err(awc::error::SendRequestError::Connect(_)) => Ok(false),
            Err(e) => bail!("asking {url} to rotate the token: {e}"),
        }
    })?;
    if !online {
        crate::admin::write_token_file(&path, &crate::admin::generate())?;
    }
    Ok(path)
}

/// `webhookd restore --from FILE --data-dir DIR`: into a new data dir only.
pub fn restore(from: &Path, data_dir: &Path) -> anyhow::Result<BackupSummary> {
    app::create_private_dir(data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let file = std::fs::File::open(from).with_context(|| format!("opening {}", from.display()))?;
    Ok(Store::restore(data_dir, file)?)
}
