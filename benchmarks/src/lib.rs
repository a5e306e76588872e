//! What kedit's timing harnesses share: the default model and the requests they time.

use anyhow::Result;
use kedit_editing::{requests::load_cases, EditRequest};
use kedit_models::{fetch, Cpu, LanguageModel};

// The harnesses time what the `kedit` binary runs: the same allocator, set the same way (each
// `main` calls `kedit_models::allocator::retain_freed_memory` first).
#[global_allocator]
static ALLOCATOR: kedit_models::allocator::MiMalloc = kedit_models::allocator::MiMalloc;

/// SmolLM2 and the first record of each subject of the committed dataset, in file order.
pub fn smollm2_and_requests() -> Result<(LanguageModel<Cpu>, Vec<EditRequest>)> {
    let lm = LanguageModel::<Cpu>::load_gguf(&fetch::smollm2()?, &Default::default())?;
    Ok((lm, requests()?))
}

/// The first record of each subject of the committed dataset, in file order.
pub fn requests() -> Result<Vec<EditRequest>> {
    let cases = load_cases(std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../fixtures/s2rke-wikidata.json"
    )))?;
    let mut seen = std::collections::HashSet::new();
    let reqs = cases
        .into_iter()
        .filter(|c| seen.insert(c.subject_id.clone()))
        .map(|c| c.request)
        .collect();
    Ok(reqs)
}

/// Which product the CPU runs: kedit's GEMM (`kedit_models::kernel::cpu`) or, with
/// `KEDIT_CPU_MATMUL=burn`, Burn's own matmul; each result line says which.
pub fn cpu_matmul() -> &'static str {
    #[cfg(not(feature = "flex"))]
    if !kedit_models::kernel::cpu::off() {
        return "kedit";
    }
    "burn"
}

/// Whether Llama's element-wise chains run as kedit's fused passes (`kedit_models::fused`) or,
/// with `KEDIT_CPU_FUSED=off`, as Burn's primitive ops; each result line says which.
pub fn cpu_fused() -> &'static str {
    #[cfg(not(feature = "flex"))]
    if !kedit_models::fused::off() {
        return "kedit";
    }
    "burn"
}

/// A harness's command line, checked: `Ok(None)` after printing `usage` for `--help` or `-h`;
/// an error naming a flag that is neither in `valued` (followed by its value) nor in `switches`,
/// or a valued flag without its value. Else the arguments, for the harness to read its flags
/// from. (A misspelt flag used to be ignored, so `gpu-edit --help` started a full run.)
pub fn cli_args(usage: &str, valued: &[&str], switches: &[&str]) -> Result<Option<Vec<String>>> {
    let args: Vec<String> = std::env::args().collect();
    if check_args(&args[1..], valued, switches)? {
        println!("{usage}");
        return Ok(None);
    }
    Ok(Some(args))
}

/// `cli_args`'s check: whether help was asked for.
fn check_args(args: &[String], valued: &[&str], switches: &[&str]) -> Result<bool> {
    let mut i = 0;
    while i < args.len() {
        let a = args[i].as_str();
        if a == "--help" || a == "-h" {
            return Ok(true);
        }
        if valued.contains(&a) {
            if args.get(i + 1).is_none_or(|v| v.starts_with("--")) {
                anyhow::bail!("{a}: needs a value");
            }
            i += 2;
        } else if switches.contains(&a) {
            i += 1;
        } else {
            let known: Vec<&str> = valued.iter().chain(switches).copied().collect();
            anyhow::bail!(
                "{a}: not a flag of this harness (its flags: {})",
                known.join(", ")
            );
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::check_args;

    #[test]
    fn harness_flags_are_checked() {
        let a = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let (valued, switches) = (&["--model", "--rome-edits"][..], &["--from-layer"][..]);
        assert!(!check_args(
            &a(&["--model", "smollm2", "--from-layer"]),
            valued,
            switches
        )
        .unwrap());
        assert!(check_args(&a(&["--model", "x", "--help"]), valued, switches).unwrap());
        let err = check_args(&a(&["--rome-edit", "3"]), valued, switches).unwrap_err();
        assert!(
            err.to_string().starts_with("--rome-edit: not a flag"),
            "{err}"
        );
        let err = check_args(&a(&["--model"]), valued, switches).unwrap_err();
        assert_eq!(err.to_string(), "--model: needs a value");
        let err = check_args(&a(&["--model", "--from-layer"]), valued, switches).unwrap_err();
        assert_eq!(err.to_string(), "--model: needs a value");
        // A stray value is an error too, not silently skipped.
        assert!(check_args(&a(&["3"]), valued, switches).is_err());
    }
}
