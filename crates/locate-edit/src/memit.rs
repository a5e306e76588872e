//! MEMIT (Meng et al. 2023), methods.md §3.3: many facts at once, spread over several MLP layers.
//! A target z per request at the last edit layer; then, layer by layer on the partly edited
//! model, the residual between z and what the model now gives is divided among the layers left
//! and written with one f64 least-squares update per layer ([`crate::solve`]). PMET is the same
//! procedure with another target and spread ([`crate::pmet`]), MEMIT-Merge with targets shared
//! by subject ([`crate::memit_merge`]), AlphaEdit and EMMET with other updates
//! ([`crate::alphaedit`], [`crate::emmet`]; EMMET-Merge both, [`crate::emmet_merge`]), so all run
//! through [`Memit`].

use anyhow::{bail, Result};
use burn::tensor::backend::Backend;
use kedit_editing::{EditRequest, Editor, LayerKeys, Matrix, Patch, PatchEntry};
use kedit_models::{LanguageModel, Site};

use crate::alphaedit::NullSpace;
use crate::hparams::MemitHparams;
use crate::kv::{at_lookup, norm, request_keys, template_prompts, Average, Prompt};
use crate::solve;
use crate::stats::SecondMoment;
use crate::templates::TemplateCache;
use crate::z::{self, Job, ZSpec};

/// Requests whose targets are optimised in one batch (bounds memory: each brings ~7 rows).
const Z_CHUNK: usize = 16;

/// What distinguishes MEMIT from PMET.
#[derive(Debug)]
pub struct Flavor {
    pub name: &'static str,
    /// The sites optimised together at the last edit layer.
    pub z_sites: &'static [Site],
    /// Which of them is the target the MLP updates must reach.
    pub target: usize,
    /// PMET's adaptive NLL weight and KL stop.
    pub adaptive: bool,
    /// The divisor of the residual when `layers_left` layers remain (this one included).
    pub spread: fn(layers_left: usize) -> f64,
    /// One target offset for all of a batch's requests about one subject (MEMIT-Merge,
    /// EMMET-Merge).
    pub merge_subjects: bool,
    /// How each layer's update is solved from its keys and residuals.
    pub update: Update,
}

/// The layer update of a [`Flavor`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Update {
    /// MEMIT's least squares, `(λC + K Kᵀ)⁻¹ K Rᵀ` ([`crate::solve::update`]).
    LeastSquares,
    /// AlphaEdit's: in the null space of C, sparing earlier edits' keys ([`crate::alphaedit`]).
    NullSpace,
    /// EMMET's: each key's output moved by its residual, an equality constraint
    /// ([`crate::solve::equality_update`], [`crate::emmet`]).
    Equality,
}

/// MEMIT: z on the residual stream, residual divided evenly over the layers left.
pub const MEMIT: Flavor = Flavor {
    name: "memit",
    z_sites: &[Site::Residual],
    target: 0,
    adaptive: false,
    spread: |left| left as f64,
    merge_subjects: false,
    update: Update::LeastSquares,
};

pub struct Memit {
    pub hparams: MemitHparams,
    pub flavor: &'static Flavor,
    templates: TemplateCache,
    /// `C` of every edit layer, in `hparams.layers` order (not kept by AlphaEdit).
    mom2: Vec<SecondMoment>,
    /// AlphaEdit: each edit layer's null space of C and the keys written there so far.
    null_spaces: Vec<NullSpace>,
    /// Seconds the last `apply` spent on the targets and on the layer updates (for benchmarks).
    pub last_timing: Option<(f64, f64)>,
}

impl Memit {
    pub fn new(hparams: MemitHparams) -> Self {
        Self::with_flavor(hparams, &MEMIT)
    }

    pub fn with_flavor(hparams: MemitHparams, flavor: &'static Flavor) -> Self {
        Self {
            hparams,
            flavor,
            templates: TemplateCache::default(),
            mom2: Vec::new(),
            null_spaces: Vec::new(),
            last_timing: None,
        }
    }

