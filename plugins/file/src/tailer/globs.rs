//! Expanding the globs: the directories each pattern names are listed (following links,
//! never twice in one expansion, `**` at most [`MAX_DEPTH`] levels down) and the files
//! that `include` matches and `exclude` does not are returned, oldest first.

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, Metadata};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use super::{Inode, Tailer};

/// Directory levels `**` descends at most.
const MAX_DEPTH: usize = 32;

impl Tailer {
    /// Lists the files the globs match, oldest first.
    pub(super) fn expand(&self) -> Vec<(PathBuf, Metadata)> {
        let mut found = BTreeMap::new();
        for pattern in &self.settings.include_patterns {
            let (base, depth) = walk_root(Path::new(pattern));
            let mut visited = HashSet::new();
            self.first_visit(&base, &mut visited);
            self.walk(&base, depth, &mut found, &mut visited);
        }
        let mut files: Vec<(PathBuf, Metadata)> = found.into_iter().collect();
        files.sort_by_key(|(path, meta)| (meta.modified().ok(), path.clone()));
        files
    }

    /// Whether directory `dir` was not listed yet in this expansion (links can form cycles).
    fn first_visit(&self, dir: &Path, visited: &mut HashSet<Inode>) -> bool {
        fs::metadata(dir).is_ok_and(|meta| visited.insert((meta.dev(), meta.ino())))
    }

    fn walk(
        &self,
        dir: &Path,
        depth: usize,
        found: &mut BTreeMap<PathBuf, Metadata>,
        visited: &mut HashSet<Inode>,
    ) {
        #[cfg(test)]
        auditflow_testkit::stall::inside_blocking_section(|key| dir.starts_with(key));
        let listing = match fs::read_dir(if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        }) {
            Ok(listing) => listing,
            Err(error) => {
                if error.kind() != io::ErrorKind::NotFound {
                    tracing::debug!(component_id = %self.id, dir = %dir.display(), %error, "cannot list directory");
                }
                return;
            }
        };
        for item in listing.flatten() {
            let path = dir.join(item.file_name());
            let Ok(kind) = item.file_type() else { continue };
            // A link to a directory is descended like the directory (`**` through it).
            let is_dir = kind.is_dir()
                || (kind.is_symlink() && fs::metadata(&path).is_ok_and(|meta| meta.is_dir()));
            if is_dir {
                if depth > 1 && self.first_visit(&path, visited) {
                    self.walk(&path, depth - 1, found, visited);
                }
                continue;
            }
            if !self.settings.include.is_match(&path) || self.settings.exclude.is_match(&path) {
                continue;
            }
            // Follows symbolic links: a link to a log file is read as that file.
            if let Ok(meta) = fs::metadata(&path) {
                if meta.is_file() {
                    found.insert(path, meta);
                }
            }
        }
    }
}

/// The directory to list for a pattern, and how many levels below it to look.
fn walk_root(pattern: &Path) -> (PathBuf, usize) {
    let components: Vec<Component> = pattern.components().collect();
    let is_glob = |component: &Component| {
        component
            .as_os_str()
            .to_string_lossy()
            .contains(['*', '?', '[', '{'])
    };
    let literal = components
        .iter()
        .take(components.len().saturating_sub(1))
        .take_while(|component| !is_glob(component))
        .count();
    let base: PathBuf = components[..literal].iter().collect();
    let rest = &components[literal..];
    let depth = if rest.iter().any(|c| c.as_os_str() == "**") {
        MAX_DEPTH
    } else {
        rest.len()
    };
    (base, depth.max(1))
}
