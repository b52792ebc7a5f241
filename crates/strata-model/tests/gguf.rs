//! GGUF reader, writer and validation tests.

use std::path::PathBuf;

use strata_model::gguf::{GgmlType, GgufFile};

/// The default model: `$STRATA_MODEL`, else `<workspace>/models/SmolLM2-135M-Instruct.Q4_1.gguf`.
fn default_model() -> Result<PathBuf, String> {
    let path = match std::env::var_os("STRATA_MODEL") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/SmolLM2-135M-Instruct.Q4_1.gguf"),
    };
    if path.is_file() { Ok(path) } else { Err(format!("no model at {} (set STRATA_MODEL)", path.display())) }
}

#[test]
fn gguf_default_model() {
    let path = match default_model() {
        Ok(p) => p,
        Err(why) => {
            println!("skipped: {why}");
            return;
        }
    };
    let f = GgufFile::open(&path).unwrap();
    assert_eq!(f.version(), 3);
    assert_eq!(f.alignment(), 32);
    // 30 layers × 9 tensors + token_embd + output_norm (the output matrix is tied to token_embd).
    assert_eq!(f.tensors().len(), 272);
    let layers: std::collections::BTreeSet<u32> =
        f.tensors().iter().filter_map(|t| t.name.strip_prefix("blk.")?.split('.').next()?.parse().ok()).collect();
    assert_eq!(layers, (0..30).collect());
    let md = f.metadata();
    assert_eq!(md.str("general.architecture").unwrap(), "llama");
    assert_eq!(md.u64("llama.block_count").unwrap(), 30);
    assert_eq!(md.str_array("tokenizer.ggml.tokens").unwrap().len(), 49152);

    let embd = f.tensor("token_embd.weight").unwrap();
    assert_eq!((embd.ggml_type, embd.dims.as_slice()), (GgmlType::Q8_0, &[576u64, 49152][..]));
    assert_eq!(embd.shape(), vec![49152, 576]);
    assert_eq!(embd.n_bytes, 49152 * 576 / 32 * 34);
    assert_eq!(embd.dtype(), Some(strata_tensor::DType::Q8_0));
    let q = f.tensor("blk.0.attn_q.weight").unwrap();
    assert_eq!((q.ggml_type, q.dims.as_slice()), (GgmlType::Q4_1, &[576u64, 576][..]));
    assert_eq!(f.tensor_data(q).len(), 576 * 576 / 32 * 20);
    assert_eq!(f.tensor("output_norm.weight").unwrap().ggml_type, GgmlType::F32);

    // Tensors tile the data section: aligned, in bounds, the last one ending the file.
    let end = f.tensors().iter().map(|t| t.offset + t.n_bytes).max().unwrap();
    assert_eq!(end, f.file_len());
    assert!(f.tensors().iter().all(|t| t.offset % 32 == 0 && t.offset >= f.data_offset()));
    // A zero-copy tensor over the map.
    let t = strata_tensor::Tensor::from_shared(q.dtype().unwrap(), &q.shape(), f.shared(), q.offset as usize);
    assert!(t.is_ok());
}
