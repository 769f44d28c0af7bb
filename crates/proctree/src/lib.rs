//! Process trees read from Linux's `/proc`: which processes a gateway has below it and how
//! much memory they hold. Tests use it to prove that a run leaves nothing behind; the
//! benchmarks use it to measure memory per run.

/// `root` and every process below it, `root` first.
pub fn tree_of(root: u32) -> Vec<u32> {
    let parents: Vec<(u32, u32)> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| Some((pid, parent_of(pid)?)))
        .collect();
    let mut tree = vec![root];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(
            parents
                .iter()
                .filter(|(_, pp)| *pp == parent)
                .map(|(p, _)| *p),
        );
        i += 1;
    }
    tree
}

/// Every process below `root`, without `root` itself.
pub fn descendants_of(root: u32) -> Vec<u32> {
    let mut tree = tree_of(root);
    tree.remove(0);
    tree
}

/// Resident memory of one process in KiB (0 once it is gone).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("VmRSS:"))?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is parenthesised and may hold spaces or ')', so the fields are
    // counted from the last ')': state, then the parent pid.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spawned_child_is_a_descendant_until_it_is_reaped() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("sleep runs");
        let me = std::process::id();
        assert!(descendants_of(me).contains(&child.id()));
        assert!(rss_kib(child.id()) > 0);
        child.kill().expect("killed");
        child.wait().expect("reaped");
        assert!(!descendants_of(me).contains(&child.id()));
    }
}
