//! Records the source commit for `meridian_build_info{commit}`: the
//! `MERIDIAN_COMMIT` environment variable if set (release builds from a
//! tarball), else `git rev-parse`, else "unknown".

fn main() {
    println!("cargo:rerun-if-env-changed=MERIDIAN_COMMIT");
    println!("cargo:rerun-if-changed=../.git/HEAD");
    println!("cargo:rerun-if-changed=../.git/refs/heads");
    let commit = std::env::var("MERIDIAN_COMMIT").ok().or_else(|| {
        let out = std::process::Command::new("git")
            .args(["rev-parse", "--short=12", "HEAD"])
            .output()
            .ok()?;
        let hash = String::from_utf8(out.stdout).ok()?.trim().to_string();
        (out.status.success() && !hash.is_empty()).then_some(hash)
    });
    println!(
        "cargo:rustc-env=MERIDIAN_COMMIT={}",
        commit.unwrap_or_else(|| "unknown".into())
    );
}
