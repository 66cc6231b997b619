//! Hot reload: the configuration file is watched, and each valid new version is swapped in
//! while the server runs. Unchanged profiles keep their cached tokens; an invalid version
//! is refused with an error naming its key, and the running one keeps serving.
//!
//! The file is polled by content, not watched with inotify: a Kubernetes ConfigMap volume
//! is updated by swapping a `..data` symlink, which changes no watched file's inode, and
//! a poll every couple of seconds hashes the file through a small buffer, which costs
//! little even for a large file. SIGHUP reloads at once.
//!
//! A new version is applied only once two reads [`SETTLE`] apart find the same content:
//! a file caught while an editor or `cp` is still writing it may parse (truncated after a
//! profile, say) and would drop every profile after the cut, and the callers' `allow`
//! rules with them. Writing elsewhere and renaming over the file avoids the wait's risk
//! altogether (docs/configuration.md).

use std::{
    fs::File,
    io::{self, Read as _},
    path::{Path, PathBuf},
    pin::Pin,
    sync::Arc,
    time::Duration,
};

use futures::{Stream, StreamExt as _, stream};
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::{
    app::Live,
    bounded::{self, ReadError},
    config::{self, Config, ConfigError, ConfigErrors},
    metrics::Metrics,
};

/// How long a new version must stay unchanged before it is parsed: longer than any
/// editor takes to write a file, short enough that a reload still feels immediate.
const SETTLE: Duration = Duration::from_millis(500);

/// A stream of nothing, one item per reload request (SIGHUP).
pub(crate) type Triggers = Pin<Box<dyn Stream<Item = ()> + Send>>;

/// SIGHUP, as a stream. Empty where there are no Unix signals, or if the handler cannot be
/// installed (then polling alone reloads, and a warning says so).
pub(crate) fn hangups() -> Triggers {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::hangup()) {
            Ok(hup) => {
                return Box::pin(stream::unfold(hup, |mut hup| async move {
                    hup.recv().await.map(|()| ((), hup))
                }));
            }
            Err(error) => tracing::warn!(%error, "cannot watch SIGHUP; reloading by polling only"),
        }
    }
    Box::pin(stream::pending())
}

/// Watches the file at `path` for new content: checked every `interval` (zero turns
/// polling off) and at each trigger. `digest` is that of the configuration already
/// running, so that only a change counts.
pub(crate) fn watch(
    path: PathBuf,
    interval: Duration,
    digest: u64,
    triggers: Triggers,
    metrics: Metrics,
) -> Watcher {
    let mut watcher = Watcher {
        path,
        interval: Duration::ZERO,
        ticks: None,
        triggers,
        last: Some(digest),
        metrics,
    };
    watcher.set_interval(interval);
    watcher
}

/// The file being watched, and how.
pub(crate) struct Watcher {
    path: PathBuf,
    interval: Duration,
    ticks: Option<Interval>,
    triggers: Triggers,
    /// The digest of the last content seen; `None` after a failed read, so that a file
    /// that stays unreadable is reported once, not at every poll.
    last: Option<u64>,
    metrics: Metrics,
}

impl Watcher {
    /// Polls every `interval` from now on (zero: only at triggers).
    pub(crate) fn set_interval(&mut self, interval: Duration) {
        if interval == self.interval {
            return;
        }
        self.interval = interval;
        self.ticks = (!interval.is_zero()).then(|| {
            let mut ticks = tokio::time::interval_at(Instant::now() + interval, interval);
            ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
            ticks
        });
    }

    /// The next version of the file that parses. One that is unreadable or invalid is
    /// refused (logged with its keys, counted) and skipped. `None` when the triggers end
    /// and there is no polling.
    pub(crate) async fn next(&mut self) -> Option<Config> {
        loop {
            let forced = tokio::select! {
                () = tick(&mut self.ticks) => false,
                Some(()) = self.triggers.next() => true,
                else => return None,
            };
            let unless = if forced { None } else { self.last };
            let read = match read_changed(self.path.clone(), unless).await {
                Ok(Some(changed)) => settled(&self.path, changed).await,
                Ok(None) => continue,
                Err(e) => Err(e),
            };
            let (digest, text) = match read {
                Ok(settled) => settled,
                Err(e) => {
                    if self.last.take().is_some() || forced {
                        self.refused(&ConfigErrors::from(ConfigError::new(
                            "",
                            format!("cannot read {}: {e}", self.path.display()),
                        )));
                    }
                    continue;
                }
            };
            self.last = Some(digest);
            match parse(&self.path, text) {
                Ok(config) => return Some(config),
                Err(errors) => self.refused(&errors),
            }
        }
    }

