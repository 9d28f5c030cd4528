//! `run --watch`: tells when the pipeline files' contents changed.
//!
//! The folders holding the files are watched (inotify through `notify`), not the files:
//! editors save by writing a new file and renaming it over the old one, and Kubernetes
//! updates a mounted ConfigMap by swapping a symbolic link, and both leave a watch on the
//! old file's inode watching nothing. Only events that name a pipeline file, or a name
//! starting with `..` (the ConfigMap's `..data` link and timestamped folders), count, so
//! that a sink or checkpoint writing beside the files is not noise. Even those are hints:
//! after a quiet moment the files are read again, and a change is reported only when their
//! bytes differ from what was last loaded (a `touch` reloads nothing).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

/// How long the folders must stay quiet before the files are read: an editor's save is
/// several events (write, rename, attributes) within a few milliseconds.
const QUIET: Duration = Duration::from_millis(300);

/// Watches pipeline files for a change of contents.
pub(crate) struct FileWatch {
    files: Vec<PathBuf>,
    /// The bytes of each file as last loaded (`None`: it could not be read).
    loaded: Vec<Option<Vec<u8>>>,
    events: mpsc::UnboundedReceiver<()>,
    // Kept alive: dropping it stops the notifications.
    _watcher: notify::RecommendedWatcher,
}

impl FileWatch {
    /// Starts watching the folders of `files`.
    pub(crate) fn start(files: &[PathBuf]) -> Result<FileWatch, String> {
        let (tx, events) = mpsc::unbounded_channel();
        let names: Vec<OsString> = files
            .iter()
            .filter_map(|file| file.file_name().map(OsString::from))
            .collect();
        let concerns_us = move |path: &PathBuf| {
            path.file_name().is_some_and(|name| {
                names.iter().any(|ours| ours == name) || name.as_encoded_bytes().starts_with(b"..")
            })
        };
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
                Ok(event) if event.kind.is_access() => {}
                Ok(event) => {
                    if event.paths.iter().any(&concerns_us) {
                        let _ = tx.send(());
                    }
                }
                Err(error) => tracing::warn!(error = %error, "watching the pipeline files"),
            })
            .map_err(|error| format!("cannot watch the pipeline files: {error}"))?;
        let mut folders: Vec<PathBuf> = files.iter().map(|file| folder_of(file)).collect();
        folders.sort();
        folders.dedup();
        for folder in &folders {
            watcher
                .watch(folder, RecursiveMode::NonRecursive)
                .map_err(|error| format!("cannot watch {}: {error}", folder.display()))?;
        }
        Ok(FileWatch {
            files: files.to_vec(),
            loaded: read_all(files),
            events,
            _watcher: watcher,
        })
    }

    /// Records the files' current bytes as loaded (a reload by `SIGHUP` happened).
    pub(crate) fn mark_loaded(&mut self) {
        self.loaded = read_all(&self.files);
    }

    /// Waits until the files' bytes differ from what was last loaded, then records them as
    /// loaded. Never returns if the watch stopped.
    pub(crate) async fn changed(&mut self) {
        loop {
            if self.events.recv().await.is_none() {
                std::future::pending::<()>().await;
            }
            // Wait for the folders to stay quiet, then look.
            while let Ok(Some(())) = tokio::time::timeout(QUIET, self.events.recv()).await {}
            let now = read_all(&self.files);
            if now != self.loaded {
                self.loaded = now;
                return;
            }
        }
    }
}

fn folder_of(file: &Path) -> PathBuf {
    match file.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn read_all(files: &[PathBuf]) -> Vec<Option<Vec<u8>>> {
    files.iter().map(|file| std::fs::read(file).ok()).collect()
}
