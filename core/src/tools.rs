//! Finding the external programs Sluice runs or checks for (ffmpeg, prlimit, nisshi, garage).

use std::path::PathBuf;

/// The executable `tool` from `PATH`, else from cargo's bin directory (where `cargo install`
/// puts the local stack's nisshi and garage even when it is not on `PATH`).
pub fn find(tool: &str) -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|dir| dir.join(tool)).find(|p| p.is_file()));
    on_path.or_else(|| {
        let cargo_home = std::env::var_os("CARGO_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")))?;
        Some(cargo_home.join("bin").join(tool)).filter(|p| p.is_file())
    })
}