    /// Supply `C` for every edit layer (`stats::load_or_compute_layers`; `kedit edit` loads them).
    pub fn with_second_moments(mut self, mom2: Vec<SecondMoment>) -> Self {
        self.mom2 = mom2;
        self
    }

    /// Supply the null spaces of every edit layer (`alphaedit::alphaedit` does).
    pub fn with_null_spaces(mut self, spaces: Vec<NullSpace>) -> Self {
        self.null_spaces = spaces;
        self
    }

    fn check<B: Backend>(&self, lm: &LanguageModel<B>) -> Result<()> {
        let h = &self.hparams;
        let n = lm.model.config.num_layers;
        if let Some(l) = h.layers.iter().find(|&&l| l >= n) {
            bail!("hparams field `layers`: layer {l} but the model has {n}");
        }
        if self.flavor.update == Update::Equality {
            crate::emmet::check(h)?;
        }
        // AlphaEdit's update reads only the null spaces, which it keeps instead of C.
        let (have, what, hint): (Vec<usize>, _, _) = if self.flavor.update == Update::NullSpace {
            (
                self.null_spaces.iter().map(|s| s.layer).collect(),
                "null space of C",
                "alphaedit::alphaedit",
            )
        } else {
            (
                self.mom2.iter().map(|m| m.layer).collect(),
                "second moment",
                "Memit::with_second_moments; `kedit edit` loads them",
            )
        };
        if have != h.layers {
            bail!(
                "{} needs the {what} of layers {:?}, has {have:?} ({hint})",
                self.flavor.name,
                h.layers
            );
        }
        Ok(())
    }

    fn prompts<B: Backend>(
        &mut self,
        lm: &LanguageModel<B>,
        requests: &[EditRequest],
    ) -> Result<Vec<Vec<Vec<Prompt>>>> {
        let h = &self.hparams;
        let groups = self
            .templates
            .get(lm, &h.context_template_length_params, h.seed)?;
        requests
            .iter()
            .map(|r| template_prompts(lm, &groups, r, h.fact_token()))
            .collect()
    }

    /// The key each edit layer would write `request` under, on the model as it is.
    pub fn layer_keys<B: Backend>(
        &mut self,
        lm: &LanguageModel<B>,
        request: &EditRequest,
    ) -> Result<LayerKeys> {
        let prompts = self.prompts(lm, std::slice::from_ref(request))?;
        Ok(self
            .hparams
            .layers
            .iter()
            .map(|&l| {
                (
                    l,
                    request_keys(lm, l, &prompts, Average::ByGroup).0.remove(0),
                )
            })
            .collect())
    }

