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
