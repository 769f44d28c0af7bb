//! The two directories of a tenant that its runs write, each with a disk quota where the
//! gateway can mount file systems: the workspace, and the CLI's projects directory (its
//! session transcripts, mounted as `~/.claude/projects`, so Bash can write there too).
//!
//! A volume with a quota is a file system of its own: an ext4 image per tenant and volume
//! (`tenants/<t>/workspace.img`, `projects.img`; sparse, as large as the quota) loop-mounted
//! `nosuid,nodev` on its directory. A write past the quota fails inside the sandbox with
//! "No space left on device", and only there: a full workspace leaves the transcripts
//! writable (and the reverse), and the gateway's own files (run dirs, session metadata) and
//! other tenants' volumes are on other file systems. Chosen over the alternatives
//! because it is exact and needs nothing of the data dir's file system (project quotas need
//! XFS or an ext4 mounted with them), costs nothing per run (a size-bounded overlay would copy
//! the workspace in and out of memory every run) and survives restarts as a plain file.
//!
//! Mounting needs root (CAP_SYS_ADMIN). The gateway mounts in a mount namespace of its own
//! ([`private_mount_namespace`], entered in `main` before any thread starts), so the mounts are
//! gone with the process however it ends and never show on the host. Images are locked
//! (`flock`) while mounted: a second gateway on the same data dir cannot mount one twice.
//! Without root the quotas are reported unavailable in `/v1/security` and volumes are plain
//! directories bounded only by the per-file size limit.

use std::collections::HashMap;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::sync::OnceLock;

use nix::fcntl::{Flock, FlockArg};

use super::identity::TenantId;

static PRIVATE_MOUNTS: OnceLock<Result<(), String>> = OnceLock::new();

/// Gives the process a mount namespace of its own (mounts made later stay in it and vanish
/// with it). Must run before any thread is started: a namespace is per thread until then.
pub fn private_mount_namespace() {
    let _ = PRIVATE_MOUNTS.set(enter_private_mounts());
}

fn enter_private_mounts() -> Result<(), String> {
    use nix::mount::{mount, MsFlags};
    if !nix::unistd::geteuid().is_root() {
        return Err("mounting workspace images needs root (CAP_SYS_ADMIN)".into());
    }
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)
        .map_err(|e| format!("cannot enter a mount namespace of its own: {e}"))?;
    // Slave: the host's later mounts still show here, none of ours shows there.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_SLAVE,
        None::<&str>,
    )
    .map_err(|e| format!("cannot make the gateway's mounts private: {e}"))
}

/// A directory of a tenant's that its runs write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Volume {
    Workspace,
    /// The CLI's projects directory: session transcripts.
    Transcripts,
}

impl Volume {
    fn dir_name(self) -> &'static str {
        match self {
            Volume::Workspace => "workspace",
            Volume::Transcripts => "projects",
        }
    }
}

/// Where tenants' volumes are, and their quotas.
pub struct Volumes {
    tenants_dir: PathBuf,
    images: Result<Images, String>,
    workspace_bytes: u64,
    transcript_bytes: u64,
}

struct Images {
    mkfs: PathBuf,
    mount: PathBuf,
    /// The volumes mounted, each with its image file open and locked.
    mounted: Mutex<HashMap<(String, Volume), Flock<std::fs::File>>>,
}

#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("cannot prepare the tenant's {0}: {1}")]
    Io(&'static str, std::io::Error),
    #[error("cannot prepare the tenant's {0}: {1}")]
    Image(&'static str, String),
}

impl Volumes {
    /// Volumes under `tenants_dir`, with quotas (bytes; 0: none) where this process can
    /// mount images.
    pub fn new(tenants_dir: PathBuf, workspace_bytes: u64, transcript_bytes: u64) -> Self {
        let images = match (workspace_bytes, transcript_bytes) {
            (0, 0) => {
                Err("turned off (--workspace-quota-mb 0, --transcript-quota-mb 0)".to_owned())
            }
            _ => Images::new(),
        };
        if let Err(reason) = &images {
            tracing::warn!(%reason, "no disk quotas: a tenant's workspace and transcripts are bounded only by the per-file size limit");
        }
        Self {
            tenants_dir,
            images,
            workspace_bytes,
            transcript_bytes,
        }
    }

    pub fn tenants_dir(&self) -> &Path {
        &self.tenants_dir
    }

    /// The volume's quota in bytes, or why it has none.
    pub fn quota(&self, volume: Volume) -> Result<u64, &str> {
        let bytes = self.bytes(volume);
        match &self.images {
            Err(reason) => Err(reason),
            Ok(_) if bytes == 0 => Err("turned off"),
            Ok(_) => Ok(bytes),
        }
    }

    fn bytes(&self, volume: Volume) -> u64 {
        match volume {
            Volume::Workspace => self.workspace_bytes,
            Volume::Transcripts => self.transcript_bytes,
        }
    }

    /// The tenant's volume, created (0700) and, with a quota, mounted on first use. Blocks
    /// while a first use makes and mounts an image (tens of milliseconds).
    pub fn path(&self, tenant: &TenantId, volume: Volume) -> Result<PathBuf, VolumeError> {
        let name = volume.dir_name();
        let tenant_dir = self.tenants_dir.join(tenant.as_dir_name());
        let path = tenant_dir.join(name);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&path)
            .map_err(|e| VolumeError::Io(name, e))?;
        match (&self.images, self.bytes(volume)) {
            (Ok(images), bytes) if bytes > 0 => images
                .mount(tenant.as_dir_name(), volume, bytes, &tenant_dir, &path)
                .map_err(|e| match e {
                    ImageError::Io(e) => VolumeError::Io(name, e),
                    ImageError::Failed(e) => VolumeError::Image(name, e),
                })?,
            _ => {}
        }
        Ok(path)
    }
}

