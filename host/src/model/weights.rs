//! Safetensors checkpoints, single-file or sharded (`model.safetensors.index.json`), memory-mapped. Tensors are
//! copied out one at a time, converted to the model's dtype and device, so loading peaks at the model's size plus
//! one tensor (the mapped file pages belong to the page cache, not to the process heap).

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use anyhow::Context;
use memmap2::Mmap;
use safetensors::tensor::{Dtype, Metadata};
use safetensors::SafeTensors;
use tch::{Device, Kind, Tensor};

use crate::user_error;

struct Entry {
    file: usize,
    dtype: Dtype,
    shape: Vec<usize>,
    start: usize,
    end: usize,
}

/// The tensors of a checkpoint, indexed by name, backed by memory-mapped files.
pub struct WeightFiles {
    files: Vec<(PathBuf, Mmap)>,
    entries: HashMap<String, Entry>,
}

impl WeightFiles {
    /// Open `dir/model.safetensors.index.json` (sharded) or `dir/model.safetensors`, or failing both every
    /// `*.safetensors` file in `dir`.
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        let index = dir.join("model.safetensors.index.json");
        let paths: Vec<PathBuf> = if index.exists() {
            let text = std::fs::read_to_string(&index).with_context(|| format!("reading {}", index.display()))?;
            let v: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| user_error!("{} is not valid JSON: {e}", index.display()))?;
            let map = v
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| user_error!("{} has no weight_map object", index.display()))?;
            let names: BTreeSet<&str> = map.values().filter_map(|f| f.as_str()).collect();
            names.into_iter().map(|f| dir.join(f)).collect()
        } else if dir.join("model.safetensors").exists() {
            vec![dir.join("model.safetensors")]
        } else {
            let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
                .map_err(|e| user_error!("cannot read model directory {}: {e}", dir.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
                .collect();
            found.sort();
            found
        };
        if paths.is_empty() {
            return Err(user_error!(
                "no safetensors weights in {} (expected model.safetensors or model.safetensors.index.json)",
                dir.display()
            ));
        }
        let mut files = Vec::new();
        let mut entries = HashMap::new();
        for path in paths {
            let file = std::fs::File::open(&path)
                .map_err(|e| user_error!("cannot open weight file {}: {e}", path.display()))?;
            // SAFETY: the file is opened read-only and not modified while mapped; a concurrent writer would be a
            // user error outside our control, as with any memory-mapped model loader.
            let mmap = unsafe { Mmap::map(&file) }.with_context(|| format!("mapping {}", path.display()))?;
            let (header_len, meta): (usize, Metadata) = SafeTensors::read_metadata(&mmap)
                .map_err(|e| user_error!("{} is not a valid safetensors file: {e}", path.display()))?;
            let data_start = 8 + header_len;
            for (name, info) in meta.tensors() {
                entries.insert(
                    name.clone(),
                    Entry {
                        file: files.len(),
                        dtype: info.dtype,
                        shape: info.shape.clone(),
                        start: data_start + info.data_offsets.0,
                        end: data_start + info.data_offsets.1,
                    },
                );
            }
            files.push((path, mmap));
        }
        Ok(WeightFiles { files, entries })
    }

    /// Every tensor name in the checkpoint.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// Whether the checkpoint holds `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// The shape of `name` as stored.
    pub fn shape(&self, name: &str) -> Option<Vec<i64>> {
        self.entries.get(name).map(|e| e.shape.iter().map(|&d| d as i64).collect())
    }

    /// Copy `name` out of the mapped file as a tensor of `kind` on `device`.
    pub fn tensor(&self, name: &str, kind: Kind, device: Device) -> anyhow::Result<Tensor> {
        let e = self.entries.get(name).ok_or_else(|| user_error!("checkpoint has no tensor {name:?}"))?;
        let (path, mmap) = &self.files[e.file];
        let stored = match e.dtype {
            Dtype::F32 => Kind::Float,
            Dtype::F16 => Kind::Half,
            Dtype::BF16 => Kind::BFloat16,
            Dtype::F64 => Kind::Double,
            // MXFP4's packed values and their scales (see `dequantize_mxfp4`), read as they are.
            Dtype::U8 if kind == Kind::Uint8 => Kind::Uint8,
            other => {
                return Err(user_error!(
                    "tensor {name:?} in {} has dtype {other:?}; only f32, f16, bf16 and f64 weights are supported",
                    path.display()
                ))
            }
        };
        let shape: Vec<i64> = e.shape.iter().map(|&d| d as i64).collect();
        let bytes =
            mmap.get(e.start..e.end).ok_or_else(|| user_error!("tensor {name:?} lies outside {}", path.display()))?;
        let t = Tensor::f_from_data_size(bytes, &shape, stored)
            .with_context(|| format!("reading tensor {name:?} from {}", path.display()))?;
        // Release the mapped pages just copied so the process does not hold the file and the tensors at once.
        #[cfg(unix)]
        {
            let start = e.start - e.start % 4096;
            // SAFETY: the mapping is read-only and file-backed, so MADV_DONTNEED only drops pages that are
            // re-read from the file on a later access; nothing borrows them any more (the copy above is done).
            let _ = unsafe { mmap.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, e.end - start) };
        }
        // Convert on the CPU only when the target is the CPU; otherwise move the stored bytes first (half the
        // transfer for bf16 checkpoints) and convert on the device.
        let t = if device == Device::Cpu { t.to_kind(kind) } else { t.to_device(device).to_kind(kind) };
        Ok(t)
    }
}

/// The FP4 (E2M1) values of MXFP4's 4-bit codes, in code order.
const FP4_VALUES: [f32; 16] = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0];

/// A matrix stack stored in MXFP4 (gpt-oss's experts on the hub), as `kind`: `blocks` `[experts, rows, groups, 16]`
/// u8 packs 32 FP4 codes per group of a row, the low nibble first, and `scales` `[experts, rows, groups]` u8 is each
/// group's power of two plus 127. Returns `[experts, groups x 32, rows]`: transposed, as transformers dequantizes
/// them for its right-multiplied experts. The products are exact in bf16 (an FP4 value times a power of two). One
/// expert at a time, so that no more than one expert's f32 values exist at once.
pub fn dequantize_mxfp4(blocks: &Tensor, scales: &Tensor, kind: Kind) -> Tensor {
    let size = blocks.size();
    let (experts, rows, groups) = (size[0], size[1], size[2]);
    let lut = Tensor::from_slice(&FP4_VALUES).to_device(blocks.device());
    let parts: Vec<Tensor> = (0..experts)
        .map(|e| {
            let packed = blocks.get(e).to_kind(Kind::Int64);
            let low = lut.index_select(0, &packed.bitwise_and(15).reshape([-1]));
            let high = lut.index_select(0, &packed.bitwise_right_shift_tensor_scalar(4).reshape([-1]));
            let values = Tensor::stack(&[low, high], -1).reshape([rows, groups, 32]);
            let scale = (scales.get(e).to_kind(Kind::Float) - 127.0).exp2().unsqueeze(-1);
            (values * scale).reshape([rows, groups * 32]).transpose(0, 1).to_kind(kind)
        })
        .collect();
    Tensor::stack(&parts, 0)
}
