//! What kedit's timing harnesses share: the default model and the requests they time.

use anyhow::Result;
use kedit_editing::{requests::load_cases, EditRequest};
use kedit_models::{fetch, Cpu, LanguageModel};

// The harnesses time what the `kedit` binary runs: the same allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
