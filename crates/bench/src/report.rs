//! Results as Markdown blocks, written into BENCHMARKS.md between marker comments
//! (`<!-- bench:NAME:start -->` … `<!-- bench:NAME:end -->`), and the machine they came from.

use std::path::Path;

/// One benchmark's results: a title for stdout and the Markdown that goes between its markers.
pub struct Block {
    pub name: &'static str,
    pub title: String,
    pub body: String,
}

impl Block {
    /// A block whose body starts with the command that reproduces it.
    pub fn new(name: &'static str, title: impl Into<String>, command: &str, body: &str) -> Self {
        Self {
            name,
            title: title.into(),
            body: format!("`{command}`\n\n{}", body.trim()),
        }
    }
}

pub fn start_marker(name: &str) -> String {
    format!("<!-- bench:{name}:start -->")
}

pub fn end_marker(name: &str) -> String {
    format!("<!-- bench:{name}:end -->")
}

/// Replaces what lies between block `name`'s markers in `doc` with `body` (blank lines around
/// it, so tables render); the rest of `doc` is kept byte for byte. Each marker must appear
/// exactly once, start before end.
pub fn replace_block(doc: &str, name: &str, body: &str) -> Result<String, String> {
    let (start, end) = (start_marker(name), end_marker(name));
    let find_once = |marker: &str| -> Result<usize, String> {
        let mut hits = doc.match_indices(marker).map(|(i, _)| i);
        match (hits.next(), hits.next()) {
            (Some(i), None) => Ok(i),
            (None, _) => Err(format!("marker `{marker}` not found")),
            (Some(_), Some(_)) => Err(format!("marker `{marker}` appears more than once")),
        }
    };
    let (s, e) = (find_once(&start)?, find_once(&end)?);
    if e < s {
        return Err(format!("marker `{end}` comes before `{start}`"));
    }
    let inner_from = s + start.len();
    Ok(format!(
        "{}\n\n{}\n\n{}",
        &doc[..inner_from],
        body.trim(),
        &doc[e..]
    ))
}

/// Checks that `path` holds the markers of every block in `names`, before anything is run.
pub fn check_markers(path: &Path, names: &[&str]) -> anyhow::Result<()> {
    let doc = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    let problems: Vec<String> = names
        .iter()
        .filter_map(|name| replace_block(&doc, name, "").err())
        .collect();
    anyhow::ensure!(
        problems.is_empty(),
        "{}: {}; add a `<!-- bench:NAME:start -->` / `<!-- bench:NAME:end -->` pair for each of: {}",
        path.display(),
        problems.join("; "),
        names.join(", ")
    );
    Ok(())
}

/// Rewrites the blocks in `path`, each between its own markers, and nothing else.
pub fn write_blocks(path: &Path, blocks: &[Block]) -> anyhow::Result<()> {
    let mut doc = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    for block in blocks {
        doc = replace_block(&doc, block.name, &block.body)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    }
    // Write beside it and rename, so an interrupted run never leaves half a file.
    let tmp = path.with_extension("md.tmp");
    std::fs::write(&tmp, doc)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// The machine the figures come from: cores, memory, CPU model, kernel and today's date.
pub fn machine() -> Block {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
        .map_or("unknown CPU".to_owned(), |(_, m)| m.trim().to_owned());
    let virtual_machine = cpuinfo
        .lines()
        .any(|l| l.starts_with("flags") && l.split_whitespace().any(|f| f == "hypervisor"));
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))?
                .split_whitespace()
                .next()?
                .parse::<u64>()
                .ok()
        })
        .map_or(0.0, |kib| kib as f64 / 1024.0 / 1024.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or("unknown".to_owned(), |k| k.trim().to_owned());
    let days = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 86_400);
    let vm = if virtual_machine {
        ", virtual machine"
    } else {
        ""
    };
    Block {
        name: "machine",
        title: "Machine".into(),
        body: format!(
            "Machine: {cores} cores ({model}{vm}), {mem_gib:.0} GiB, Linux {kernel}; {}.",
            civil_date(days)
        ),
    }
}

/// `YYYY-MM-DD` of a day count since 1970-01-01 (proleptic Gregorian, UTC).
pub fn civil_date(days_since_epoch: u64) -> String {
    // Howard Hinnant's days-to-civil algorithm.
    let z = days_since_epoch as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "# Benchmarks\n\nProse before.\n\n<!-- bench:overhead:start -->\n| old | table |\n|---|---|\n<!-- bench:overhead:end -->\n\nProse between.\n\n<!-- bench:growth:start --><!-- bench:growth:end -->\nProse after.\n";

    #[test]
    fn replaces_only_between_its_own_markers() {
        let out = replace_block(DOC, "overhead", "| new | table |\n|---|---|\n").expect("ok");
        assert_eq!(
            out,
            "# Benchmarks\n\nProse before.\n\n<!-- bench:overhead:start -->\n\n| new | table |\n|---|---|\n\n<!-- bench:overhead:end -->\n\nProse between.\n\n<!-- bench:growth:start --><!-- bench:growth:end -->\nProse after.\n"
        );
        // Empty blocks fill in too, and replacing again is stable.
        let grown = replace_block(&out, "growth", "x").expect("ok");
        assert!(grown.contains(
            "<!-- bench:growth:start -->\n\nx\n\n<!-- bench:growth:end -->\nProse after.\n"
        ));
        assert_eq!(replace_block(&grown, "growth", "x").expect("ok"), grown);
        assert!(grown.contains("| new | table |"));
    }

    #[test]
    fn missing_duplicate_or_swapped_markers_are_errors() {
        let missing = replace_block(DOC, "rejection", "x").expect_err("missing");
        assert!(
            missing.contains("bench:rejection:start") && missing.contains("not found"),
            "{missing}"
        );
        let no_end = "<!-- bench:a:start -->\nx\n";
        assert!(replace_block(no_end, "a", "y")
            .expect_err("no end")
            .contains("bench:a:end"));
        let twice = "<!-- bench:a:start --><!-- bench:a:end --><!-- bench:a:start -->";
        assert!(replace_block(twice, "a", "y")
            .expect_err("twice")
            .contains("more than once"));
        let swapped = "<!-- bench:a:end -->\n<!-- bench:a:start -->";
        assert!(replace_block(swapped, "a", "y")
            .expect_err("swapped")
            .contains("before"));
    }

    #[test]
    fn block_names_do_not_match_by_prefix() {
        let doc = "<!-- bench:concurrency-queue:start -->q<!-- bench:concurrency-queue:end -->";
        assert!(replace_block(doc, "concurrency", "x").is_err());
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_date(0), "1970-01-01");
        assert_eq!(civil_date(11_016), "2000-02-29");
        assert_eq!(civil_date(20_415), "2025-11-23");
    }
}
