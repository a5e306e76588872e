//! A minimal GGUF reader: header, metadata, tensor table, and dequantisation to f32.
//!
//! No maintained light crate dequantises GGUF, so this is hand-written against the format
//! (ggml `gguf.c` / the `gguf` Python package). Only the block types kedit meets are supported:
//! F32, F16, BF16, Q8_0, Q4_0, Q4_1.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use half::{bf16, f16};

/// A metadata value of a GGUF file.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    Str(String),
    Array(Vec<Value>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Value {
    /// The value as an unsigned integer, when it is an integer of any width.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v as u64),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::U16(v) => Some(v as u64),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::U32(v) => Some(v as u64),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::U64(v) => Some(v),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// ggml tensor types that kedit can dequantise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q8_0,
    BF16,
}

impl GgmlType {
    fn from_id(id: u32) -> Option<Self> {
        Some(match id {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            8 => Self::Q8_0,
            30 => Self::BF16,
            _ => return None,
        })
    }
    /// (elements per block, bytes per block)
    fn block(self) -> (usize, usize) {
        match self {
            Self::F32 => (1, 4),
            Self::F16 | Self::BF16 => (1, 2),
            Self::Q4_0 => (32, 18),
            Self::Q4_1 => (32, 20),
            Self::Q8_0 => (32, 34),
        }
    }
}

/// One entry of the tensor table.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    /// Shape in row-major (PyTorch) order: GGUF stores ggml's `ne`, innermost first.
    pub shape: Vec<usize>,
    pub dtype: GgmlType,
    offset: usize,
}

impl TensorInfo {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// A GGUF file held in memory (memory-mapped).
pub struct GgufFile {
    pub path: PathBuf,
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: BTreeMap<String, TensorInfo>,
    data: memmap2::Mmap,
    data_start: usize,
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        match end {
            Some(end) => {
                let s = &self.buf[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => bail!(
                "truncated: needs {n} bytes at offset {} but the file has {}",
                self.pos,
                self.buf.len()
            ),
        }
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    fn len(&mut self) -> Result<usize> {
        let n = self.u64()?;
        if n as usize > self.buf.len() {
            bail!("corrupt length {n} at offset {}", self.pos - 8);
        }
        Ok(n as usize)
    }
    fn string(&mut self) -> Result<String> {
        let n = self.len()?;
        Ok(String::from_utf8_lossy(self.take(n)?).into_owned())
    }
    fn value(&mut self, ty: u32) -> Result<Value> {
        Ok(match ty {
            0 => Value::U8(self.take(1)?[0]),
            1 => Value::I8(self.take(1)?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.take(2)?.try_into().unwrap())),
            3 => Value::I16(i16::from_le_bytes(self.take(2)?.try_into().unwrap())),
            4 => Value::U32(self.u32()?),
            5 => Value::I32(self.u32()? as i32),
            6 => Value::F32(f32::from_bits(self.u32()?)),
            7 => Value::Bool(self.take(1)?[0] != 0),
            8 => Value::Str(self.string()?),
            9 => {
                let inner = self.u32()?;
                let n = self.len()?;
                let mut v = Vec::with_capacity(n.min(1 << 20));
                for _ in 0..n {
                    v.push(self.value(inner)?);
                }
                Value::Array(v)
            }
            10 => Value::U64(self.u64()?),
            11 => Value::I64(self.u64()? as i64),
            12 => Value::F64(f64::from_bits(self.u64()?)),
            other => bail!("unknown metadata value type {other} at offset {}", self.pos),
        })
    }
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path)
            .with_context(|| format!("{}: cannot open GGUF file", path.display()))?;
        // SAFETY: the file is opened read-only and kedit never writes model files.
        let data = unsafe { memmap2::Mmap::map(&file) }
            .with_context(|| format!("{}: cannot map GGUF file", path.display()))?;
        Self::parse(path, data)
            .with_context(|| format!("{}: not a valid GGUF file", path.display()))
    }

