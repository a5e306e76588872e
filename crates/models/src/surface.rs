//! The editing surface: where a method may look into, or push on, the forward pass.

use std::collections::HashMap;

use crate::layers::{matmul, reshape};
use burn::tensor::{backend::Backend, Tensor, TensorData};

/// A place in a transformer block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Site {
    /// The output of the MLP's first projection before its nonlinearity (`[.., d_ff]`): Llama's
    /// `gate_proj` (KN's activation).
    MlpGate,
    /// The MLP key: the input of the MLP output projection (`[.., d_ff]`).
    MlpKey,
    /// The output of the MLP (`[.., d_model]`), before it joins the residual stream.
    MlpOut,
    /// The output of the attention block (after its output projection).
    AttnOut,
    /// The residual stream leaving the block.
    Residual,
}

/// What to do to a site at a set of `(batch row, token position)` pairs.
#[derive(Debug, Clone)]
pub enum Action<B: Backend> {
    /// Add `delta` (`[width]`) at every listed position.
    Add(Tensor<B, 1>),
    /// Multiply by `scale` (`[width]`) at every listed position (KN's integrated gradients).
    Scale(Tensor<B, 1>),
    /// Add row `k` of `rows` (`[positions, width]`) at the `k`-th listed position: a different
    /// vector per position (one target per request when many are optimised together).
    AddRows(Tensor<B, 2>),
    /// At `Site::MlpOut` only: add `(key a) b` at the listed positions, `key` being the MLP key
    /// there (`a: [d_ff, r]`, `b: [r, d_model]`). The same as editing the MLP output projection
    /// to `W + a b` for those positions alone: MEND's training gives each edit of a batch its
    /// own low-rank update in one forward pass.
    LowRank(Tensor<B, 2>, Tensor<B, 2>),
}

#[derive(Debug, Clone)]
pub struct Intervention<B: Backend> {
    pub layer: usize,
    pub site: Site,
    pub positions: Vec<(usize, usize)>,
    pub action: Action<B>,
}

/// What a forward pass captures and changes. Captured activations come back whole
/// (`[batch, seq, width]`); the caller picks positions.
#[derive(Debug, Clone)]
pub struct Interventions<B: Backend> {
    pub capture: Vec<(usize, Site)>,
    pub edits: Vec<Intervention<B>>,
    /// Stop after this block: `Forward::hidden` is then that block's residual output (no final
    /// norm). Methods that only need keys or states below the top skip the rest of the stack.
    pub stop_after: Option<usize>,
}

impl<B: Backend> Default for Interventions<B> {
    fn default() -> Self {
        Self {
            capture: Vec::new(),
            edits: Vec::new(),
            stop_after: None,
        }
    }
}

impl<B: Backend> Interventions<B> {
    pub fn none() -> Self {
        Self::default()
    }
    pub fn stop_after(mut self, layer: usize) -> Self {
        self.stop_after = Some(layer);
        self
    }
    pub fn capture(mut self, layer: usize, site: Site) -> Self {
        self.capture.push((layer, site));
        self
    }
    pub fn add(
        mut self,
        layer: usize,
        site: Site,
        positions: Vec<(usize, usize)>,
        delta: Tensor<B, 1>,
    ) -> Self {
        self.edits.push(Intervention {
            layer,
            site,
            positions,
            action: Action::Add(delta),
        });
        self
    }
    pub fn add_rows(
        mut self,
        layer: usize,
        site: Site,
        positions: Vec<(usize, usize)>,
        rows: Tensor<B, 2>,
    ) -> Self {
        assert_eq!(
            rows.dims()[0],
            positions.len(),
            "add_rows: one row per position"
        );
        self.edits.push(Intervention {
            layer,
            site,
            positions,
            action: Action::AddRows(rows),
        });
        self
    }

    /// `W_out + a b` at `positions` of `layer` (see [`Action::LowRank`]).
    pub fn low_rank(
        mut self,
        layer: usize,
        positions: Vec<(usize, usize)>,
        a: Tensor<B, 2>,
        b: Tensor<B, 2>,
    ) -> Self {
        self.edits.push(Intervention {
            layer,
            site: Site::MlpOut,
            positions,
            action: Action::LowRank(a, b),
        });
        self
    }

