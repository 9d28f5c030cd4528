//! Where each followed file was acknowledged up to, kept on disk across restarts and crashes.
//!
//! The state is one small JSON file, `checkpoints.json`, in the component's `data_dir`.
//! A write never edits it in place: the new state goes to `checkpoints.json.tmp`, which is
//! fsynced; the current file is renamed to `checkpoints.json.bak`; the temporary file is
//! renamed over `checkpoints.json`; the directory is fsynced. A crash at any point leaves
//! either the new file or the previous one whole:
//!
//! - torn `.tmp` (crash while writing): never read, overwritten by the next write;
//! - crash between the two renames: `checkpoints.json` is missing, `.bak` is read;
//! - `checkpoints.json` unreadable (a torn or damaged file): `.bak` is read, with a warning.
//!
//! The previous state is older, so falling back to it replays a little (duplicates) and
//! never skips. If neither file can be read the source refuses to start rather than
//! silently start over.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

const FORMAT_VERSION: u32 = 1;

/// One file's acknowledged position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Record {
    /// How the file is recognised (`checksum:<hex>` or `device_inode:<dev>:<ino>`).
    pub fingerprint: String,
    /// Where the file was last seen (informational: files are found by fingerprint).
    pub path: PathBuf,
    /// Bytes acknowledged from the start of the file (decompressed bytes for `.gz`).
    pub offset: u64,
    /// Lines acknowledged (for `file:line` in logs after a restart).
    pub line: u64,
    /// The file's size when the checkpoint was written: what is lost if the file is gone
    /// at the next start (`size - offset` bytes). Absent in checkpoints of older versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckpointFile {
    version: u32,
    files: Vec<Record>,
}

/// The checkpoint files of one `file` source.
#[derive(Debug)]
pub(crate) struct CheckpointStore {
    dir: PathBuf,
    current: PathBuf,
    previous: PathBuf,
    temporary: PathBuf,
}

impl CheckpointStore {
    /// The store in `dir` (created if missing).
    pub(crate) fn open(dir: &Path) -> io::Result<CheckpointStore> {
        fs::create_dir_all(dir)?;
        Ok(CheckpointStore {
            dir: dir.to_owned(),
            current: dir.join("checkpoints.json"),
            previous: dir.join("checkpoints.json.bak"),
            temporary: dir.join("checkpoints.json.tmp"),
        })
    }

    /// The path of the current checkpoint file.
    pub(crate) fn path(&self) -> &Path {
        &self.current
    }

    /// The stored records; `Ok(None)` if the source never wrote any (a first start).
    pub(crate) fn load(&self) -> Result<Option<Vec<Record>>, String> {
        let current = read(&self.current);
        let previous = || read(&self.previous);
        match current {
            Ok(Some(records)) => Ok(Some(records)),
            Ok(None) => match previous() {
                // A crash between the two renames of a write.
                Ok(Some(records)) => Ok(Some(records)),
                Ok(None) => Ok(None),
                Err(error) => Err(format!(
                    "{} is missing and {} cannot be used ({error}); move both away to start \
                     over from `read_from`",
                    self.current.display(),
                    self.previous.display()
                )),
            },
            Err(error) => match previous() {
                Ok(Some(records)) => {
                    tracing::warn!(
                        file = %self.current.display(),
                        fallback = %self.previous.display(),
                        %error,
                        "checkpoint file is unreadable; resuming from the previous one \
                         (some events may be read again)"
                    );
                    Ok(Some(records))
                }
                _ => Err(format!(
                    "{} cannot be used ({error}) and there is no usable {}; move it away \
                     to start over from `read_from`",
                    self.current.display(),
                    self.previous.display()
                )),
            },
        }
    }

    /// Replaces the stored records, atomically (see the module docs).
    pub(crate) fn write(&self, records: &[Record]) -> io::Result<()> {
        let state = CheckpointFile {
            version: FORMAT_VERSION,
            files: records.to_vec(),
        };
        let mut bytes = serde_json::to_vec(&state).map_err(io::Error::other)?;
        bytes.push(b'\n');
        let mut file = File::create(&self.temporary)?;
        file.write_all(&bytes)?;
        #[cfg(test)]
        auditflow_testkit::stall::inside_blocking_section(|key| self.dir.starts_with(key));
        file.sync_all()?;
        drop(file);
        match fs::rename(&self.current, &self.previous) {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => return Err(error),
        }
        fs::rename(&self.temporary, &self.current)?;
        File::open(&self.dir)?.sync_all()
    }
}

/// `Ok(None)` if the file does not exist; an error if it exists but is not a checkpoint.
fn read(path: &Path) -> Result<Option<Vec<Record>>, String> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error.to_string()),
    };
    let state: CheckpointFile = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
    if state.version != FORMAT_VERSION {
        return Err(format!(
            "unknown checkpoint format version {}",
            state.version
        ));
    }
    Ok(Some(state.files))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(offset: u64) -> Record {
        Record {
            fingerprint: "checksum:00".into(),
            path: "/var/log/audit.log".into(),
            offset,
            line: offset / 10,
            size: Some(offset * 2),
        }
    }

    #[test]
    fn a_first_start_has_no_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(&dir.path().join("src")).unwrap();
        assert_eq!(store.load().unwrap(), None);
    }

    #[test]
    fn what_was_written_is_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(dir.path()).unwrap();
        store.write(&[record(10)]).unwrap();
        store.write(&[record(20)]).unwrap();
        assert_eq!(store.load().unwrap(), Some(vec![record(20)]));
    }

    #[test]
    fn a_torn_temporary_file_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(dir.path()).unwrap();
        store.write(&[record(20)]).unwrap();
        fs::write(&store.temporary, b"{\"version\":1,\"files\":[{\"fingerpr").unwrap();
        assert_eq!(store.load().unwrap(), Some(vec![record(20)]));
        store.write(&[record(30)]).unwrap();
        assert_eq!(store.load().unwrap(), Some(vec![record(30)]));
    }

    #[test]
    fn a_torn_current_file_falls_back_to_the_previous_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(dir.path()).unwrap();
        store.write(&[record(10)]).unwrap();
        store.write(&[record(20)]).unwrap();
        let whole = fs::read(&store.current).unwrap();
        fs::write(&store.current, &whole[..whole.len() / 2]).unwrap();
        assert_eq!(store.load().unwrap(), Some(vec![record(10)]));
    }

    #[test]
    fn a_crash_between_the_renames_reads_the_previous_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(dir.path()).unwrap();
        store.write(&[record(10)]).unwrap();
        fs::rename(&store.current, &store.previous).unwrap();
        assert_eq!(store.load().unwrap(), Some(vec![record(10)]));
    }

    #[test]
    fn garbage_without_a_fallback_refuses_to_start_over() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(dir.path()).unwrap();
        fs::write(&store.current, b"\0\0\0\0").unwrap();
        let error = store.load().unwrap_err();
        assert!(error.contains("checkpoints.json"), "{error}");
    }
}
