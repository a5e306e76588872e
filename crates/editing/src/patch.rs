//! Patches: named weight deltas. `W' = W + Δ` is computed once, in f32, the same way when a patch
//! is made, applied, or loaded and applied, so a reloaded patch reproduces the edited model bit for
//! bit; revert puts the saved original tensor back, which is exact where `W' - Δ` would not be.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use anyhow::{bail, Context, Result};
use burn::tensor::{backend::Backend, Tensor, TensorData};
use kedit_models::CausalLm;
use serde::{Deserialize, Serialize};

/// Which matrix of a block a delta rewrites.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Matrix {
    /// The MLP output projection (`down_proj`, `c_proj`, `fc_out`).
    MlpOut,
    /// The attention output projection.
    AttnOut,
}

/// One delta, `[d_in, d_out]` (keys to values), row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct PatchEntry {
    pub layer: usize,
    pub matrix: Matrix,
    pub shape: [usize; 2],
    pub delta: Vec<f32>,
}

impl PatchEntry {
    /// The tensor name in the patch file.
    pub fn name(&self) -> String {
        let m = match self.matrix {
            Matrix::MlpOut => "mlp_out",
            Matrix::AttnOut => "attn_out",
        };
        format!("layers.{}.{m}", self.layer)
    }
}

/// A set of deltas with what made them.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Patch {
    pub entries: Vec<PatchEntry>,
    /// Free-form metadata: method, hyperparameters (JSON), requests (JSON), model source.
    /// Ordered, so that a saved patch's bytes depend on its contents only.
    pub metadata: BTreeMap<String, String>,
}

/// The original tensors a patch replaced, for an exact revert.
pub struct Applied<B: Backend> {
    originals: Vec<(usize, Matrix, Tensor<B, 2>)>,
}

fn get<B: Backend>(m: &impl CausalLm<B>, layer: usize, matrix: Matrix) -> Tensor<B, 2> {
    match matrix {
        Matrix::MlpOut => m.mlp_out(layer),
        Matrix::AttnOut => m.attn_out(layer),
    }
}

fn set<B: Backend>(m: &mut impl CausalLm<B>, layer: usize, matrix: Matrix, w: Tensor<B, 2>) {
    match matrix {
        Matrix::MlpOut => m.set_mlp_out(layer, w),
        Matrix::AttnOut => m.set_attn_out(layer, w),
    }
}

impl Patch {
    /// `‖self − reference‖ / ‖reference‖` (Frobenius, in f64, over all entries): how far a patch
    /// made on another backend is from the reference one. Infinite when the two patches do not
    /// edit the same matrices with the same shapes.
    pub fn relative_difference(&self, reference: &Patch) -> f64 {
        if self.entries.len() != reference.entries.len() {
            return f64::INFINITY;
        }
        let (mut diff, mut norm) = (0f64, 0f64);
        for (a, b) in self.entries.iter().zip(&reference.entries) {
            if (a.layer, a.matrix, a.shape) != (b.layer, b.matrix, b.shape) {
                return f64::INFINITY;
            }
            for (x, y) in a.delta.iter().zip(&b.delta) {
                diff += (*x as f64 - *y as f64).powi(2);
                norm += (*y as f64).powi(2);
            }
        }
        (diff / norm).sqrt()
    }

    /// An empty patch recording what makes it: method, hyperparameters, requests, model.
    pub fn described<B: Backend>(
        method: &str,
        hparams: &impl Serialize,
        requests: &[crate::EditRequest],
        lm: &kedit_models::LanguageModel<B>,
    ) -> Result<Self> {
        let metadata = BTreeMap::from([
            ("method".to_owned(), method.to_owned()),
            ("hparams".to_owned(), serde_json::to_string(hparams)?),
            ("requests".to_owned(), serde_json::to_string(requests)?),
            ("model".to_owned(), lm.source.display().to_string()),
        ]);
        Ok(Self {
            entries: Vec::new(),
            metadata,
        })
    }

    /// Append a patch made on the model this one edited (sequential editing): applied to the
    /// unedited model, the result applies both in order, `(W + Δ₁) + Δ₂`, the same f32 sums the
    /// sequential edits made. The requests are concatenated; the other metadata are this patch's.
    pub fn extend(&mut self, later: Patch) {
        self.entries.extend(later.entries);
        let requests = |p: &BTreeMap<String, String>| -> Option<Vec<serde_json::Value>> {
            serde_json::from_str(p.get("requests")?).ok()
        };
        if let (Some(mut a), Some(b)) = (requests(&self.metadata), requests(&later.metadata)) {
            a.extend(b);
            self.metadata.insert(
                "requests".to_owned(),
                serde_json::Value::Array(a).to_string(),
            );
        }
    }