    fn parse(path: &Path, data: memmap2::Mmap) -> Result<Self> {
        let mut c = Cursor { buf: &data, pos: 0 };
        if c.take(4)? != b"GGUF" {
            bail!("bad magic (expected \"GGUF\")");
        }
        let version = c.u32()?;
        if !(2..=3).contains(&version) {
            bail!("unsupported GGUF version {version}");
        }
        let n_tensors = c.len()?;
        let n_kv = c.len()?;
        let mut metadata = BTreeMap::new();
        for _ in 0..n_kv {
            let key = c.string()?;
            let ty = c.u32()?;
            let value = c.value(ty).with_context(|| format!("metadata key {key}"))?;
            metadata.insert(key, value);
        }
        let mut tensors = BTreeMap::new();
        for _ in 0..n_tensors {
            let name = c.string()?;
            let n_dims = c.u32()? as usize;
            if n_dims > 4 {
                bail!("tensor {name}: {n_dims} dimensions");
            }
            let mut shape = Vec::with_capacity(n_dims);
            for _ in 0..n_dims {
                shape.push(c.len()?);
            }
            shape.reverse();
            let ty_id = c.u32()?;
            let dtype = GgmlType::from_id(ty_id)
                .with_context(|| format!("tensor {name}: unsupported ggml type {ty_id}"))?;
            let offset = c.u64()? as usize;
            tensors.insert(
                name.clone(),
                TensorInfo {
                    name,
                    shape,
                    dtype,
                    offset,
                },
            );
        }
        let alignment = metadata
            .get("general.alignment")
            .and_then(Value::as_u64)
            .unwrap_or(32) as usize;
        let data_start = c.pos.div_ceil(alignment) * alignment;
        for t in tensors.values() {
            let (per, bytes) = t.dtype.block();
            let end = data_start + t.offset + t.numel() / per * bytes;
            if t.numel() % per != 0 {
                bail!(
                    "tensor {}: {} elements is not a whole number of blocks",
                    t.name,
                    t.numel()
                );
            }
            if end > data.len() {
                bail!(
                    "truncated: tensor {} ends at byte {end} but the file has {} bytes",
                    t.name,
                    data.len()
                );
            }
        }
        Ok(Self {
            path: path.to_path_buf(),
            version,
            metadata,
            tensors,
            data,
            data_start,
        })
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    /// Dequantise one tensor to f32, returning its row-major shape and data.
    pub fn tensor_f32(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        let t = self
            .tensors
            .get(name)
            .with_context(|| format!("{}: tensor {name} is missing", self.path.display()))?;
        let (per, bytes) = t.dtype.block();
        let start = self.data_start + t.offset;
        let raw = &self.data[start..start + t.numel() / per * bytes];
        Ok((t.shape.clone(), dequantize(t.dtype, raw, t.numel())))
    }
}

/// Dequantise `n` elements of type `ty` from `raw`.
pub fn dequantize(ty: GgmlType, raw: &[u8], n: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(n);
    let h = |b: &[u8]| f16::from_le_bytes([b[0], b[1]]).to_f32();
    match ty {
        GgmlType::F32 => out.extend(
            raw.chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap())),
        ),
        GgmlType::F16 => out.extend(raw.chunks_exact(2).map(h)),
        GgmlType::BF16 => out.extend(
            raw.chunks_exact(2)
                .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32()),
        ),
        GgmlType::Q8_0 => {
            for b in raw.chunks_exact(34) {
                let d = h(&b[0..2]);
                out.extend(b[2..].iter().map(|&q| (q as i8) as f32 * d));
            }
        }
        // Low nibbles hold elements 0..16 of the block, high nibbles 16..32.
        GgmlType::Q4_0 => {
            for b in raw.chunks_exact(18) {
                let d = h(&b[0..2]);
                let qs = &b[2..18];
                out.extend(qs.iter().map(|&q| ((q & 0x0f) as i32 - 8) as f32 * d));
                out.extend(qs.iter().map(|&q| ((q >> 4) as i32 - 8) as f32 * d));
            }
        }
        GgmlType::Q4_1 => {
            for b in raw.chunks_exact(20) {
                let d = h(&b[0..2]);
                let m = h(&b[2..4]);
                let qs = &b[4..20];
                out.extend(qs.iter().map(|&q| (q & 0x0f) as f32 * d + m));
                out.extend(qs.iter().map(|&q| (q >> 4) as f32 * d + m));
            }
        }
    }
    out
}