    /// The targets at the last edit layer, one per request, on the model as it is.
    fn targets<B: Backend>(
        &self,
        lm: &LanguageModel<B>,
        requests: &[EditRequest],
        prompts: &[Vec<Vec<Prompt>>],
    ) -> Result<Vec<Vec<f32>>> {
        let h = &self.hparams;
        let spec = ZSpec {
            layer: *h.layers.last().expect("checked"),
            sites: self.flavor.z_sites.to_vec(),
            steps: h.v_num_grad_steps,
            lr: h.v_lr,
            weight_decay: h.v_weight_decay,
            clamp_norm_factor: h.clamp_norm_factor,
            kl_factor: h.kl_factor,
            fact_token: h.fact_token(),
            adaptive_nll: self
                .flavor
                .adaptive
                .then(|| h.nll_loss_factor.unwrap_or(1.0)),
        };
        let bar = indicatif::ProgressBar::new(requests.len() as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template(&format!(
                "{} targets {{bar:40}} {{pos}}/{{len}} eta {{eta}}",
                self.flavor.name
            ))
            .expect("template"),
        );
        // δ number of each request: its own, or (MEMIT-Merge) its subject's, numbered in order
        // of first appearance.
        let mut subjects: Vec<&str> = Vec::new();
        let delta_of: Vec<usize> = requests
            .iter()
            .enumerate()
            .map(|(i, r)| {
                if !self.flavor.merge_subjects {
                    return i;
                }
                match subjects.iter().position(|s| *s == r.subject) {
                    Some(g) => g,
                    None => {
                        subjects.push(&r.subject);
                        subjects.len() - 1
                    }
                }
            })
            .collect();
        // Requests are optimised together in chunks of about `Z_CHUNK`, a shared δ never split
        // between two: each δ keeps its own stopping step, the forward and backward passes are
        // shared (much faster per request on a CPU).
        let mut order: Vec<usize> = (0..requests.len()).collect();
        order.sort_by_key(|&i| delta_of[i]);
        let mut chunks: Vec<Vec<usize>> = Vec::new();
        for &i in &order {
            match chunks.last_mut() {
                Some(c)
                    if c.len() < Z_CHUNK || c.last().map(|&j| delta_of[j]) == Some(delta_of[i]) =>
                {
                    c.push(i)
                }
                _ => chunks.push(vec![i]),
            }
        }
        let mut out = vec![Vec::new(); requests.len()];
        for chunk in chunks {
            let jobs: Vec<Job<'_>> = chunk
                .iter()
                .map(|&i| Job {
                    req: &requests[i],
                    prompts: prompts[i].iter().flatten().collect(),
                })
                .collect();
            // The δ numbers are dense and the chunks cut their sorted list, so a chunk holds a
            // contiguous range of them: from 0 once its first is subtracted.
            let first = delta_of[chunk[0]];
            let shared: Vec<usize> = chunk.iter().map(|&i| delta_of[i] - first).collect();
            for (z, &i) in z::optimize_shared(lm, &jobs, &shared, &spec)?
                .into_iter()
                .zip(&chunk)
            {
                out[i] = z.target(self.flavor.target);
            }
            bar.inc(chunk.len() as u64);
        }
        bar.finish_and_clear();
        Ok(out)
    }

    /// Edit every request at once; `lm` is left edited, layer by layer, through the entries.
    fn edit<B: Backend>(
        &mut self,
        lm: &mut LanguageModel<B>,
        requests: &[EditRequest],
    ) -> Result<Vec<PatchEntry>> {
        self.check(lm)?;
        if requests.is_empty() {
            return Ok(Vec::new());
        }
        let started = std::time::Instant::now();
        let prompts = self.prompts(lm, requests)?;
        let zs = self.targets(lm, requests, &prompts)?;
        let targets_s = started.elapsed().as_secs_f64();
        let h = self.hparams.clone();
        let z_layer = *h.layers.last().expect("checked");
        let z_site = self.flavor.z_sites[self.flavor.target];
        let bare: Vec<&Prompt> = prompts.iter().map(|p| &p[0][0]).collect();
        let z0 = at_lookup(lm, z_layer, z_site, &bare);
        let mut entries = Vec::with_capacity(h.layers.len());
        for (i, &layer) in h.layers.iter().enumerate() {
            let (keys, _) = request_keys(lm, layer, &prompts, Average::ByGroup);
            // Before the first layer is written the model is the one z₀ was read on.
            let cur = if i == 0 {
                z0.clone()
            } else {
                at_lookup(lm, z_layer, z_site, &bare)
            };
            tracing::debug!(
                layer,
                left = residual_left(&zs, &cur, &z0),
                "{}: share of z - z₀ still missing",
                self.flavor.name
            );
            let spread = (self.flavor.spread)(h.layers.len() - i);
            let resid: Vec<Vec<f64>> = zs
                .iter()
                .zip(&cur)
                .map(|(z, c)| {
                    z.iter()
                        .zip(c)
                        .map(|(a, b)| (*a as f64 - *b as f64) / spread)
                        .collect()
                })
                .collect();
            let delta = match self.flavor.update {
                Update::NullSpace => {
                    let l2 = h.l2.expect("checked by alphaedit::alphaedit");
                    self.null_spaces[i].update(l2, &keys, &resid)?
                }
                Update::LeastSquares => {
                    solve::update(&self.mom2[i], h.mom2_update_weight, &keys, &resid)?
                }
                Update::Equality => solve::equality_update(
                    &self.mom2[i],
                    h.mom2_update_weight,
                    h.update_norm_lambda.unwrap_or(0.0),
                    h.emmet_lambda.expect("checked by emmet::emmet"),
                    &keys,
                    &resid,
                )?,
            };
            let entry = PatchEntry {
                layer,
                matrix: Matrix::MlpOut,
                shape: [keys[0].len(), zs[0].len()],
                delta,
            };
            tracing::debug!(layer, "{} layer written", self.flavor.name);
            // The next layer's keys and residual are read on the model edited so far.
            Patch {
                entries: vec![entry.clone()],
                metadata: Default::default(),
            }
            .apply(&mut lm.model)?;
            entries.push(entry);
        }
        // One more forward pass, only for the log.
        if tracing::enabled!(tracing::Level::DEBUG) {
            let cur = at_lookup(lm, z_layer, z_site, &bare);
            tracing::debug!(
                left = residual_left(&zs, &cur, &z0),
                "{}: share of z - z₀ missing after the last layer",
                self.flavor.name
            );
        }
        if self.flavor.update == Update::NullSpace {
            self.preserve_keys(lm, &prompts)?;
        }
        self.last_timing = Some((targets_s, started.elapsed().as_secs_f64() - targets_s));
        Ok(entries)
    }

