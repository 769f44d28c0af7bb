//! A control group per run: the memory of the run as a whole (every process, its `/tmp` and
//! `/dev/shm` pages) and its process count, bounded by the kernel.
//!
//! Per-process limits (RLIMIT_DATA) leave a run free to hold its limit in each of its
//! processes; the cgroup bounds their sum. The bubblewrap child is placed in the run's group
//! before it executes (so every process of the run, and the cgroup namespace bwrap makes, start
//! inside it), and an OOM kill in the group ends the run: its process group is killed and its
//! client gets an error that says why, while other runs go on.
//!
//! Where the gateway can create groups: cgroup v1 with a writable `memory` hierarchy (a VM or a
//! privileged container), or cgroup v2 where the gateway's own group is delegated to it (the
//! gateway moves itself into a leaf `supervisor` group so that its group may enable the
//! `memory` and `pids` controllers for run groups beside it). Elsewhere per-run groups are
//! reported unavailable in `/v1/security` and `/ready`, and the per-process limits and sized
//! memory mounts are what bounds a run.

use std::ffi::CString;

use nix::libc;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::Duration;

/// Run groups are named with this prefix, so that a start-up sweep finds leftovers.
const RUN_PREFIX: &str = "claude-gateway-run-";
/// How often a run's group is checked for an OOM kill.
const OOM_POLL: Duration = Duration::from_millis(200);
/// Leftover groups younger than this may belong to a run another gateway is starting.
const SWEEP_AGE: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Layout {
    /// One directory per controller hierarchy: run groups are made in each.
    V1 {
        memory: PathBuf,
        pids: Option<PathBuf>,
    },
    /// The unified hierarchy: run groups are made in `parent`.
    V2 { parent: PathBuf },
}

/// Where and how run groups are made.
#[derive(Debug)]
pub struct Cgroups {
    layout: Layout,
    memory_bytes: u64,
    max_processes: u64,
}

impl Cgroups {
    /// Finds a place for run groups and proves it by making (and removing) one; the reason
    /// when there is none.
    pub fn detect(memory_bytes: u64, max_processes: u64) -> Result<Self, String> {
        let own = std::fs::read_to_string("/proc/self/cgroup").map_err(|e| e.to_string())?;
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").map_err(|e| e.to_string())?;
        let layout = layout(&own, &mounts)?;
        if let Layout::V2 { parent } = &layout {
            delegate_v2(parent)?;
        }
        let cgroups = Self {
            layout,
            memory_bytes,
            max_processes,
        };
        cgroups.sweep();
        cgroups
            .create_run()
            .map_err(|e| format!("cannot create a run group: {e}"))?;
        Ok(cgroups)
    }

    pub fn version(&self) -> u8 {
        match self.layout {
            Layout::V1 { .. } => 1,
            Layout::V2 { .. } => 2,
        }
    }

    pub fn memory_bytes(&self) -> u64 {
        self.memory_bytes
    }

    fn parents(&self) -> Vec<&Path> {
        match &self.layout {
            Layout::V1 { memory, pids } => std::iter::once(memory.as_path())
                .chain(pids.as_deref())
                .collect(),
            Layout::V2 { parent } => vec![parent.as_path()],
        }
    }