/// The Hugging Face name of a Llama weight, as llama.cpp names it in GGUF.
fn gguf_name(hf: &str) -> Option<String> {
    let fixed = match hf {
        "model.embed_tokens.weight" => Some("token_embd.weight"),
        "model.norm.weight" => Some("output_norm.weight"),
        "lm_head.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_owned());
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, part) = rest.split_once('.')?;
    let g = match part {
        "input_layernorm.weight" => "attn_norm",
        "post_attention_layernorm.weight" => "ffn_norm",
        "self_attn.q_proj.weight" => "attn_q",
        "self_attn.k_proj.weight" => "attn_k",
        "self_attn.v_proj.weight" => "attn_v",
        "self_attn.o_proj.weight" => "attn_output",
        "mlp.gate_proj.weight" => "ffn_gate",
        "mlp.up_proj.weight" => "ffn_up",
        "mlp.down_proj.weight" => "ffn_down",
        _ => return None,
    };
    Some(format!("blk.{layer}.{g}.weight"))
}

/// Undo llama.cpp's q/k row permutation: it interleaves the two rotary halves of each head
/// (`[heads, 2, half, in]` -> `[heads, half, 2, in]`); transformers' rotate-half layout needs them back.
fn unpermute_rows(data: &[f32], rows: usize, cols: usize, heads: usize) -> Vec<f32> {
    let half = rows / heads / 2;
    let mut out = vec![0f32; data.len()];
    for h in 0..heads {
        for i in 0..half {
            for two in 0..2 {
                let src = ((h * half + i) * 2 + two) * cols;
                let dst = ((h * 2 + two) * half + i) * cols;
                out[dst..dst + cols].copy_from_slice(&data[src..src + cols]);
            }
        }
    }
    out
}

impl super::WeightSource for GgufFile {
    fn has(&self, name: &str) -> bool {
        gguf_name(name).is_some_and(|g| self.tensors.contains_key(&g))
    }

    fn location(&self, _name: &str) -> String {
        self.path.display().to_string()
    }

    fn tensor(&self, name: &str) -> Result<super::HostTensor> {
        let g = gguf_name(name)
            .with_context(|| format!("{}: no GGUF name for tensor {name}", self.path.display()))?;
        let (shape, data) = self.tensor_f32(&g)?;
        let heads_key = if name.ends_with("q_proj.weight") {
            Some("llama.attention.head_count")
        } else if name.ends_with("k_proj.weight") {
            Some("llama.attention.head_count_kv")
        } else {
            None
        };
        let Some(key) = heads_key else {
            return Ok((shape, data));
        };
        let heads = self
            .get(key)
            .or_else(|| self.get("llama.attention.head_count"))
            .and_then(Value::as_u64)
            .with_context(|| format!("{}: metadata {key} is missing", self.path.display()))?
            as usize;
        let data = unpermute_rows(&data, shape[0], shape[1], heads);
        Ok((shape, data))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q4_1_block_dequantises_low_then_high_nibbles() {
        let mut b = Vec::new();
        b.extend(f16::from_f32(0.5).to_le_bytes());
        b.extend(f16::from_f32(-1.0).to_le_bytes());
        b.extend((0..16u8).map(|i| i | ((15 - i) << 4)));
        let x = dequantize(GgmlType::Q4_1, &b, 32);
        assert_eq!(x[0], -1.0);
        assert_eq!(x[15], 15.0 * 0.5 - 1.0);
        assert_eq!(x[16], 15.0 * 0.5 - 1.0);
        assert_eq!(x[31], -1.0);
    }

    #[test]
    fn q8_0_and_q4_0_are_signed() {
        let mut b = Vec::new();
        b.extend(f16::from_f32(2.0).to_le_bytes());
        b.extend((0..32).map(|i| (i as i8 - 16) as u8));
        let x = dequantize(GgmlType::Q8_0, &b, 32);
        assert_eq!(x[0], -32.0);
        assert_eq!(x[31], 30.0);
        let mut b = Vec::new();
        b.extend(f16::from_f32(1.0).to_le_bytes());
        b.extend([0u8; 16]);
        assert!(dequantize(GgmlType::Q4_0, &b, 32)
            .iter()
            .all(|&v| v == -8.0));
    }
}