    /// Apply every delta (`W += Δ`), returning what is needed to revert exactly.
    pub fn apply<B: Backend>(&self, model: &mut impl CausalLm<B>) -> Result<Applied<B>> {
        let mut originals = Vec::new();
        for e in &self.entries {
            if e.layer >= model.config().num_layers {
                bail!(
                    "patch entry {}: layer {} but the model has {}",
                    e.name(),
                    e.layer,
                    model.config().num_layers
                );
            }
            let w = get(model, e.layer, e.matrix);
            if w.dims() != e.shape {
                bail!(
                    "patch entry {}: shape {:?} but the model's matrix is {:?}",
                    e.name(),
                    e.shape,
                    w.dims()
                );
            }
            let d =
                Tensor::<B, 2>::from_data(TensorData::new(e.delta.clone(), e.shape), &w.device());
            set(model, e.layer, e.matrix, w.clone() + d);
            originals.push((e.layer, e.matrix, w));
        }
        Ok(Applied { originals })
    }

    /// Apply every delta to a checkpoint's host tensors (Hugging Face names and layout), for
    /// `kedit export`. Each weight becomes the f32 sum `W + Δ` of the same two numbers
    /// [`Patch::apply`] adds, so the exported model is the patched one bit for bit.
    pub fn apply_to_checkpoint(&self, ckpt: &mut kedit_models::export::Checkpoint) -> Result<()> {
        let family = ckpt.config.family;
        let layers = ckpt.config.num_layers;
        for e in &self.entries {
            if e.layer >= layers {
                bail!(
                    "patch entry {}: layer {} but the model has {layers}",
                    e.name(),
                    e.layer
                );
            }
            let module = match e.matrix {
                Matrix::MlpOut => family.mlp_out_module(),
                Matrix::AttnOut => family.attn_out_module(),
            }
            .replace("{}", &e.layer.to_string());
            let (shape, w) = ckpt.weight_mut(&module).with_context(|| {
                format!(
                    "patch entry {}: the model has no tensor {module}.weight",
                    e.name()
                )
            })?;
            let [d_in, d_out] = e.shape;
            let in_out = kedit_models::export::stores_in_out(family);
            let want = if in_out { [d_in, d_out] } else { [d_out, d_in] };
            if shape[..] != want {
                bail!(
                    "patch entry {}: shape {:?} but {module}.weight is {shape:?}",
                    e.name(),
                    e.shape
                );
            }
            for i in 0..d_in {
                for o in 0..d_out {
                    let at = if in_out { i * d_out + o } else { o * d_in + i };
                    w[at] += e.delta[i * d_out + o];
                }
            }
        }
        Ok(())
    }

    /// Each entry's tensor name in the file: [`PatchEntry::name`], with `.k` added to the k-th
    /// repeat of a matrix (a sequential edit's patch rewrites one matrix once per edit, and a
    /// safetensors file holds a name once).
    fn stored_names(&self) -> Vec<String> {
        let mut seen: HashMap<String, usize> = HashMap::new();
        self.entries
            .iter()
            .map(|e| {
                let name = e.name();
                let k = seen.entry(name.clone()).or_insert(0);
                *k += 1;
                if *k == 1 {
                    name
                } else {
                    format!("{name}.{}", *k - 1)
                }
            })
            .collect()
    }