    /// A new group for one run, with its limits set; removed (its processes killed) on drop.
    pub fn create_run(&self) -> std::io::Result<RunCgroup> {
        let name = format!("{RUN_PREFIX}{}", uuid::Uuid::new_v4());
        let mut group = RunGroup {
            dirs: Vec::new(),
            version: self.version(),
        };
        for parent in self.parents() {
            let dir = parent.join(&name);
            std::fs::create_dir(&dir)?;
            group.dirs.push(dir);
        }
        let memory = group.dirs[0].clone();
        let limit = self.memory_bytes.to_string();
        match &self.layout {
            Layout::V1 { pids, .. } => {
                std::fs::write(memory.join("memory.limit_in_bytes"), &limit)?;
                // Swap counted too where the kernel accounts it; not every kernel does.
                let _ = std::fs::write(memory.join("memory.memsw.limit_in_bytes"), &limit);
                if pids.is_some() {
                    std::fs::write(
                        group.dirs[1].join("pids.max"),
                        self.max_processes.to_string(),
                    )?;
                }
            }
            Layout::V2 { .. } => {
                std::fs::write(memory.join("memory.max"), &limit)?;
                let _ = std::fs::write(memory.join("memory.swap.max"), "0");
                std::fs::write(memory.join("pids.max"), self.max_processes.to_string())?;
            }
        }
        let procs = group
            .dirs
            .iter()
            .map(|dir| {
                CString::new(
                    dir.join("cgroup.procs")
                        .into_os_string()
                        .into_encoded_bytes(),
                )
                .map_err(std::io::Error::other)
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(RunCgroup {
            group: Arc::new(group),
            procs: procs.into(),
            memory_bytes: self.memory_bytes,
        })
    }

    /// Removes the empty run groups a crashed gateway left behind (a group with processes
    /// cannot be removed, so another gateway's running groups are safe).
    fn sweep(&self) {
        for parent in self.parents() {
            let Ok(entries) = std::fs::read_dir(parent) else {
                continue;
            };
            for entry in entries.flatten() {
                let old = entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age > SWEEP_AGE);
                if old && entry.file_name().to_string_lossy().starts_with(RUN_PREFIX) {
                    let _ = std::fs::remove_dir(entry.path());
                }
            }
        }
    }
}

/// Where run groups go, from `/proc/self/cgroup` and `/proc/self/mountinfo`: beside the
/// gateway's own group in the `memory` (and `pids`) hierarchy under v1, in its own group's
/// parent-to-be under v2.
fn layout(own: &str, mountinfo: &str) -> Result<Layout, String> {
    let mounts: Vec<Mount> = mountinfo.lines().filter_map(Mount::parse).collect();
    let v1_dir = |controller: &str| {
        let path = own.lines().find_map(|line| {
            let mut parts = line.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            controllers
                .split(',')
                .any(|c| c == controller)
                .then_some(path)
        })?;
        let mount = mounts
            .iter()
            .find(|m| m.fstype == "cgroup" && m.options.split(',').any(|o| o == controller))?;
        mount.place(path)
    };
    if let Some(memory) = v1_dir("memory") {
        return Ok(Layout::V1 {
            memory,
            pids: v1_dir("pids"),
        });
    }
    let unified = own
        .lines()
        .find_map(|line| line.strip_prefix("0::"))
        .ok_or("the gateway is in no memory cgroup")?;
    let mount = mounts
        .iter()
        .find(|m| m.fstype == "cgroup2")
        .ok_or("no cgroup filesystem is mounted")?;
    // A gateway already in its `supervisor` leaf (see `delegate_v2`) makes runs beside it.
    let unified = unified.strip_suffix("/supervisor").unwrap_or(unified);
    let parent = mount
        .place(unified)
        .ok_or("the gateway's cgroup is outside the mounted cgroup filesystem")?;
    Ok(Layout::V2 { parent })
}

/// One cgroup filesystem mount.
struct Mount<'a> {
    /// The hierarchy's directory that the mount shows.
    root: &'a str,
    mount_point: &'a str,
    fstype: &'a str,
    options: &'a str,
}

impl<'a> Mount<'a> {
    fn parse(line: &'a str) -> Option<Self> {
        let (left, right) = line.split_once(" - ")?;
        let fields: Vec<&str> = left.split(' ').collect();
        let mut right = right.split(' ');
        let fstype = right.next()?;
        let _source = right.next()?;
        Some(Self {
            root: fields.get(3)?,
            mount_point: fields.get(4)?,
            fstype,
            options: right.next()?,
        })
    }

    /// Where the group at `path` (in the hierarchy) is, if this mount shows it.
    fn place(&self, path: &str) -> Option<PathBuf> {
        let rest = match self.root {
            "/" => path,
            root => path.strip_prefix(root)?,
        };
        let rest = rest.trim_start_matches('/');
        if rest.split('/').any(|part| part == "..") {
            return None;
        }
        Some(Path::new(self.mount_point).join(rest))
    }
}

/// Under v2, a group with processes cannot give controllers to children: the gateway moves
/// itself into a `supervisor` leaf first, then enables `memory` and `pids` for the groups
/// beside it. Fails (and changes nothing visible) when the group is not the gateway's to use.
fn delegate_v2(parent: &Path) -> Result<(), String> {
    let wanted = ["memory", "pids"];
    let enabled = |dir: &Path| {
        std::fs::read_to_string(dir.join("cgroup.subtree_control"))
            .map(|s| wanted.iter().all(|w| s.split_whitespace().any(|c| c == *w)))
            .unwrap_or(false)
    };
    if enabled(parent) {
        return Ok(());
    }
    let leaf = parent.join("supervisor");
    match std::fs::create_dir(&leaf) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("the gateway's cgroup is not writable: {e}")),
    }
    std::fs::write(leaf.join("cgroup.procs"), "0")
        .map_err(|e| format!("cannot move the gateway into a leaf cgroup: {e}"))?;
    std::fs::write(parent.join("cgroup.subtree_control"), "+memory +pids").map_err(|e| {
        format!("cannot enable the memory and pids controllers (is the group delegated, with no other process in it?): {e}")
    })?;
    Ok(())
}

/// The directories of one run's group, removed when the last holder lets go.
#[derive(Debug)]
struct RunGroup {
    /// The memory hierarchy's first.
    dirs: Vec<PathBuf>,
    version: u8,
}

impl RunGroup {
    fn oom_kills(&self) -> u64 {
        let file = match self.version {
            1 => "memory.oom_control",
            _ => "memory.events",
        };
        std::fs::read_to_string(self.dirs[0].join(file))
            .ok()
            .and_then(|text| {
                text.lines().find_map(|line| {
                    line.strip_prefix("oom_kill ")
                        .and_then(|n| n.trim().parse().ok())
                })
            })
            .unwrap_or(0)
    }