    /// AlphaEdit: add the requests' keys, read on the model as it is now (after their edit, as
    /// AlphaEdit reads them), to each layer's preserved keys.
    fn preserve_keys<B: Backend>(
        &mut self,
        lm: &LanguageModel<B>,
        prompts: &[Vec<Vec<Prompt>>],
    ) -> Result<()> {
        for (i, &layer) in self.hparams.layers.iter().enumerate() {
            let (keys, _) = request_keys(lm, layer, prompts, Average::ByGroup);
            self.null_spaces[i].preserve(&keys)?;
        }
        Ok(())
    }
}

/// Mean over requests of ‖z − current‖ / ‖z − z₀‖: how much of the wanted change is not yet made.
fn residual_left(zs: &[Vec<f32>], cur: &[Vec<f32>], z0: &[Vec<f32>]) -> f32 {
    let dist =
        |a: &[f32], b: &[f32]| norm(&a.iter().zip(b).map(|(x, y)| x - y).collect::<Vec<_>>());
    zs.iter()
        .zip(cur)
        .zip(z0)
        .map(|((z, c), z0)| dist(z, c) / dist(z, z0).max(1e-12))
        .sum::<f32>()
        / zs.len() as f32
}

impl<B: Backend> Editor<B> for Memit {
    fn name(&self) -> &str {
        self.flavor.name
    }

    fn prepare(&mut self, lm: &LanguageModel<B>) -> Result<()> {
        let h = &self.hparams;
        self.templates
            .get(lm, &h.context_template_length_params, h.seed)
            .map(drop)
    }

    /// All requests in one batch update; sequential editing is repeated `apply` (statistics and
    /// templates are kept).
    fn apply(&mut self, lm: &mut LanguageModel<B>, requests: &[EditRequest]) -> Result<Patch> {
        let mut patch = Patch::described(self.flavor.name, &self.hparams, requests, lm)?;
        patch.entries = self.edit(lm, requests)?;
        Ok(patch)
    }

    fn layer_keys(&mut self, lm: &LanguageModel<B>, request: &EditRequest) -> Result<LayerKeys> {
        Memit::layer_keys(self, lm, request)
    }

    fn reset(&mut self) {
        self.null_spaces.iter_mut().for_each(NullSpace::forget);
    }

    fn replay(&mut self, lm: &LanguageModel<B>, requests: &[EditRequest]) -> Result<()> {
        if self.flavor.update == Update::NullSpace && !requests.is_empty() {
            let prompts = self.prompts(lm, requests)?;
            self.preserve_keys(lm, &prompts)?;
        }
        Ok(())
    }
}
