//! Adam written out on plain tensors (kedit's weights are not Burn `Module`s, see
//! ARCHITECTURE.md), with torch's rule: L2 `weight_decay` added to the gradient, bias
//! correction by the shared step count. FT and MEND's meta-training both step with it; its state
//! is plain tensors so MEND's checkpoints can save and restore it exactly.

use burn::tensor::{backend::Backend, Tensor};

pub struct Adam<B: Backend> {
    /// First and second moments, one per parameter.
    pub m: Vec<Tensor<B, 2>>,
    pub v: Vec<Tensor<B, 2>>,
    /// Steps taken (torch's `step`, shared by all parameters).
    pub t: i32,
}

const BETA1: f64 = 0.9;
const BETA2: f64 = 0.999;
const EPS: f64 = 1e-8;

impl<B: Backend> Adam<B> {
    pub fn new(params: &[Tensor<B, 2>]) -> Self {
        let m: Vec<Tensor<B, 2>> = params.iter().map(Tensor::zeros_like).collect();
        Self {
            v: m.clone(),
            m,
            t: 0,
        }
    }

    /// Start a step; then [`Adam::update`] each parameter.
    pub fn tick(&mut self) {
        self.t += 1;
    }

    /// Parameter `i` after one step along gradient `g`.
    pub fn update(
        &mut self,
        i: usize,
        w: Tensor<B, 2>,
        mut g: Tensor<B, 2>,
        lr: f64,
        weight_decay: f64,
    ) -> Tensor<B, 2> {
        if weight_decay != 0.0 {
            g = g + w.clone() * weight_decay;
        }
        self.m[i] = self.m[i].clone() * BETA1 + g.clone() * (1.0 - BETA1);
        self.v[i] = self.v[i].clone() * BETA2 + g.square() * (1.0 - BETA2);
        let mh = self.m[i].clone() / (1.0 - BETA1.powi(self.t));
        let vh = self.v[i].clone() / (1.0 - BETA2.powi(self.t));
        w - mh / (vh.sqrt() + EPS) * lr
    }
}
