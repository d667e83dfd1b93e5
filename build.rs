//! Embeds the git revision that `dialerd version` prints, as
//! `DIALERD_BUILD_REVISION`: `git rev-parse --short=12 HEAD` in a git
//! checkout, else "unknown". An image build (no `.git`) sets
//! `DIALERD_GIT_REVISION` instead, which `main.rs` prefers. Never fails.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=DIALERD_GIT_REVISION");
    let revision = git(&["rev-parse", "--short=12", "HEAD"]);
    if revision.is_some() {
        // Run again when HEAD moves: HEAD itself (a checkout), the branch it
        // points at (a commit) and packed-refs. Only files that exist: a
        // missing one would make cargo run this script on every build.
        let mut watched = vec!["HEAD".to_owned(), "packed-refs".to_owned()];
        if let Some(reference) = git(&["symbolic-ref", "-q", "HEAD"]) {
            watched.push(reference);
        }
        for name in watched {
            if let Some(path) = git(&["rev-parse", "--git-path", &name])
                && std::path::Path::new(&path).exists()
            {
                println!("cargo:rerun-if-changed={path}");
            }
        }
    }
    let revision = revision.unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=DIALERD_BUILD_REVISION={revision}");
}

/// The trimmed output of a successful, non-empty `git` run.
fn git(args: &[&str]) -> Option<String> {
    let output = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(output.stdout).ok()?;
    let text = text.trim();
    (output.status.success() && !text.is_empty()).then(|| text.to_owned())
}