    /// Kills every process in the group: its members may have left the run's process group.
    fn kill_all(&self) {
        for dir in &self.dirs {
            let Ok(pids) = std::fs::read_to_string(dir.join("cgroup.procs")) else {
                continue;
            };
            for pid in pids.lines().filter_map(|p| p.trim().parse::<i32>().ok()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }

    /// Removes the directories that are empty; whether all are gone.
    fn remove(&self) -> bool {
        self.dirs
            .iter()
            .filter(|dir| dir.exists())
            .all(|dir| std::fs::remove_dir(dir).is_ok())
    }
}

impl Drop for RunGroup {
    fn drop(&mut self) {
        // Killed processes leave their group as they exit, a moment later. No thread or task
        // is started here (this may run while the runtime shuts down): a group that will not
        // go within a tenth of a second is left to the next start's sweep.
        for _ in 0..20 {
            self.kill_all();
            if self.remove() {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        tracing::debug!(group = ?self.dirs, "a run cgroup is left for the next sweep");
    }
}

/// One run's group.
#[derive(Debug, Clone)]
pub struct RunCgroup {
    group: Arc<RunGroup>,
    /// Each hierarchy's `cgroup.procs`, prepared for the child's pre-exec step.
    procs: Arc<[CString]>,
    memory_bytes: u64,
}

impl RunCgroup {
    /// Makes `command`'s child join the group before it executes.
    pub fn attach(&self, command: &mut tokio::process::Command) {
        let procs = self.procs.clone();
        // SAFETY: between fork and exec only async-signal-safe calls (open, write, close)
        // on paths prepared before the fork; no allocation.
        unsafe {
            command.pre_exec(move || {
                for path in procs.iter() {
                    let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                    if fd < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    // "0" is the writing process: the child itself.
                    let written = libc::write(fd, b"0".as_ptr().cast(), 1);
                    let error = std::io::Error::last_os_error();
                    libc::close(fd);
                    if written != 1 {
                        return Err(error);
                    }
                }
                Ok(())
            });
        }
    }

    /// How many processes of the run the kernel killed for want of memory.
    pub fn oom_kills(&self) -> u64 {
        self.group.oom_kills()
    }

    pub fn memory_bytes(&self) -> u64 {
        self.memory_bytes
    }

    /// Ends the run when the kernel kills one of its processes for want of memory: the rest
    /// would go on without it (a tool reporting "Killed"), and the run is to end with an
    /// error. The watch stops when the group is gone.
    pub fn watch_oom(&self) -> tokio::task::JoinHandle<()> {
        let group: Weak<RunGroup> = Arc::downgrade(&self.group);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(OOM_POLL);
            loop {
                tick.tick().await;
                let Some(group) = group.upgrade() else { return };
                if group.oom_kills() > 0 {
                    group.kill_all();
                    return;
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1_MOUNTS: &str = "\
35 26 0:30 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 26 0:31 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
37 26 0:32 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
";

    #[test]
    fn under_v1_runs_go_beside_the_gateway_in_the_memory_and_pids_hierarchies() {
        let own = "8:pids:/\n4:memory:/process_api/abc\n2:cpu,cpuacct:/\n0::/\n";
        assert_eq!(
            layout(own, V1_MOUNTS),
            Ok(Layout::V1 {
                memory: "/sys/fs/cgroup/memory/process_api/abc".into(),
                pids: Some("/sys/fs/cgroup/pids".into()),
            })
        );
    }

    #[test]
    fn a_container_mount_of_part_of_the_hierarchy_is_followed() {
        let mounts = "40 30 0:30 /docker/x /sys/fs/cgroup/memory ro - cgroup cgroup rw,memory\n";
        let own = "4:memory:/docker/x\n";
        assert_eq!(
            layout(own, mounts),
            Ok(Layout::V1 {
                memory: "/sys/fs/cgroup/memory".into(),
                pids: None,
            })
        );
        // A group outside what is mounted is no place for runs.
        assert!(layout("4:memory:/other\n", mounts).is_err());
        assert!(layout("4:memory:/docker/x/../../y\n", mounts).is_err());
    }

    #[test]
    fn under_v2_runs_go_in_the_gateways_own_group() {
        let mounts = "30 25 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(
            layout("0::/system.slice/gw.service\n", mounts),
            Ok(Layout::V2 {
                parent: "/sys/fs/cgroup/system.slice/gw.service".into()
            })
        );
        assert_eq!(
            layout("0::/system.slice/gw.service/supervisor\n", mounts),
            Ok(Layout::V2 {
                parent: "/sys/fs/cgroup/system.slice/gw.service".into()
            })
        );
        assert!(layout("0::/x\n", "").is_err());
    }
}
