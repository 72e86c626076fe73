//! Whether the state environment can be trusted when a server starts.
//!
//! `state/` commits without fsync (ADR 0002). After a process crash that is
//! harmless: the kernel's page cache holds every page LMDB wrote, so the
//! environment is exactly as the last commit left it. After the machine
//! itself stopped (power loss, kernel crash) it is not: the kernel writes
//! dirty pages back in any order, so the meta page of one commit may have
//! reached the disk while pages it points to, or pages an earlier commit
//! still used, did not. Such an environment must not be read (ADR 0017).
//!
//! A small marker file beside the environment, `state/boot`, records the
//! kernel's boot id under which the environment was last written, and
//! whether it was synced after its last commit. A server writes "running"
//! when it starts and "synced" after a clean stop; a start that finds
//! "running" under another boot id knows the machine stopped under it.

use std::io::{self, Write};
use std::path::Path;

/// The marker's file name inside the state directory.
pub const MARKER: &str = "boot";

/// Where Linux publishes the id of the running kernel's boot.
const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";

/// What the marker says of the state environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// No marker: a new environment, or one written by a version that kept
    /// none (trusted, as those versions did).
    Unmarked,
    /// Synced after its last commit, or last written under this boot: the
    /// environment is as its last commit left it.
    Intact,
    /// Written without a sync under a boot that has ended (or one that
    /// cannot be told apart from this one): its pages may be torn.
    MayBeTorn {
        /// Why, for the log.
        why: String,
    },
}

/// The running kernel's boot id, if the system publishes one.
pub fn current_boot_id() -> Option<String> {
    std::fs::read_to_string(BOOT_ID)
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// Reads the marker in `state_dir` and judges it against `boot_id`, the
/// running kernel's boot id (None when unknown).
pub fn check(state_dir: &Path, boot_id: Option<&str>) -> io::Result<Verdict> {
    let text = match std::fs::read_to_string(state_dir.join(MARKER)) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Verdict::Unmarked),
        Err(e) => return Err(e),
    };
    let mut words = text.split_whitespace();
    let verdict = match (words.next(), words.next(), words.next()) {
        (Some(_), Some("synced"), None) => Verdict::Intact,
        (Some(written), Some("running"), None) => match boot_id {
            Some(now) if now == written => Verdict::Intact,
            Some(_) => Verdict::MayBeTorn {
                why: format!(
                    "the machine restarted since the state was last written (boot {written}) without a clean stop"
                ),
            },
            None => Verdict::MayBeTorn {
                why: "the state was written without a clean stop, and this system has no boot id to tell a machine restart from a process restart".into(),
            },
        },
        _ => Verdict::MayBeTorn {
            why: format!("the marker {MARKER} is not understood: {:?}", text.trim()),
        },
    };
    Ok(verdict)
}

/// Records that the environment in `state_dir` is about to be written
/// under `boot_id` (a server starts). Durable before it returns.
pub fn mark_running(state_dir: &Path, boot_id: Option<&str>) -> io::Result<()> {
    write_marker(state_dir, &format!("{} running\n", boot_id.unwrap_or("-")))
}

/// Records that the environment in `state_dir` was synced after its last
/// commit (a clean stop, or a tool that synced it). Durable before it returns.
pub fn mark_synced(state_dir: &Path) -> io::Result<()> {
    let boot = current_boot_id();
    write_marker(
        state_dir,
        &format!("{} synced\n", boot.as_deref().unwrap_or("-")),
    )
}

/// Replaces the marker atomically: a new file, synced, renamed over the old,
/// and the directory synced.
fn write_marker(state_dir: &Path, text: &str) -> io::Result<()> {
    std::fs::create_dir_all(state_dir)?;
    let tmp = state_dir.join(format!("{MARKER}.tmp"));
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, state_dir.join(MARKER))?;
    super::sync_dir(state_dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_marker_is_judged_by_its_boot_and_whether_it_was_synced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path();
        assert_eq!(check(state, Some("a")).expect("check"), Verdict::Unmarked);

        mark_running(state, Some("a")).expect("mark");
        // A process restart under the same boot: the page cache kept it all.
        assert_eq!(check(state, Some("a")).expect("check"), Verdict::Intact);
        // The machine restarted under it.
        assert!(matches!(
            check(state, Some("b")).expect("check"),
            Verdict::MayBeTorn { .. }
        ));
        // No boot id to compare with: a restart cannot be ruled out.
        assert!(matches!(
            check(state, None).expect("check"),
            Verdict::MayBeTorn { .. }
        ));

        // Synced at a clean stop: intact whatever boot follows.
        mark_synced(state).expect("mark");
        assert_eq!(check(state, Some("b")).expect("check"), Verdict::Intact);
        assert_eq!(check(state, None).expect("check"), Verdict::Intact);

        // A marker nobody wrote this way is not trusted.
        std::fs::write(state.join(MARKER), "garbage").expect("write");
        assert!(matches!(
            check(state, Some("a")).expect("check"),
            Verdict::MayBeTorn { .. }
        ));
        assert!(!state.join(format!("{MARKER}.tmp")).exists());
    }
}
