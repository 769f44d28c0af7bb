//! The private per-run directory: the CLI's HOME (its config, credentials cache and transcripts),
//! its TMPDIR and the run's system prompt file. Mode 0700, removed when the run ends, and swept
//! at start-up in case a crash left one behind.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

pub struct RunDir {
    root: PathBuf,
    /// What serves the run from inside this directory (its network sockets), ended with it.
    held: Vec<Box<dyn Send>>,
    /// The run's control group, which its processes join as they start.
    pub cgroup: Option<crate::sandbox::cgroup::RunCgroup>,
}

impl RunDir {
    pub fn create(runs_dir: &Path) -> std::io::Result<Self> {
        let root = runs_dir.join(uuid::Uuid::new_v4().to_string());
        let mut builder = std::fs::DirBuilder::new();
        builder.mode(0o700);
        builder.create(&root)?;
        let dir = Self {
            root,
            held: Vec::new(),
            cgroup: None,
        };
        builder.create(dir.home())?;
        builder.create(dir.tmp())?;
        Ok(dir)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Keeps `value` until the run dir is removed.
    pub fn hold(&mut self, value: Box<dyn Send>) {
        self.held.push(value);
    }

    /// Where the run's own network sockets are served.
    pub fn net(&self) -> PathBuf {
        self.root.join("net")
    }

    pub fn home(&self) -> PathBuf {
        self.root.join("home")
    }

    pub fn tmp(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// Writes a private file (0600) in the run dir and returns its path.
    pub fn write_file(&self, name: &str, contents: &[u8]) -> std::io::Result<PathBuf> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let path = self.root.join(name);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        file.write_all(contents)?;
        Ok(path)
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        // Every process of the run is killed before its files go.
        self.cgroup = None;
        self.held.clear();
        if let Err(e) = std::fs::remove_dir_all(&self.root) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(dir = %self.root.display(), error = %e, "could not remove run dir");
            }
        }
    }
}

/// Removes run dirs left by a previous process; returns how many.
pub fn sweep(runs_dir: &Path) -> std::io::Result<usize> {
    let mut removed = 0;
    for entry in std::fs::read_dir(runs_dir)? {
        let path = entry?.path();
        if path.is_dir() {
            std::fs::remove_dir_all(&path)?;
        } else {
            std::fs::remove_file(&path)?;
        }
        removed += 1;
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn run_dir_is_private_and_removed_on_drop() {
        let runs = tempfile::tempdir().expect("tempdir");
        let dir = RunDir::create(runs.path()).expect("create");
        let root = dir.root().to_path_buf();
        let mode = std::fs::metadata(&root).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        let file = dir.write_file("system.txt", b"x").expect("write");
        assert_eq!(
            std::fs::metadata(file).expect("meta").permissions().mode() & 0o777,
            0o600
        );
        drop(dir);
        assert!(!root.exists());
    }

    #[test]
    fn sweep_removes_leftovers() {
        let runs = tempfile::tempdir().expect("tempdir");
        let leftover = RunDir::create(runs.path()).expect("create");
        std::mem::forget(leftover);
        assert_eq!(sweep(runs.path()).expect("sweep"), 1);
        assert_eq!(std::fs::read_dir(runs.path()).expect("read").count(), 0);
    }
}
