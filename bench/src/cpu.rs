//! CPU time of the servers under test: user plus system time of every
//! thread of each process, from `/proc/PID/stat`. Divided by the operations
//! of a run it gives the servers' CPU per operation, the figure that bounds
//! throughput when both systems share the same cores.

use anyhow::Context;

/// Clock ticks per second, the unit of `/proc/PID/stat`'s times.
fn ticks_per_second() -> f64 {
    // SAFETY: sysconf only reads a system constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

/// Seconds of CPU (user + system, all threads) that process `pid` has used.
pub fn process_seconds(pid: u32) -> anyhow::Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
    parse_stat(&stat)
        .map(|ticks| ticks as f64 / ticks_per_second())
        .with_context(|| format!("parse {path}"))
}

/// Seconds of CPU all of `pids` have used.
pub fn total_seconds(pids: &[u32]) -> anyhow::Result<f64> {
    pids.iter().map(|&pid| process_seconds(pid)).sum()
}

/// utime + stime, in ticks, from the text of `/proc/PID/stat`. The command
/// name (field 2) is in parentheses and may hold spaces, so fields are
/// counted from the last ')'.
fn parse_stat(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // After the name: state is field 3, utime field 14, stime field 15.
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_and_system_ticks_are_read_past_a_name_with_spaces() {
        let stat = "4242 (tokio rt) worker) S 1 4242 4242 0 -1 4194560 100 0 0 0 \
                    1234 567 0 0 20 0 3 0 100 1000 200";
        assert_eq!(parse_stat(stat), Some(1234 + 567));
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_stat("1 (x) S 1"), None);
    }

    #[test]
    fn the_count_grows_while_this_process_computes() {
        let me = std::process::id();
        let before = process_seconds(me).expect("own stat");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut x = 0u64;
        let mut after = before;
        while after <= before && std::time::Instant::now() < deadline {
            for i in 0..1_000_000u64 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
            }
            after = process_seconds(me).expect("own stat");
        }
        assert!(after > before, "CPU time did not grow: {before} -> {after}");
        assert!(total_seconds(&[me, me]).expect("twice") >= 2.0 * before);
        assert!(process_seconds(u32::MAX).is_err(), "no such process");
    }
}
