//! Section 4: the web bundle a phone downloads, `dist/*.wasm` and `dist/*.js`, raw and
//! gzip-compressed (`gzip -9`, what a static server or CDN would send).

use crate::report::{kib, Report};
use anyhow::{bail, Context, Result};
use std::path::Path;
use std::process::{Command, Stdio};

/// Size of `path` after `gzip -9`, in bytes.
fn gzip_size(path: &Path) -> Result<u64> {
    let out = Command::new("gzip")
        .args(["-9", "-c"])
        .arg(path)
        .stderr(Stdio::inherit())
        .output()
        .context("running gzip")?;
    if !out.status.success() {
        bail!("gzip failed on {}", path.display());
    }
    Ok(out.stdout.len() as u64)
}

/// Runs section 4 on the trunk output directory `dist`.
pub fn run(rep: &mut Report, dist: &Path) -> Result<()> {
    let mut files = Vec::new();
    for e in std::fs::read_dir(dist).with_context(|| format!("reading {}", dist.display()))? {
        let p = e?.path();
        let ext = p.extension().and_then(|x| x.to_str()).unwrap_or_default();
        if ext == "wasm" || ext == "js" {
            files.push(p);
        }
    }
    if files.is_empty() {
        bail!(
            "no .wasm or .js in {} (run `trunk build --release`)",
            dist.display()
        );
    }
    files.sort();
    let (mut raw_total, mut gz_total) = (0u64, 0u64);
    let mut parts = Vec::new();
    let mut rawj = Vec::new();
    for f in &files {
        let raw = std::fs::metadata(f)?.len();
        let gz = gzip_size(f)?;
        raw_total += raw;
        gz_total += gz;
        let name = f.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        parts.push(format!(
            "{name}: {} raw, {} gzip",
            kib(raw as f64 / 1024.0),
            kib(gz as f64 / 1024.0)
        ));
        rawj.push(serde_json::json!({"file": name, "raw_bytes": raw, "gzip_bytes": gz}));
    }
    let gz_kib = gz_total as f64 / 1024.0;
    rep.fig(
        4,
        "Web bundle (wasm + js), gzip -9",
        "≤ 300 KiB gzip",
        format!(
            "{} gzip, {} raw ({})",
            kib(gz_kib),
            kib(raw_total as f64 / 1024.0),
            parts.join("; ")
        ),
        Some(gz_kib <= 300.0),
    );
    rep.raw("bundle", serde_json::json!(rawj));
    Ok(())
}