    pub fn scale(
        mut self,
        layer: usize,
        site: Site,
        positions: Vec<(usize, usize)>,
        scale: Tensor<B, 1>,
    ) -> Self {
        self.edits.push(Intervention {
            layer,
            site,
            positions,
            action: Action::Scale(scale),
        });
        self
    }

    /// The MLP output `m` of `layer` with its low-rank edits (which read the MLP `key`), then
    /// the site's other edits and capture.
    pub(crate) fn visit_mlp_out(
        &self,
        layer: usize,
        mut m: Tensor<B, 3>,
        key: Tensor<B, 3>,
        captured: &mut HashMap<(usize, Site), Tensor<B, 3>>,
    ) -> Tensor<B, 3> {
        for e in self.edits.iter().filter(|e| e.layer == layer) {
            if let Action::LowRank(a, b) = &e.action {
                let [bs, s, _] = m.dims();
                let mask = position_mask::<B>(bs, s, &e.positions, &m.device());
                let low = matmul(key.clone(), a.clone().unsqueeze());
                m = m + matmul(low, b.clone().unsqueeze()) * mask;
            }
        }
        self.visit(layer, Site::MlpOut, m, captured)
    }

    /// Apply the edits registered for `(layer, site)` and record a capture if one was asked for.
    pub(crate) fn visit(
        &self,
        layer: usize,
        site: Site,
        mut x: Tensor<B, 3>,
        captured: &mut HashMap<(usize, Site), Tensor<B, 3>>,
    ) -> Tensor<B, 3> {
        for e in self
            .edits
            .iter()
            .filter(|e| e.layer == layer && e.site == site)
        {
            let [b, s, w] = x.dims();
            if let Action::AddRows(rows) = &e.action {
                let sel = selection::<B>(b, s, &e.positions, &x.device());
                x = x + reshape(matmul(sel, rows.clone()), [b, s, w]);
                continue;
            }
            let mask = position_mask::<B>(b, s, &e.positions, &x.device());
            x = match &e.action {
                Action::Add(delta) => x + mask * delta.clone().unsqueeze_dims::<3>(&[0, 1]),
                Action::Scale(scale) => {
                    let factor = (scale.clone().unsqueeze_dims::<3>(&[0, 1]) - 1.0) * mask + 1.0;
                    x * factor
                }
                Action::AddRows(_) => unreachable!("handled above"),
                Action::LowRank(..) => continue,
            };
        }
        if self.capture.contains(&(layer, site)) {
            captured.insert((layer, site), x.clone());
        }
        x
    }
}

/// `[batch·seq, positions]` with a one where position `k` sits: `sel @ rows` scatters row `k` there.
fn selection<B: Backend>(
    b: usize,
    s: usize,
    positions: &[(usize, usize)],
    device: &B::Device,
) -> Tensor<B, 2> {
    let n = positions.len();
    let mut m = vec![0f32; b * s * n];
    for (k, &(i, p)) in positions.iter().enumerate() {
        assert!(
            i < b && p < s,
            "intervention position ({i}, {p}) outside batch [{b}, {s}]"
        );
        m[(i * s + p) * n + k] = 1.0;
    }
    Tensor::from_data(TensorData::new(m, [b * s, n]), device)
}

/// `[batch, seq, 1]` with ones at the listed positions.
fn position_mask<B: Backend>(
    b: usize,
    s: usize,
    positions: &[(usize, usize)],
    device: &B::Device,
) -> Tensor<B, 3> {
    let mut m = vec![0f32; b * s];
    for &(i, p) in positions {
        assert!(
            i < b && p < s,
            "intervention position ({i}, {p}) outside batch [{b}, {s}]"
        );
        m[i * s + p] = 1.0;
    }
    Tensor::from_data(TensorData::new(m, [b, s, 1]), device)
}

/// The result of a forward pass: the final-norm hidden states (the unembedding is applied only
/// where the caller needs logits) and whatever was captured.
#[derive(Debug, Clone)]
pub struct Forward<B: Backend> {
    pub hidden: Tensor<B, 3>,
    pub captured: HashMap<(usize, Site), Tensor<B, 3>>,
}