    /// Save as safetensors: one f32 tensor per entry, metadata as string pairs.
    pub fn save(&self, path: &Path) -> Result<()> {
        let names = self.stored_names();
        let bytes: Vec<(String, Vec<u8>, [usize; 2])> = self
            .entries
            .iter()
            .zip(&names)
            .map(|(e, name)| {
                (
                    name.clone(),
                    e.delta.iter().flat_map(|v| v.to_le_bytes()).collect(),
                    e.shape,
                )
            })
            .collect();
        let views: Vec<(String, safetensors::tensor::TensorView)> = bytes
            .iter()
            .map(|(n, b, s)| {
                Ok((
                    n.clone(),
                    safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.to_vec(), b)?,
                ))
            })
            .collect::<Result<_>>()?;
        // One metadata key: safetensors keeps metadata in a HashMap, whose order (and so the
        // file's bytes) would change from run to run with several keys.
        let mut meta = self.metadata.clone();
        meta.insert("format".into(), "kedit-patch-1".into());
        // safetensors stores tensors sorted; the application order is kept here.
        meta.insert("entries".into(), names.join(","));
        let header = HashMap::from([("kedit".to_owned(), serde_json::to_string(&meta)?)]);
        let out = safetensors::serialize(views, Some(header))?;
        let tmp = path.with_extension("partial");
        std::fs::write(&tmp, out)
            .with_context(|| format!("{}: cannot write patch", tmp.display()))?;
        std::fs::rename(&tmp, path)
            .with_context(|| format!("{}: cannot write patch", path.display()))?;
        Ok(())
    }

    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path)
            .with_context(|| format!("{}: cannot read patch", path.display()))?;
        Self::from_bytes(&bytes, path)
    }

    /// A patch from a file's bytes already read (`path` names it in messages).
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Self> {
        let (_, meta) = safetensors::SafeTensors::read_metadata(bytes)
            .with_context(|| format!("{}: not a safetensors file", path.display()))?;
        let st = safetensors::SafeTensors::deserialize(bytes)?;
        let packed = meta
            .metadata()
            .as_ref()
            .and_then(|m| m.get("kedit"))
            .with_context(|| {
                format!(
                    "{}: not a kedit patch (no `kedit` metadata)",
                    path.display()
                )
            })?;
        let mut metadata: BTreeMap<String, String> =
            serde_json::from_str(packed).with_context(|| {
                format!("{}: metadata `kedit` is not a JSON object", path.display())
            })?;
        if metadata.remove("format").as_deref() != Some("kedit-patch-1") {
            bail!(
                "{}: not a kedit patch (metadata `format` is not kedit-patch-1)",
                path.display()
            );
        }
        let mut entries = Vec::new();
        let order = metadata.remove("entries").unwrap_or_default();
        let names: Vec<&str> = order.split(',').filter(|s| !s.is_empty()).collect();
        if names.len() != st.len() {
            bail!(
                "{}: metadata `entries` lists {} tensors, the file holds {}",
                path.display(),
                names.len(),
                st.len()
            );
        }
        for name in names {
            let t = st
                .tensor(name)
                .with_context(|| format!("{}: tensor {name}", path.display()))?;
            let parts: Vec<&str> = name.split('.').collect();
            let (layer, matrix) = match parts.as_slice() {
                ["layers", l, "mlp_out"] | ["layers", l, "mlp_out", _] => {
                    (l.parse()?, Matrix::MlpOut)
                }
                ["layers", l, "attn_out"] | ["layers", l, "attn_out", _] => {
                    (l.parse()?, Matrix::AttnOut)
                }
                _ => bail!("{}: unknown tensor {name}", path.display()),
            };
            if t.dtype() != safetensors::Dtype::F32 || t.shape().len() != 2 {
                bail!("{}: tensor {name} must be 2-D f32", path.display());
            }
            let delta = t
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect();
            entries.push(PatchEntry {
                layer,
                matrix,
                shape: [t.shape()[0], t.shape()[1]],
                delta,
            });
        }
        Ok(Self { entries, metadata })
    }
}

impl<B: Backend> Applied<B> {
    /// Put the original tensors back (in reverse order, so overlapping entries unwind correctly).
    pub fn revert(self, model: &mut impl CausalLm<B>) {
        for (layer, matrix, w) in self.originals.into_iter().rev() {
            set(model, layer, matrix, w);
        }
    }
}

/// Every editable matrix of a model, kept to restore it exactly (tensors are shared, not copied).
#[derive(Clone)]
pub struct Snapshot<B: Backend> {
    matrices: Vec<(Tensor<B, 2>, Tensor<B, 2>)>,
}

impl<B: Backend> Snapshot<B> {
    pub fn take(model: &impl CausalLm<B>) -> Self {
        let matrices = (0..model.config().num_layers)
            .map(|l| (model.mlp_out(l), model.attn_out(l)))
            .collect();
        Self { matrices }
    }

    /// ‖W − W₀‖_F over every editable matrix, summed in f64: how far edits since the snapshot
    /// moved the model (a norm of the update, whatever method made it).
    pub fn distance(&self, model: &impl CausalLm<B>) -> f64 {
        let mut sum = 0f64;
        for (l, (mlp, attn)) in self.matrices.iter().enumerate() {
            for (now, was) in [(model.mlp_out(l), mlp), (model.attn_out(l), attn)] {
                let d = (now - was.clone()).into_data();
                sum += d.iter::<f64>().map(|x| x * x).sum::<f64>();
            }
        }
        sum.sqrt()
    }

    pub fn restore(self, model: &mut impl CausalLm<B>) {
        for (l, (mlp, attn)) in self.matrices.into_iter().enumerate() {
            model.set_mlp_out(l, mlp);
            model.set_attn_out(l, attn);
        }
    }
}