    fn refused(&self, errors: &ConfigErrors) {
        refused(&self.metrics, errors);
    }
}

/// A new configuration is refused: each error with its key, and a count.
fn refused(metrics: &Metrics, errors: &ConfigErrors) {
    metrics.reload(false);
    for error in errors.iter() {
        tracing::error!(
            key = %error.key,
            %error,
            "new configuration refused; the running one keeps serving"
        );
    }
}

/// `read` once the file at `path` has held it for [`SETTLE`]: read again until two reads
/// that far apart agree, so that a version caught half-written is never parsed.
async fn settled(path: &Path, mut read: (u64, Vec<u8>)) -> Result<(u64, Vec<u8>), ReadError> {
    loop {
        tokio::time::sleep(SETTLE).await;
        match read_changed(path.to_owned(), Some(read.0)).await? {
            None => return Ok(read),
            Some(newer) => {
                tracing::debug!(
                    "the configuration file is still changing; waiting for it to settle"
                );
                read = newer;
            }
        }
    }
}

async fn tick(ticks: &mut Option<Interval>) {
    match ticks {
        Some(ticks) => {
            ticks.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// The file's content and digest, or `None` if its digest is `unless`. An unchanged file is
/// hashed through a small buffer: reading a large configuration whole at every poll
/// left a file-sized block resident in the allocator (1.6 MiB at 10,000 profiles). Both
/// reads stop at [`bounded::CONFIG_BYTES`].
async fn read_changed(
    path: PathBuf,
    unless: Option<u64>,
) -> Result<Option<(u64, Vec<u8>)>, ReadError> {
    tokio::task::spawn_blocking(move || {
        if let Some(last) = unless {
            let mut digest = config::Digest::default();
            let file = File::open(&path).map_err(ReadError::Io)?;
            io::copy(&mut file.take(bounded::CONFIG_BYTES + 1), &mut digest)
                .map_err(ReadError::Io)?;
            if digest.finish() == last {
                return Ok(None);
            }
        }
        // Hashed again as read: the file may have changed since.
        let text = bounded::read(&path, bounded::CONFIG_BYTES)?;
        Ok(Some((config::digest(&text), text)))
    })
    .await
    .map_err(|e| ReadError::Io(io::Error::other(e)))?
}

fn parse(path: &Path, text: Vec<u8>) -> Result<Config, ConfigErrors> {
    let text = String::from_utf8(text)
        .map_err(|_| ConfigError::new("", format!("{} is not UTF-8 text", path.display())))?;
    let mut config = Config::from_yaml(&text)?;
    config.path = Some(path.to_owned());
    Ok(config)
}

/// Builds and applies each new version of the file until `stop` is cancelled.
pub(crate) async fn run(mut watcher: Watcher, live: Arc<Live>, stop: CancellationToken) {
    loop {
        let config = tokio::select! {
            () = stop.cancelled() => return,
            config = watcher.next() => match config {
                Some(config) => config,
                None => return,
            },
        };
        // Built here, on the task's thread: the files it reads are few and small, and
        // its log lines then reach the subscriber of the task that runs the server.
        match live.reload(config) {
            Ok(()) => {
                live.metrics.reload(true);
                watcher.set_interval(live.settings.load().reload_interval);
            }
            Err(errors) => refused(&live.metrics, &errors),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_unchanged_file_is_not_read_and_a_changed_one_is() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let path = file.path().to_owned();
        std::fs::write(&path, "profiles: {}\n").unwrap();

        let (first, text) = read_changed(path.clone(), None).await.unwrap().unwrap();
        assert_eq!(text, b"profiles: {}\n");
        assert_eq!(first, config::digest(&text));
        assert!(
            read_changed(path.clone(), Some(first))
                .await
                .unwrap()
                .is_none()
        );

        std::fs::write(&path, "profiles: {}\nserver: {}\n").unwrap();
        let (second, text) = read_changed(path.clone(), Some(first))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(text, b"profiles: {}\nserver: {}\n");
        assert_ne!(second, first);

        drop(file);
        let error = read_changed(path, Some(second)).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::NotFound);
    }
}
