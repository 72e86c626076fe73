//! `bench/run --quick` end to end: both systems' clusters, every workload,
//! the footprint, the mirrors and the report. It checks that the benchmark
//! works, never how fast anything is (no figure is compared with another).
//!
//! Needs etcd 3.4 and etcdctl (Debian `etcd-server`, `etcd-client`) and
//! curl, which `.ci/run` installs, and the debug `meridian` binary, which
//! the workspace tests build.

use serde_json::Value;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The workloads `bench/run` measures: (name, clients).
const WORKLOADS: &[(&str, u64)] = &[
    ("put", 1),
    ("put", 16),
    ("put", 64),
    ("put", 256),
    ("range", 1),
    ("range", 64),
    ("range-serializable", 1),
    ("range-serializable", 64),
    ("txn-cas", 64),
    ("range-prefix", 16),
    ("range-prefix-keys", 16),
];

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// The debug `meridian` beside the load generator this test was built with.
fn meridian() -> PathBuf {
    let load = Path::new(env!("CARGO_BIN_EXE_meridian-load"));
    let bin = load.with_file_name("meridian");
    assert!(
        bin.exists(),
        "{} is missing: run the workspace tests (`cargo test --workspace`), which build it",
        bin.display()
    );
    bin
}

/// A base for bench/lib.sh's block of ports (base .. base + 3101) whose
/// ports are free now, below the kernel's ephemeral range.
fn free_port_base() -> u16 {
    // (offset, TCP or UDP): etcd members and their peer ports, the etcd
    // mirror pair, the Meridian servers (client TCP, peer UDP), the
    // Meridian mirror pair.
    let mut wanted: Vec<(u16, bool)> = Vec::new();
    for i in 0..3 {
        wanted.extend([(10 * i, true), (10 * i + 1, true)]);
        wanted.extend([(2000 + 10 * i, true), (2000 + 10 * i + 1, false)]);
    }
    for side in 0..2 {
        wanted.extend([(1000 + 100 * side, true), (1000 + 100 * side + 1, true)]);
        wanted.extend([(3000 + 100 * side, true), (3000 + 100 * side + 1, false)]);
    }
    let seed = std::process::id() as u16;
    for attempt in 0..200u16 {
        let base = 20000 + seed.wrapping_mul(31).wrapping_add(attempt.wrapping_mul(97)) % 9000;
        let free = wanted.iter().all(|&(offset, tcp)| {
            let port = base + offset;
            if tcp {
                std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
            } else {
                std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok()
            }
        });
        if free {
            return base;
        }
    }
    panic!("no free block of ports for the benchmark");
}

/// Kills the run's whole process group (the script, its servers, the load
/// generator) if the test ends before the script does.
struct Group(Child);

impl Drop for Group {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            // SAFETY: kill(2) on the child's own process group.
            unsafe { libc::kill(-(self.0.id() as i32), libc::SIGKILL) };
            let _ = self.0.wait();
        }
    }
}

fn the_file(dir: &Path, ext: &str) -> PathBuf {
    let found: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("results directory")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    assert_eq!(found.len(), 1, "one .{ext} file in {}", dir.display());
    found[0].clone()
}

/// Fails clearly when a program the run needs is missing (bench/run would
/// install etcd itself when run as root; a test should not).
fn require(program: &str) {
    let found = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()));
    assert!(
        found,
        "{program} is missing: the benchmark's smoke run needs etcd 3.4, etcdctl \
         and curl (Debian etcd-server, etcd-client, curl; .ci/run installs them)"
    );
}

#[test]
fn bench_run_quick_measures_every_workload_on_both_systems() {
    for program in ["etcd", "etcdctl", "curl"] {
        require(program);
    }
    let scratch = tempfile::tempdir().expect("scratch directory");
    let results = scratch.path().join("results");
    let log_path = scratch.path().join("run.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let mut run = Group(
        Command::new(repo_root().join("bench/run"))
            .arg("--quick")
            .env("MERIDIAN", meridian())
            .env("LOAD", env!("CARGO_BIN_EXE_meridian-load"))
            .env("RESULTS", &results)
            .env("PORT_BASE", free_port_base().to_string())
            .env("TMPDIR", scratch.path())
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("start bench/run"),
    );
    // About two minutes with release builds; debug servers are slower.
    let deadline = Instant::now() + Duration::from_secs(900);
    let status = loop {
        if let Some(status) = run.0.try_wait().expect("wait for bench/run") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "bench/run --quick still running after 15 minutes:\n{}",
            std::fs::read_to_string(&log_path).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let output = std::fs::read_to_string(&log_path).unwrap_or_default();
    assert!(status.success(), "bench/run --quick failed:\n{output}");

    let summary: Value = serde_json::from_str(
        &std::fs::read_to_string(the_file(&results, "json")).expect("summary"),
    )
    .expect("summary is JSON");
    // Every workload ran against both systems and did something.
    let runs = summary["runs"].as_array().expect("runs");
    for &(workload, clients) in WORKLOADS {
        let run = runs
            .iter()
            .find(|r| r["workload"] == workload && r["clients"] == clients)
            .unwrap_or_else(|| panic!("no {workload} at {clients} clients in {summary}"));
        for system in ["etcd", "meridian"] {
            let ops = run["throughput"][system].as_f64().unwrap_or(0.0);
            assert!(ops > 0.0, "{workload} at {clients}: {system} did nothing");
        }
    }
    // Meridian answered every request of every run without an error.
    let records = std::fs::read_to_string(the_file(&results, "jsonl")).expect("records");
    let mut meridian_runs = 0;
    for line in records.lines() {
        let record: Value = serde_json::from_str(line).expect("record is JSON");
        if record["system"] == "meridian" && record.get("workload").is_some() {
            meridian_runs += 1;
            assert_eq!(record["errors"], 0, "errors in {record}");
        }
    }
    assert_eq!(meridian_runs, WORKLOADS.len());
    // The footprint, the leases, the watch fan-out and the mirror, for both.
    let footprint = summary["footprint"].as_array().expect("footprint");
    let figure = |metric: &str, system: &str| -> f64 {
        footprint
            .iter()
            .find(|f| f["metric"] == metric)
            .and_then(|f| f[system].as_f64())
            .unwrap_or_else(|| panic!("no {metric} for {system} in {summary}"))
    };
    for system in ["etcd", "meridian"] {
        assert!(figure("rss_idle_mib_per_server", system) > 0.0);
        assert!(figure("rss_mib_per_server_after_2000_keys", system) > 0.0);
        assert!(figure("disk_mib_after_2000_keys", system) > 0.0);
        assert!(figure("disk_mib_after_compaction", system) > 0.0);
        assert!(figure("restart_to_ready_s_with_2000_keys", system) >= 0.0);
        assert_eq!(figure("leases_200_alive_at_end", system), 200.0);
        assert_eq!(figure("watch_fanout_20_delivered_share", system), 1.0);
        assert!(figure("mirror_500_keys_s_after_last_write", system) >= 0.0);
    }
    // The tables a reader sees.
    let markdown = std::fs::read_to_string(the_file(&results, "md")).expect("report");
    assert!(markdown.contains("| put | 64 | closed |"), "{markdown}");
    assert!(markdown.contains("fsync_floor_ms"), "{markdown}");
    // The disk the figures came from: device, size and filesystem.
    let disk = summary["meta"]["disk"].as_str().expect("disk in meta");
    assert!(
        disk.contains("), "),
        "no filesystem in the disk line: {disk}"
    );
}
