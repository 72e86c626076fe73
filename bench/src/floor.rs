//! The fsync floor: the median cost of one 4 KiB write followed by fsync
//! in a directory, appended to a new file. A log that fsyncs every append
//! cannot acknowledge a write faster than this on the same disk.

use anyhow::Context;
use std::io::Write;
use std::path::Path;
use std::time::Instant;

/// Median milliseconds of `count` (4 KiB write + fsync) in a file under `dir`.
pub fn measure(dir: &Path, count: usize) -> anyhow::Result<f64> {
    let path = dir.join(format!("fsync-floor.{}", std::process::id()));
    let mut file = std::fs::File::create(&path).with_context(|| format!("{}", path.display()))?;
    let block = [0x5au8; 4096];
    let mut took = Vec::with_capacity(count);
    let result = (|| -> anyhow::Result<()> {
        for _ in 0..count {
            let start = Instant::now();
            file.write_all(&block)?;
            file.sync_all()?;
            took.push(start.elapsed().as_secs_f64() * 1e3);
        }
        Ok(())
    })();
    let _ = std::fs::remove_file(&path);
    result?;
    took.sort_by(f64::total_cmp);
    took.get(took.len() / 2)
        .copied()
        .context("--count must be at least 1")
}