enum ImageError {
    Io(std::io::Error),
    Failed(String),
}

impl From<std::io::Error> for ImageError {
    fn from(e: std::io::Error) -> Self {
        ImageError::Io(e)
    }
}

impl Images {
    fn new() -> Result<Self, String> {
        match PRIVATE_MOUNTS.get() {
            Some(Ok(())) => {}
            Some(Err(reason)) => return Err(reason.clone()),
            None => return Err("the gateway has no mount namespace of its own".into()),
        }
        let find = |names: &[&str]| {
            names
                .iter()
                .map(PathBuf::from)
                .find(|p| p.is_file())
                .ok_or_else(|| format!("{} was not found", names[0]))
        };
        Ok(Self {
            mkfs: find(&["/usr/sbin/mkfs.ext4", "/sbin/mkfs.ext4"])?,
            mount: find(&["/usr/bin/mount", "/bin/mount"])?,
            mounted: Default::default(),
        })
    }

    fn mount(
        &self,
        tenant: &str,
        volume: Volume,
        bytes: u64,
        tenant_dir: &Path,
        path: &Path,
    ) -> Result<(), ImageError> {
        let mut mounted = self.mounted.lock().unwrap_or_else(|e| e.into_inner());
        let key = (tenant.to_owned(), volume);
        if mounted.contains_key(&key) {
            return Ok(());
        }
        let image = tenant_dir.join(format!("{}.img", volume.dir_name()));
        if !image.exists() {
            self.create_image(&image, bytes, path)?;
        }
        let file = std::fs::OpenOptions::new().read(true).open(&image)?;
        let file = Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|_| {
            ImageError::Failed("its image is in use by another gateway process".into())
        })?;
        run(Command::new(&self.mount).args([
            "-t".as_ref(),
            "ext4".as_ref(),
            // discard: a deleted file gives its blocks back to the host's disk.
            "-o".as_ref(),
            "loop,nosuid,nodev,discard,noinit_itable".as_ref(),
            image.as_os_str(),
            path.as_os_str(),
        ]))?;
        // The new file system's root: the tenant's alone, without the mkfs leftovers.
        let _ = std::fs::remove_dir(path.join("lost+found"));
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
        mounted.insert(key, file);
        Ok(())
    }

    /// A new image holding what the directory already had (a data dir from before quotas),
    /// made whole under a temporary name and then put in place.
    fn create_image(&self, image: &Path, bytes: u64, path: &Path) -> Result<(), ImageError> {
        let tmp = image.with_extension("img.tmp");
        let _ = std::fs::remove_file(&tmp);
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?
            .set_len(bytes)?;
        let options = format!(
            "root_owner={}:{},lazy_itable_init=1,lazy_journal_init=1",
            nix::unistd::geteuid(),
            nix::unistd::getegid()
        );
        let made = run(Command::new(&self.mkfs).args([
            "-q".as_ref(),
            "-F".as_ref(),
            // No blocks kept for root: the tenant gets the whole quota.
            "-m".as_ref(),
            "0".as_ref(),
            "-E".as_ref(),
            options.as_ref(),
            "-d".as_ref(),
            path.as_os_str(),
            tmp.as_os_str(),
        ]));
        if let Err(e) = made {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        std::fs::rename(&tmp, image)?;
        // The files are in the image now; the directory becomes its mount point.
        std::fs::remove_dir_all(path)?;
        std::fs::DirBuilder::new().mode(0o700).create(path)?;
        Ok(())
    }
}

/// Runs mkfs or mount with nothing of the gateway's environment.
fn run(command: &mut Command) -> Result<(), ImageError> {
    let output = command
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .output()?;
    if output.status.success() {
        Ok(())
    } else {
        Err(ImageError::Failed(
            String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        ))
    }
}
