//! Hugging Face safetensors checkpoints, single-file or sharded, f32/f16/bf16 converted to f32.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use half::{bf16, f16};
use safetensors::{Dtype, SafeTensors};

use super::{HostTensor, WeightSource};

/// Every `*.safetensors` file of a checkpoint folder, memory-mapped.
pub struct SafetensorsFolder {
    shards: Vec<(PathBuf, memmap2::Mmap)>,
    index: HashMap<String, usize>,
}

impl SafetensorsFolder {
    pub fn open(dir: &Path) -> Result<Self> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .with_context(|| format!("{}: cannot read checkpoint folder", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
            .collect();
        files.sort();
        if files.is_empty() {
            bail!(
                "{}: no *.safetensors file in the checkpoint folder",
                dir.display()
            );
        }
        let mut shards = Vec::new();
        let mut index = HashMap::new();
        for (i, path) in files.into_iter().enumerate() {
            let f = std::fs::File::open(&path)
                .with_context(|| format!("{}: cannot open", path.display()))?;
            // SAFETY: read-only mapping; kedit never writes model files.
            let map = unsafe { memmap2::Mmap::map(&f) }
                .with_context(|| format!("{}: cannot map", path.display()))?;
            let st = SafeTensors::deserialize(&map)
                .with_context(|| format!("{}: not a valid safetensors file", path.display()))?;
            for name in st.names() {
                index.insert(name.to_string(), i);
            }
            shards.push((path, map));
        }
        Ok(Self { shards, index })
    }
}

impl WeightSource for SafetensorsFolder {
    fn has(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    fn location(&self, name: &str) -> String {
        let i = self.index.get(name).copied().unwrap_or(0);
        self.shards[i].0.display().to_string()
    }

    fn tensor(&self, name: &str) -> Result<HostTensor> {
        let Some(&i) = self.index.get(name) else {
            let dir = self.shards[0].0.parent().unwrap_or(Path::new("."));
            bail!(
                "{}: tensor {name} is missing from the checkpoint",
                dir.display()
            );
        };
        let (path, map) = &self.shards[i];
        let st = SafeTensors::deserialize(map)?;
        let t = st.tensor(name)?;
        let b = t.data();
        let data: Vec<f32> = match t.dtype() {
            Dtype::F32 => b
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect(),
            Dtype::F16 => b
                .chunks_exact(2)
                .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            Dtype::BF16 => b
                .chunks_exact(2)
                .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            other => bail!(
                "{}: tensor {name} has dtype {other:?} (expected f32, f16 or bf16)",
                path.display()
            ),
        };
        Ok((t.shape().to_vec(), data))
    }
}
