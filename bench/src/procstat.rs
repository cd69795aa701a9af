//! CPU time and peak memory of a server from `/proc`: the given pids and
//! every process below them (chronyd forks NTS-KE helpers), found through
//! the parent pid in `/proc/*/stat`.
//!
//! CPU of a process is utime + stime + cutime + cstime: the last two hold
//! the CPU of children that exited and were reaped, so a helper process
//! that ends during a run is still counted (in its parent) and one alive at
//! both samples is counted once (in itself). Callers use the difference
//! between two samples.

use std::collections::{HashMap, HashSet};

use crate::sys::clock_ticks_per_second;

struct Stat {
    ppid: u32,
    /// utime + stime.
    own: u64,
    /// cutime + cstime: reaped children.
    reaped: u64,
}

/// Fields of `/proc/PID/stat` after the parenthesised command name (which
/// may itself contain spaces and parentheses).
fn parse_stat(text: &str) -> Option<Stat> {
    let rest = text.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): ppid is field 4, utime..cstime 14..17.
    let num = |i: usize| -> Option<u64> { f.get(i)?.parse().ok() };
    let ppid = u32::try_from(num(1)?).ok()?;
    Some(Stat {
        ppid,
        own: num(11)? + num(12)?,
        reaped: num(13)? + num(14)?,
    })
}

fn read_stat(pid: u32) -> Option<Stat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// The pids in `roots` that exist, and all their descendants.
pub fn process_tree(roots: &[u32]) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some(s) = read_stat(pid) {
                children.entry(s.ppid).or_default().push(pid);
            }
        }
    }
    let mut seen = HashSet::new();
    let mut stack: Vec<u32> = roots
        .iter()
        .copied()
        .filter(|p| std::path::Path::new(&format!("/proc/{p}")).exists())
        .collect();
    let mut out = Vec::new();
    // Each pid is visited once, so the walk ends.
    while let Some(p) = stack.pop() {
        if !seen.insert(p) {
            continue;
        }
        out.push(p);
        if let Some(c) = children.get(&p) {
            stack.extend(c.iter().copied());
        }
    }
    out
}

/// CPU seconds of `pids` (not their descendants), or `None` if none exists.
pub fn cpu_seconds_of(pids: &[u32]) -> Option<f64> {
    let mut ticks = 0u64;
    let mut any = false;
    for &p in pids {
        if let Some(s) = read_stat(p) {
            ticks += s.own + s.reaped;
            any = true;
        }
    }
    any.then(|| ticks as f64 / clock_ticks_per_second())
}

/// CPU seconds of `roots` and all their descendants; `None` if no root exists.
pub fn tree_cpu_seconds(roots: &[u32]) -> Option<f64> {
    cpu_seconds_of(&process_tree(roots))
}

/// This process's CPU seconds (all threads; no children).
pub fn self_cpu_seconds() -> Option<f64> {
    let s = parse_stat(&std::fs::read_to_string("/proc/self/stat").ok()?)?;
    Some(s.own as f64 / clock_ticks_per_second())
}

/// Sum of the peak resident set sizes (VmHWM, kB) of `roots` and their
/// descendants: each process's peak over its lifetime, so an upper bound
/// of the tree's peak. `None` if none could be read.
pub fn tree_peak_rss_kb(roots: &[u32]) -> Option<u64> {
    let mut total = 0u64;
    let mut any = false;
    for p in process_tree(roots) {
        let Ok(status) = std::fs::read_to_string(format!("/proc/{p}/status")) else {
            continue;
        };
        let kb = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok());
        if let Some(kb) = kb {
            total += kb;
            any = true;
        }
    }
    any.then_some(total)
}

/// Server CPU and peak memory, sampled before and after a run.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ServerUsage {
    /// CPU seconds used by the tree during the run.
    pub cpu_s: f64,
    pub rss_peak_kb: Option<u64>,
}

/// Samples the CPU of `roots`' tree now; `finish` gives the usage since.
#[derive(Debug, Clone)]
pub struct ServerProbe {
    roots: Vec<u32>,
    start: Option<f64>,
}

impl ServerProbe {
    pub fn start(roots: &[u32]) -> Self {
        let start = if roots.is_empty() {
            None
        } else {
            tree_cpu_seconds(roots)
        };
        Self {
            roots: roots.to_vec(),
            start,
        }
    }

    /// `None` without pids, or if the server was gone at either sample.
    pub fn finish(&self) -> Option<ServerUsage> {
        let start = self.start?;
        let end = tree_cpu_seconds(&self.roots)?;
        Some(ServerUsage {
            cpu_s: (end - start).max(0.0),
            rss_peak_kb: tree_peak_rss_kb(&self.roots),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_with_odd_names_parse() {
        let line = "42 (a) b (c)) S 7 42 42 0 -1 4194560 100 0 0 0 25 5 3 2 20 0 1 0";
        let s = parse_stat(line).expect("parse");
        assert_eq!((s.ppid, s.own, s.reaped), (7, 30, 5));
        assert!(parse_stat("garbage").is_none());
        assert!(parse_stat("1 (x) S").is_none());
    }

    #[test]
    fn a_child_is_part_of_the_tree_and_memory_is_read() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .expect("spawn sleep");
        let me = std::process::id();
        let tree = process_tree(&[me]);
        let _ = child.kill();
        let _ = child.wait();
        assert!(tree.contains(&me) && tree.contains(&child.id()), "{tree:?}");
        assert!(tree_peak_rss_kb(&[me]).unwrap_or(0) > 0);
        assert!(self_cpu_seconds().is_some());
        assert!(process_tree(&[u32::MAX]).is_empty());
    }
}
