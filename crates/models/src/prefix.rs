//! Re-running only the part of a batch that an intervention can change.
//!
//! ROME's v* optimisation adds a vector at the subject's last token and reads logits after it:
//! with causal attention every earlier token (the context template, the words before and the
//! subject itself) has the same hidden states at every step. [`PrefixCache`] keeps those tokens'
//! keys and values at each layer; `forward_suffix` then runs only each row's suffix (from the
//! subject's last token on) against them, about a third of the tokens of a rewriting batch.

use burn::tensor::{backend::Backend, Bool, Int, Tensor, TensorData};

use crate::layers::{reshape, rotary_tables};
use crate::TensorMap;

/// Keys and values of each row's fixed prefix at every layer from `start`.
#[derive(Clone)]
pub struct PrefixCache<B: Backend> {
    pub start: usize,
    /// Tokens of row i before its suffix (the suffix starts at position `prefix_lens[i]`).
    pub prefix_lens: Vec<usize>,
    /// Suffix length of the batch (rows are right-padded to it).
    pub suffix_len: usize,
    /// Per layer from `start`: keys (after rotary) and values `[b, kv_heads, P, head_dim]`,
    /// P = the longest prefix (at least 1; positions at or past a row's prefix are masked).
    pub kv: Vec<(Tensor<B, 4>, Tensor<B, 4>)>,
}

impl<B: Backend> PrefixCache<B> {
    pub fn map<B2: Backend>(&self, f: &impl TensorMap<B, B2>) -> PrefixCache<B2> {
        PrefixCache {
            start: self.start,
            prefix_lens: self.prefix_lens.clone(),
            suffix_len: self.suffix_len,
            kv: self
                .kv
                .iter()
                .map(|(k, v)| (f.map(k.clone()), f.map(v.clone())))
                .collect(),
        }
    }

    /// Add one token per row after its prefix (`kv[l]`: that layer's keys and values of the
    /// rows' suffix of one token, `[b, kv_heads, 1, head_dim]`): written at each row's column
    /// `prefix_lens[i]`, which then grows by one. Rows of different lengths stay right-padded.
    pub(crate) fn append(&mut self, kv: Vec<(Tensor<B, 4>, Tensor<B, 4>)>) {
        assert_eq!(kv.len(), self.kv.len(), "append: one pair per cached layer");
        let old_w = self.width();
        let new_w = self.prefix_lens.iter().map(|l| l + 1).max().unwrap_or(1);
        let b = self.prefix_lens.len();
        let at: Vec<bool> = self
            .prefix_lens
            .iter()
            .flat_map(|&len| (0..new_w).map(move |t| t == len))
            .collect();
        for (cached, new) in self.kv.iter_mut().zip(kv) {
            let device = new.0.device();
            let mask = Tensor::<B, 4, Bool>::from_data(
                TensorData::new(at.clone(), [b, 1, new_w, 1]),
                &device,
            );
            let put = |old: Tensor<B, 4>, x: Tensor<B, 4>| {
                let [_, heads, _, hd] = x.dims();
                let old = if new_w > old_w {
                    Tensor::cat(vec![old, x.clone()], 2)
                } else {
                    old
                };
                let shape = [b, heads, new_w, hd];
                old.mask_where(mask.clone().expand(shape), x.expand(shape))
            };
            *cached = (put(cached.0.clone(), new.0), put(cached.1.clone(), new.1));
        }
        for len in &mut self.prefix_lens {
            *len += 1;
        }
    }

    pub(crate) fn width(&self) -> usize {
        self.prefix_lens.iter().copied().max().unwrap_or(0).max(1)
    }

    /// Attention mask `[b, groups * S, P + S]` (true = masked): a suffix query sees its row's
    /// prefix and the suffix up to itself.
    pub(crate) fn mask(&self, groups: usize, device: &B::Device) -> Tensor<B, 3, Bool> {
        let (p, s) = (self.width(), self.suffix_len);
        let b = self.prefix_lens.len();
        let mut m = Vec::with_capacity(b * groups * s * (p + s));
        for &len in &self.prefix_lens {
            for _ in 0..groups {
                for j in 0..s {
                    m.extend((0..p).map(|t| t >= len));
                    m.extend((0..s).map(|t| t > j));
                }
            }
        }
        Tensor::from_data(TensorData::new(m, [b, groups * s, p + s]), device)
    }

    /// Rotary tables per row `[b, S, head_dim]` at positions `prefix_len + j`.
    pub(crate) fn rotary(
        &self,
        head_dim: usize,
        rotary_dim: usize,
        theta: f64,
        device: &B::Device,
    ) -> (Tensor<B, 3>, Tensor<B, 3>) {
        let s = self.suffix_len;
        let b = self.prefix_lens.len();
        let max = self.prefix_lens.iter().max().unwrap_or(&0) + s;
        let (cos, sin) = rotary_tables::<B>(max, head_dim, rotary_dim, theta, device);
        let idx: Vec<i64> = self
            .prefix_lens
            .iter()
            .flat_map(|&p| (0..s).map(move |j| (p + j) as i64))
            .collect();
        let idx = Tensor::<B, 1, Int>::from_data(TensorData::new(idx, [b * s]), device);
        (
            reshape(cos.select(0, idx.clone()), [b, s, head_dim]),
            reshape(sin.select(0, idx), [b, s, head_dim]),
        )
    }
}

/// Each row's suffix of `h: [b, seq, d]` (from `prefix_lens[i]`, `suffix_len` long), zero-padded
/// where a row is shorter.
pub fn suffixes<B: Backend>(
    h: &Tensor<B, 3>,
    prefix_lens: &[usize],
    suffix_len: usize,
) -> Tensor<B, 3> {
    let [_, seq, d] = h.dims();
    let rows: Vec<Tensor<B, 3>> = prefix_lens
        .iter()
        .enumerate()
        .map(|(i, &p)| {
            let n = suffix_len.min(seq - p);
            let part = h.clone().narrow(0, i, 1).narrow(1, p, n);
            if n < suffix_len {
                let pad = Tensor::zeros([1, suffix_len - n, d], &h.device());
                Tensor::cat(vec![part, pad], 1)
            } else {
                part
            }
        })
        .collect();
    Tensor::cat(rows, 0)
}
