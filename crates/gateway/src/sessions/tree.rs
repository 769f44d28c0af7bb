//! Files in a tree that a tenant can write (its CLI projects directory, mounted read-write in
//! every run), as the gateway reads, writes and removes them on the host.
//!
//! Whatever a run left there is the tenant's doing: a symlink to a host directory, a link on a
//! transcript, a FIFO that blocks a reader, a file of many gigabytes. So the host never resolves
//! a path in such a tree by name: every operation goes through a directory descriptor of the
//! tree's root with `cap-std`, which resolves beneath it (`openat2` with `RESOLVE_BENEATH` where
//! the kernel has it) and refuses any path that would lead outside. The last component is never
//! followed, only regular files are read (opened non-blocking, checked on the descriptor), and
//! reads are bounded.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use cap_std::fs::{Dir, OpenOptions, OpenOptionsExt};
use nix::libc;

/// A tree the tenant can write, opened at its root (which the gateway created and owns).
pub struct UntrustedTree {
    root: Dir,
}

fn refused(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned())
}

impl UntrustedTree {
    pub fn open(root: &Path) -> std::io::Result<Self> {
        Ok(Self {
            root: Dir::open_ambient_dir(root, cap_std::ambient_authority())?,
        })
    }

    /// The names of the real directories directly under the root (symlinks left out).
    pub fn subdirs(&self) -> Vec<PathBuf> {
        let Ok(entries) = self.root.entries() else {
            return Vec::new();
        };
        entries
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| PathBuf::from(e.file_name()))
            .collect()
    }

    /// Whether `rel` is a regular file (not a link to one).
    pub fn is_file(&self, rel: &Path) -> bool {
        self.root
            .symlink_metadata(rel)
            .is_ok_and(|m| m.file_type().is_file())
    }

    /// Whether `rel` is a real directory (not a link to one).
    pub fn is_dir(&self, rel: &Path) -> bool {
        self.root
            .symlink_metadata(rel)
            .is_ok_and(|m| m.file_type().is_dir())
    }

    /// Whether anything (a link included) is at `rel`.
    pub fn exists(&self, rel: &Path) -> bool {
        self.root.symlink_metadata(rel).is_ok()
    }

    /// The contents of the regular file at `rel`, if it holds at most `max` bytes.
    pub fn read(&self, rel: &Path, max: u64) -> std::io::Result<Vec<u8>> {
        let mut options = OpenOptions::new();
        options
            .read(true)
            // A FIFO opens at once instead of waiting for a writer; a link is not followed.
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK);
        let file = self.root.open_with(rel, &options)?;
        let meta = file.metadata()?;
        if !meta.is_file() {
            return Err(refused("not a regular file"));
        }
        if meta.len() > max {
            return Err(refused("larger than the gateway reads"));
        }
        let mut bytes = Vec::with_capacity(meta.len() as usize);
        // The file may grow meanwhile; never read past the bound.
        file.into_std().take(max + 1).read_to_end(&mut bytes)?;
        if bytes.len() as u64 > max {
            return Err(refused("larger than the gateway reads"));
        }
        Ok(bytes)
    }

    /// Replaces whatever is at `rel` (a file or a link; a directory is refused) with a new
    /// private file holding `bytes`, creating the directories before it beneath the root.
    pub fn write_new(&self, rel: &Path, bytes: &[u8]) -> std::io::Result<()> {
        if let Some(parent) = rel.parent().filter(|p| !p.as_os_str().is_empty()) {
            self.root.create_dir_all(parent)?;
        }
        match self.root.remove_file(rel) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let mut options = OpenOptions::new();
        options
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW);
        let mut file = self.root.open_with(rel, &options)?;
        file.write_all(bytes)
    }

    /// Adds `bytes` at the end of the regular file at `rel` (never through a link).
    pub fn append(&self, rel: &Path, bytes: &[u8]) -> std::io::Result<()> {
        let mut options = OpenOptions::new();
        options
            .append(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK);
        let mut file = self.root.open_with(rel, &options)?;
        if !file.metadata()?.is_file() {
            return Err(refused("not a regular file"));
        }
        file.write_all(bytes)
    }

    /// Cuts the regular file at `rel` back to `len` bytes (never through a link).
    pub fn truncate(&self, rel: &Path, len: u64) -> std::io::Result<()> {
        let mut options = OpenOptions::new();
        options
            .write(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK);
        let file = self.root.open_with(rel, &options)?;
        if !file.metadata()?.is_file() {
            return Err(refused("not a regular file"));
        }
        file.set_len(len)
    }

    /// Removes what is at `rel`: a file or link (never its target), or a directory with
    /// everything in it. Nothing there is not an error.
    pub fn remove(&self, rel: &Path) -> std::io::Result<()> {
        let removed = match self.root.symlink_metadata(rel) {
            Ok(meta) if meta.is_dir() => self.root.remove_dir_all(rel),
            Ok(_) => self.root.remove_file(rel),
            Err(e) => Err(e),
        };
        match removed {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A host directory outside the tree, with a file the tenant must not reach.
    struct Setup {
        _tmp: tempfile::TempDir,
        tree_root: PathBuf,
        outside: PathBuf,
    }

    fn setup() -> Setup {
        let tmp = tempfile::tempdir().expect("tempdir");
        let tree_root = tmp.path().join("projects");
        let outside = tmp.path().join("host");
        std::fs::create_dir_all(&tree_root).expect("mkdir");
        std::fs::create_dir_all(&outside).expect("mkdir");
        std::fs::write(outside.join("secret.txt"), "host secret").expect("write");
        Setup {
            _tmp: tmp,
            tree_root,
            outside,
        }
    }

    #[test]
    fn a_symlinked_directory_leads_nowhere_outside_the_tree() {
        let s = setup();
        std::os::unix::fs::symlink(&s.outside, s.tree_root.join("-workspace")).expect("link");
        let tree = UntrustedTree::open(&s.tree_root).expect("open");
        let planted = Path::new("-workspace/new.jsonl");
        assert!(tree.write_new(planted, b"x").is_err());
        assert!(!s.outside.join("new.jsonl").exists());
        assert!(tree
            .read(Path::new("-workspace/secret.txt"), 1 << 20)
            .is_err());
        tree.remove(Path::new("-workspace/secret.txt")).ok();
        assert!(s.outside.join("secret.txt").exists());
        assert!(!tree.is_file(Path::new("-workspace/secret.txt")));
        assert!(tree.subdirs().is_empty(), "a link is not a subdir");
        // Removing the link removes the link, never what it points at.
        tree.remove(Path::new("-workspace")).expect("remove");
        assert!(s.outside.join("secret.txt").exists());
    }

    #[test]
    fn a_link_on_the_file_itself_is_replaced_or_refused_never_followed() {
        let s = setup();
        let dir = s.tree_root.join("-workspace");
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::os::unix::fs::symlink(s.outside.join("secret.txt"), dir.join("t.jsonl"))
            .expect("link");
        let tree = UntrustedTree::open(&s.tree_root).expect("open");
        let rel = Path::new("-workspace/t.jsonl");
        assert!(tree.read(rel, 1 << 20).is_err());
        assert!(!tree.is_file(rel));
        tree.write_new(rel, b"seed").expect("write");
        assert_eq!(
            std::fs::read_to_string(s.outside.join("secret.txt")).expect("read"),
            "host secret"
        );
        assert_eq!(tree.read(rel, 1 << 20).expect("read"), b"seed");
        tree.remove(rel).expect("remove");
        assert!(s.outside.join("secret.txt").exists());
    }

    #[test]
    fn fifos_and_oversized_files_are_not_read() {
        let s = setup();
        let fifo = s.tree_root.join("pipe.jsonl");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
        std::fs::write(s.tree_root.join("big.jsonl"), vec![b'a'; 4096]).expect("write");
        let tree = UntrustedTree::open(&s.tree_root).expect("open");
        // Returns at once (a blocking open would hang this test).
        assert!(tree.read(Path::new("pipe.jsonl"), 1 << 20).is_err());
        assert!(tree.read(Path::new("big.jsonl"), 1024).is_err());
        assert_eq!(
            tree.read(Path::new("big.jsonl"), 4096).expect("read").len(),
            4096
        );
    }

    #[test]
    fn relative_escapes_are_refused() {
        let s = setup();
        let tree = UntrustedTree::open(&s.tree_root).expect("open");
        assert!(tree.read(Path::new("../host/secret.txt"), 1 << 20).is_err());
        assert!(tree.write_new(Path::new("../host/x"), b"x").is_err());
        assert!(!s.outside.join("x").exists());
    }
}
