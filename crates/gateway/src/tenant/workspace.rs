//! Tenants' workspaces, each with a disk quota where the gateway can mount file systems.
//!
//! A workspace with a quota is a file system of its own: an ext4 image per tenant
//! (`tenants/<t>/workspace.img`, sparse, as large as the quota) loop-mounted `nosuid,nodev`
//! on the tenant's workspace directory. A write past the quota fails inside the sandbox with
//! "No space left on device", and only there: the gateway's own files (transcripts, run dirs)
//! and other tenants' workspaces are on other file systems. Chosen over the alternatives
//! because it is exact and needs nothing of the data dir's file system (project quotas need
//! XFS or an ext4 mounted with them), costs nothing per run (a size-bounded overlay would copy
//! the workspace in and out of memory every run) and survives restarts as a plain file.
//!
//! Mounting needs root (CAP_SYS_ADMIN). The gateway mounts in a mount namespace of its own
//! ([`private_mount_namespace`], entered in `main` before any thread starts), so the mounts are
//! gone with the process however it ends and never show on the host. Images are locked
//! (`flock`) while mounted: a second gateway on the same data dir cannot mount one twice.
//! Without root the quota is reported unavailable in `/v1/security` and workspaces are plain
//! directories bounded only by the per-file size limit.

use std::collections::HashMap;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
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

/// Where the workspaces are, and their quota.
pub struct Workspaces {
    tenants_dir: PathBuf,
    quota: Result<Quota, String>,
}

struct Quota {
    bytes: u64,
    mkfs: PathBuf,
    mount: PathBuf,
    /// Tenants whose image is mounted, each with its image file open and locked.
    mounted: tokio::sync::Mutex<HashMap<String, Flock<std::fs::File>>>,
}

#[derive(Debug, thiserror::Error)]
pub enum WorkspaceError {
    #[error("cannot prepare the tenant workspace: {0}")]
    Io(#[from] std::io::Error),
    #[error("cannot prepare the tenant workspace: {0}")]
    Image(String),
}

impl Workspaces {
    /// Workspaces under `tenants_dir`, with a quota of `quota_bytes` each where this process
    /// can mount images (0: none).
    pub fn new(tenants_dir: PathBuf, quota_bytes: u64) -> Self {
        let quota = match quota_bytes {
            0 => Err("turned off (--workspace-quota-mb 0)".to_owned()),
            bytes => Quota::new(bytes),
        };
        if let Err(reason) = &quota {
            tracing::warn!(%reason, "no workspace quota: a tenant's workspace is bounded only by the per-file size limit");
        }
        Self { tenants_dir, quota }
    }

    /// The quota in bytes, or why there is none.
    pub fn quota(&self) -> Result<u64, &str> {
        self.quota.as_ref().map(|q| q.bytes).map_err(String::as_str)
    }

    /// The tenant's workspace, created (0700) and, with a quota, mounted on first use.
    pub async fn workspace(&self, tenant: &TenantId) -> Result<PathBuf, WorkspaceError> {
        let tenant_dir = self.tenants_dir.join(tenant.as_dir_name());
        let path = tenant_dir.join("workspace");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&path)?;
        if let Ok(quota) = &self.quota {
            quota
                .mount(tenant.as_dir_name(), &tenant_dir, &path)
                .await?;
        }
        Ok(path)
    }
}

impl Quota {
    fn new(bytes: u64) -> Result<Self, String> {
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
            bytes,
            mkfs: find(&["/usr/sbin/mkfs.ext4", "/sbin/mkfs.ext4"])?,
            mount: find(&["/usr/bin/mount", "/bin/mount"])?,
            mounted: Default::default(),
        })
    }

    async fn mount(
        &self,
        name: &str,
        tenant_dir: &Path,
        path: &Path,
    ) -> Result<(), WorkspaceError> {
        let mut mounted = self.mounted.lock().await;
        if mounted.contains_key(name) {
            return Ok(());
        }
        let image = tenant_dir.join("workspace.img");
        if !image.exists() {
            self.create_image(&image, path).await?;
        }
        let file = std::fs::OpenOptions::new().read(true).open(&image)?;
        let file = Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|_| {
            WorkspaceError::Image("its image is in use by another gateway process".into())
        })?;
        run(tokio::process::Command::new(&self.mount).args([
            "-t".as_ref(),
            "ext4".as_ref(),
            // discard: a deleted file gives its blocks back to the host's disk.
            "-o".as_ref(),
            "loop,nosuid,nodev,discard,noinit_itable".as_ref(),
            image.as_os_str(),
            path.as_os_str(),
        ]))
        .await?;
        // The new file system's root: the tenant's alone, without the mkfs leftovers.
        let _ = std::fs::remove_dir(path.join("lost+found"));
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
        mounted.insert(name.to_owned(), file);
        Ok(())
    }

    /// A new image holding what the workspace already had (a data dir from before the quota),
    /// made whole under a temporary name and then put in place.
    async fn create_image(&self, image: &Path, path: &Path) -> Result<(), WorkspaceError> {
        let tmp = image.with_extension("img.tmp");
        let _ = std::fs::remove_file(&tmp);
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?
            .set_len(self.bytes)?;
        let owner = format!(
            "root_owner={}:{},lazy_itable_init=1,lazy_journal_init=1",
            nix::unistd::geteuid(),
            nix::unistd::getegid()
        );
        let made = run(tokio::process::Command::new(&self.mkfs).args([
            "-q".as_ref(),
            "-F".as_ref(),
            // No blocks kept for root: the tenant gets the whole quota.
            "-m".as_ref(),
            "0".as_ref(),
            "-E".as_ref(),
            owner.as_ref(),
            "-d".as_ref(),
            path.as_os_str(),
            tmp.as_os_str(),
        ]))
        .await;
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

async fn run(command: &mut tokio::process::Command) -> Result<(), WorkspaceError> {
    let output = command
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(std::time::Duration::from_secs(30), output)
        .await
        .map_err(|_| WorkspaceError::Image("timed out".into()))??;
    if output.status.success() {
        Ok(())
    } else {
        Err(WorkspaceError::Image(
            String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        ))
    }
}
