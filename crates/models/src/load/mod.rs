//! Weight sources: named f32 tensors in Hugging Face naming and layout (`[out, in]` for linears).

pub mod gguf;
pub mod safetensors;

use anyhow::Result;

/// A named host tensor: row-major shape and data.
pub type HostTensor = (Vec<usize>, Vec<f32>);

/// Anything that can hand out a named weight as f32.
pub trait WeightSource {
    /// The weight `name` (Hugging Face name and layout), or an error naming the file and tensor.
    fn tensor(&self, name: &str) -> Result<HostTensor>;
    /// The weight `name` where the loader knows the shape it needs (generated weights draw it
    /// in that shape; stored ones are read and then checked against it).
    fn tensor_shaped(&self, name: &str, _want: &[usize]) -> Result<HostTensor> {
        self.tensor(name)
    }
    fn has(&self, name: &str) -> bool;
    /// Where `name` lives, for messages (the file holding it).
    fn location(&self, name: &str) -> String;
}
