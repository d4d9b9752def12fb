//! CPU time per group of threads, from /proc/self/task (Linux).

use std::collections::HashMap;

use serde::Serialize;

#[derive(Debug, Serialize)]
pub struct ThreadCpu {
    pub group: String,
    pub threads: usize,
    /// CPU seconds used during the measured window, divided by its length.
    pub cores: f64,
}

/// CPU ticks (user + system) of every thread of this process, by thread name.
pub fn thread_cpu_snapshot() -> HashMap<u64, (String, u64)> {
    let mut out = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for e in dir.flatten() {
        let Ok(tid) = e.file_name().to_string_lossy().parse::<u64>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // "tid (comm) state ..." — comm may hold spaces; fields after ')' start at field 3.
        let (Some(l), Some(r)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let name = stat[l + 1..r].to_string();
        let f: Vec<&str> = stat[r + 2..].split_whitespace().collect();
        let ticks = f.get(11).and_then(|u| u.parse::<u64>().ok()).unwrap_or(0)
            + f.get(12).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
        out.insert(tid, (name, ticks));
    }
    out
}

pub fn cpu_diff(
    a: &HashMap<u64, (String, u64)>,
    b: &HashMap<u64, (String, u64)>,
    secs: f64,
) -> Vec<ThreadCpu> {
    // Clock ticks are 100 per second on Linux (USER_HZ).
    let hz = 100.0;
    let mut groups: Vec<(String, usize, u64)> = Vec::new();
    for (tid, (name, t1)) in b {
        let t0 = a.get(tid).map_or(0, |x| x.1);
        let group = if name.starts_with("gru-worker") {
            "server compute worker".to_string()
        } else if name.starts_with("lg-server") {
            "server runtime".to_string()
        } else if name.starts_with("train-") {
            "training threads".to_string()
        } else if name.starts_with("lg-client") {
            "client runtime".to_string()
        } else if name == "loadgen" {
            // The main thread, and unnamed threads (rayon's pool when --compute-threads > 1).
            "main + unnamed (rayon pool)".to_string()
        } else {
            format!("other ({name})")
        };
        match groups.iter_mut().find(|g| g.0 == group) {
            Some(g) => {
                g.1 += 1;
                g.2 += t1.saturating_sub(t0);
            }
            None => groups.push((group, 1, t1.saturating_sub(t0))),
        }
    }
    groups.sort_by(|x, y| x.0.cmp(&y.0));
    groups
        .into_iter()
        .map(|(group, threads, ticks)| ThreadCpu {
            group,
            threads,
            cores: ticks as f64 / hz / secs.max(1e-9),
        })
        .collect()
}
