//! GGUF reader and writer: round trips of synthetic files, the real default model, the ggml
//! type table and the writer's own validation. Malformed files are in `gguf_malformed`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use strata_model::gguf::{GgmlType, GgufError, GgufFile, GgufWriter, Value};
use strata_model::inspect::inspect;
use strata_tensor::DType;

/// A unique path in the temp dir, removed (with its `.part`) when dropped.
pub(crate) struct TempPath(pub PathBuf);

impl TempPath {
    pub(crate) fn new(name: &str) -> TempPath {
        TempPath(std::env::temp_dir().join(format!("strata-gguf-{}-{name}.gguf", std::process::id())))
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
        let _ = std::fs::remove_file(self.0.with_extension("gguf.part"));
    }
}

/// Tensor `i`'s synthetic bytes: a pattern that differs between tensors and positions.
pub(crate) fn pattern(i: usize, buf: &mut [u8]) {
    for (j, b) in buf.iter_mut().enumerate() {
        *b = (i * 131 + j * 7 + 3) as u8;
    }
}

/// Metadata of every value type (arrays of strings, nested and empty arrays, extremes,
/// non-ASCII strings) and tensors of several types with odd shapes.
pub(crate) fn sample(alignment: Option<u32>) -> GgufWriter {
    let mut w = GgufWriter::new();
    let md = w.metadata_mut();
    md.set("general.architecture", Value::String("llama".into()));
    md.set("general.name", Value::String("round trip ✓ — ünïcödé".into()));
    if let Some(a) = alignment {
        md.set("general.alignment", Value::U32(a));
    }
    md.set("test.u8", Value::U8(u8::MAX));
    md.set("test.i8", Value::I8(i8::MIN));
    md.set("test.u16", Value::U16(u16::MAX));
    md.set("test.i16", Value::I16(i16::MIN));
    md.set("test.u32", Value::U32(u32::MAX));
    md.set("test.i32", Value::I32(i32::MIN));
    md.set("test.u64", Value::U64(u64::MAX));
    md.set("test.i64", Value::I64(i64::MIN));
    md.set("test.f32", Value::F32(-1.5e-7));
    md.set("test.f64", Value::F64(2.25e300));
    md.set("test.true", Value::Bool(true));
    md.set("test.false", Value::Bool(false));
    md.set("test.empty_string", Value::String(String::new()));
    let tokens = ["<s>", "</s>", "", "héllo", "a b", "\u{2581}the"];
    md.set("tokenizer.ggml.tokens", Value::Array(tokens.iter().map(|s| Value::String((*s).into())).collect()));
    md.set("tokenizer.ggml.scores", Value::Array((0..6).map(|i| Value::F32(i as f32 * -0.5)).collect()));
    md.set("test.empty_array", Value::Array(Vec::new()));
    md.set(
        "test.nested",
        Value::Array(vec![
            Value::Array(vec![Value::U8(1), Value::U8(2)]),
            Value::Array(vec![Value::String("x".into())]),
            Value::Array(Vec::new()),
        ]),
    );
    let tensors: [(&str, GgmlType, &[u64]); 8] = [
        ("token_embd.weight", GgmlType::Q8_0, &[64, 7]),
        ("blk.0.attn_norm.weight", GgmlType::F32, &[13]),
        ("blk.0.ffn_up.weight", GgmlType::Q4_1, &[96, 5]),
        ("blk.1.attn_q.weight", GgmlType::F16, &[3, 5, 7]),
        ("blk.1.ffn_down.weight", GgmlType::Q4_0, &[32, 3]),
        ("output.weight", GgmlType::BF16, &[1, 1, 1, 9]),
        ("positions", GgmlType::I32, &[5]),
        ("blk.10.k_quant", GgmlType::Q4_K, &[256, 2]),
    ];
    for (name, ty, dims) in tensors {
        w.add_tensor(name, ty, dims).unwrap();
    }
    w
}

/// The expected byte count of `dims` of type `ty`, spelled out independently of the crate.
fn expected_bytes(ty: GgmlType, dims: &[u64]) -> u64 {
    let n: u64 = dims.iter().product();
    n / ty.block_size() * ty.type_size()
}

fn assert_same_metadata(w: &GgufWriter, f: &GgufFile) {
    let written: Vec<_> = w.metadata().iter().collect();
    let read: Vec<_> = f.metadata().iter().collect();
    assert_eq!(written, read);
}

#[test]
fn gguf_round_trip_in_memory() {
    for alignment in [None, Some(1), Some(8), Some(64), Some(4096)] {
        let w = sample(alignment);
        let bytes = w.to_bytes(pattern).unwrap();
        let f = GgufFile::from_bytes(bytes.clone()).unwrap();
        let align = u64::from(alignment.unwrap_or(32));
        assert_eq!((f.version(), f.alignment(), f.file_len()), (3, align, bytes.len() as u64));
        assert_eq!(f.data_offset() % align, 0);
        assert_same_metadata(&w, &f);
        assert_eq!(f.metadata().str("general.name").unwrap(), "round trip ✓ — ünïcödé");
        assert_eq!(f.metadata().str_array("tokenizer.ggml.tokens").unwrap()[5], "\u{2581}the");

        assert_eq!(f.tensors().len(), w.tensor_count());
        let mut prev_end = f.data_offset();
        for (i, t) in f.tensors().iter().enumerate() {
            assert_eq!(t.n_bytes, expected_bytes(t.ggml_type, &t.dims), "{}", t.name);
            assert_eq!(t.n_bytes, w.tensor_len(i));
            assert_eq!(t.offset % align, 0, "{} misaligned", t.name);
            assert!(t.offset >= prev_end, "{} overlaps its predecessor", t.name);
            prev_end = t.offset + t.n_bytes;
            let mut want = vec![0u8; t.n_bytes as usize];
            pattern(i, &mut want);
            assert_eq!(f.tensor_data(t), want.as_slice(), "{}", t.name);
            assert_eq!(f.tensor(&t.name), Some(t));
        }
        let q = f.tensor("blk.0.ffn_up.weight").unwrap();
        assert_eq!((q.ggml_type, q.dims.as_slice(), q.shape()), (GgmlType::Q4_1, &[96u64, 5][..], vec![5, 96]));
        assert_eq!(q.n_elements(), 480);
        assert_eq!(f.tensor("output.weight").unwrap().shape(), vec![9, 1, 1, 1]);
        assert_eq!(f.tensor("blk.10.k_quant").unwrap().dtype(), Some(DType::Q4_K));
        assert_eq!(GgmlType::IQ2_XXS.dtype(), None, "a type strata does not compute with");
        assert_eq!(f.tensor("positions").unwrap().dtype(), Some(DType::I32));
        assert!(f.tensor("missing").is_none());
    }
}

#[test]
fn gguf_tensors_view_the_shared_file_without_copying() {
    let f = GgufFile::from_bytes(sample(None).to_bytes(pattern).unwrap()).unwrap();
    for t in f.tensors() {
        let Some(dtype) = t.dtype() else { continue };
        let tensor = strata_tensor::Tensor::from_shared(dtype, &t.shape(), f.shared(), t.offset as usize).unwrap();
        assert_eq!(tensor.len_bytes() as u64, t.n_bytes, "{}", t.name);
    }
    // f32 tensors are aligned in memory, so typed views work on in-memory files too.
    let norm = f.tensor("blk.0.attn_norm.weight").unwrap();
    assert_eq!(f.tensor_data(norm).as_ptr().align_offset(4), 0);
}

#[test]
fn gguf_round_trip_through_a_file() {
    let w = sample(None);
    let path = TempPath::new("round-trip");
    let calls = AtomicUsize::new(0);
    let most = AtomicU64::new(0);
    w.write_file(
        &path.0,
        |i, buf| {
            assert!(buf.iter().all(|&b| b == 0), "fill gets zeroed bytes");
            assert_eq!(buf.len() as u64, w.tensor_len(i));
            pattern(i, buf);
        },
        |done| {
            calls.fetch_add(1, Ordering::Relaxed);
            most.fetch_max(done, Ordering::Relaxed);
        },
    )
    .unwrap();
    let total: u64 = (0..w.tensor_count()).map(|i| w.tensor_len(i)).sum();
    assert_eq!((calls.into_inner(), most.into_inner()), (w.tensor_count(), total));
    assert!(!path.0.with_extension("gguf.part").exists());

    let on_disk = std::fs::read(&path.0).unwrap();
    assert_eq!(on_disk, w.to_bytes(pattern).unwrap(), "file and in-memory writers agree");
    let f = GgufFile::open(&path.0).unwrap();
    assert_same_metadata(&w, &f);
    let embd = f.tensor("token_embd.weight").unwrap();
    let mut want = vec![0u8; embd.n_bytes as usize];
    pattern(0, &mut want);
    assert_eq!(f.tensor_data(embd), want.as_slice());
    // The last tensor is padded like llama.cpp pads it.
    assert_eq!(f.file_len() % 32, 0);
}

#[test]
fn gguf_writer_without_tensors_or_metadata() {
    let f = GgufFile::from_bytes(GgufWriter::new().to_bytes(|_, _| {}).unwrap()).unwrap();
    assert_eq!((f.tensors().len(), f.metadata().len(), f.data_offset()), (0, 0, 32));
}

#[test]
fn gguf_open_errors_name_the_path() {
    let missing = std::env::temp_dir().join("strata-gguf-no-such-file.gguf");
    let err = GgufFile::open(&missing).unwrap_err();
    assert!(matches!(&err, GgufError::Io { path, .. } if path.contains("strata-gguf-no-such-file")), "{err}");

    let empty = TempPath::new("empty");
    std::fs::write(&empty.0, b"").unwrap();
    assert!(matches!(GgufFile::open(&empty.0), Err(GgufError::Truncated { .. })));

    let w = sample(None);
    let err = w.write_file(&missing.join("sub/dir.gguf"), pattern, |_| {}).unwrap_err();
    assert!(matches!(err, GgufError::Io { .. }), "{err}");
    // The target is a directory: the rename fails and the .part file is removed.
    let dir = TempPath::new("dir");
    std::fs::create_dir(&dir.0).unwrap();
    let err = w.write_file(&dir.0, pattern, |_| {}).unwrap_err();
    assert!(matches!(err, GgufError::Io { .. }), "{err}");
    assert!(!dir.0.with_extension("gguf.part").exists());
    std::fs::remove_dir(&dir.0).unwrap();
}

#[test]
fn gguf_writer_rejects_what_the_reader_would() {
    let mut w = GgufWriter::new();
    w.add_tensor("ok", GgmlType::F32, &[4]).unwrap();
    let err = |r: Result<usize, GgufError>| r.unwrap_err();
    assert!(matches!(err(w.add_tensor("ok", GgmlType::F32, &[4])), GgufError::DuplicateTensor { .. }));
    assert!(matches!(err(w.add_tensor("", GgmlType::F32, &[4])), GgufError::EmptyName { .. }));
    assert!(matches!(err(w.add_tensor(&"x".repeat(65), GgmlType::F32, &[4])), GgufError::StringTooLong { .. }));
    assert!(matches!(err(w.add_tensor("r0", GgmlType::F32, &[])), GgufError::BadRank { rank: 0, .. }));
    assert!(matches!(err(w.add_tensor("r5", GgmlType::F32, &[1; 5])), GgufError::BadRank { rank: 5, .. }));
    assert!(matches!(err(w.add_tensor("z", GgmlType::F32, &[4, 0])), GgufError::BadDims { .. }));
    assert!(matches!(err(w.add_tensor("blk", GgmlType::Q4_1, &[33])), GgufError::BadDims { .. }));
    assert!(matches!(err(w.add_tensor("big", GgmlType::F32, &[1 << 32, 1 << 32])), GgufError::Overflow { .. }));
    assert!(matches!(err(w.add_tensor("bytes", GgmlType::F64, &[1 << 62])), GgufError::Overflow { .. }));
    assert_eq!((w.tensor_count(), w.tensor_len(0), w.tensor_len(7)), (1, 16, 0));

    let bad_metadata = |key: &str, value: Value| {
        let mut w = GgufWriter::new();
        w.metadata_mut().set(key, value);
        w.to_bytes(|_, _| {}).unwrap_err()
    };
    let mixed = Value::Array(vec![Value::U8(1), Value::String("x".into())]);
    assert!(matches!(bad_metadata("a", mixed), GgufError::BadValue { .. }));
    assert!(matches!(bad_metadata("", Value::U8(1)), GgufError::EmptyName { .. }));
    assert!(matches!(bad_metadata("general.alignment", Value::U32(3)), GgufError::BadAlignment { value: 3, .. }));
    assert!(matches!(bad_metadata("general.alignment", Value::U64(32)), GgufError::BadValue { .. }));
    let deep = (0..5).fold(Value::U8(0), |v, _| Value::Array(vec![v]));
    assert!(matches!(bad_metadata("deep", deep), GgufError::NestingTooDeep { depth: 5, .. }));
    let long = Value::String("x".repeat((16 << 20) + 1));
    assert!(matches!(bad_metadata("long", long), GgufError::StringTooLong { .. }));
}

#[test]
fn gguf_type_table() {
    let mut names = std::collections::HashSet::new();
    for &t in GgmlType::ALL {
        assert_eq!(GgmlType::from_id(t.id()), Some(t));
        assert!(names.insert(t.name()), "duplicate name {}", t.name());
        assert!(t.block_size() >= 1 && t.type_size() >= 1, "{t}");
    }
    for removed in [4, 5, 31, 32, 33, 36, 37, 38, 42, 1000, u32::MAX] {
        assert_eq!(GgmlType::from_id(removed), None, "id {removed}");
    }
    // A few block layouts spelled out: (type, elements per block, bytes per block).
    for (t, block, size) in [
        (GgmlType::F32, 1, 4),
        (GgmlType::Q4_0, 32, 2 + 16),
        (GgmlType::Q4_1, 32, 2 + 2 + 16),
        (GgmlType::Q8_0, 32, 2 + 32),
        (GgmlType::Q4_K, 256, 2 + 2 + 12 + 128),
        (GgmlType::Q6_K, 256, 128 + 64 + 16 + 2),
        (GgmlType::IQ4_XS, 256, 2 + 2 + 4 + 128),
        (GgmlType::MXFP4, 32, 1 + 16),
    ] {
        assert_eq!((t.block_size(), t.type_size()), (block, size), "{t}");
    }
    assert_eq!(GgmlType::Q4_K.row_bytes(512), Some(288));
    assert_eq!(GgmlType::Q4_K.row_bytes(100), None);
    for d in [DType::F32, DType::F16, DType::BF16, DType::Q8_0, DType::Q4_0, DType::Q4_1, DType::I32] {
        let t = GgmlType::from_dtype(d).unwrap();
        assert_eq!(t.dtype(), Some(d));
        assert_eq!(t.name(), d.name());
    }
}

#[test]
fn gguf_file_is_send_and_sync() {
    fn shareable<T: Send + Sync>() {}
    shareable::<GgufFile>();
}

#[test]
fn gguf_default_model() {
    let Some(path) = crate::support::model_path_or_skip() else { return };
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
    assert_eq!(embd.dtype(), Some(DType::Q8_0));
    let q = f.tensor("blk.0.attn_q.weight").unwrap();
    assert_eq!((q.ggml_type, q.dims.as_slice()), (GgmlType::Q4_1, &[576u64, 576][..]));
    assert_eq!(f.tensor_data(q).len(), 576 * 576 / 32 * 20);
    assert_eq!(f.tensor("output_norm.weight").unwrap().ggml_type, GgmlType::F32);

    // Tensors tile the data section: aligned, in bounds, the last one ending the file.
    let end = f.tensors().iter().map(|t| t.offset + t.n_bytes).max().unwrap();
    assert_eq!(end, f.file_len());
    assert!(f.tensors().iter().all(|t| t.offset % 32 == 0 && t.offset >= f.data_offset()));
    let t = strata_tensor::Tensor::from_shared(DType::Q4_1, &q.shape(), f.shared(), q.offset as usize).unwrap();
    assert_eq!(t.len_bytes() as u64, q.n_bytes);
}

#[test]
fn gguf_default_model_rewrites_identically() {
    let Some(path) = crate::support::model_path_or_skip() else { return };
    // Copying metadata and tensors through the writer reproduces llama.cpp's file byte for
    // byte: same header encoding, same offsets and padding.
    let f = GgufFile::open(&path).unwrap();
    let mut w = GgufWriter::new();
    for (k, v) in f.metadata().iter() {
        w.metadata_mut().set(k, v.clone());
    }
    for t in f.tensors() {
        w.add_tensor(&t.name, t.ggml_type, &t.dims).unwrap();
    }
    let copy = w.to_bytes(|i, buf| buf.copy_from_slice(f.tensor_data(&f.tensors()[i]))).unwrap();
    let original = std::fs::read(&path).unwrap();
    assert_eq!(copy.len(), original.len());
    assert!(copy == original, "rewritten file differs from the original");
}

#[test]
fn gguf_inspect_sample() {
    let w = sample(None);
    let f = GgufFile::from_bytes(w.to_bytes(pattern).unwrap()).unwrap();
    let info = inspect(&f, std::path::Path::new("sample.gguf"));
    assert_eq!((info.tensor_count, info.version, info.file_bytes), (8, 3, f.file_len()));
    let layers: Vec<(u32, usize)> = info.layers.iter().map(|l| (l.layer, l.tensors)).collect();
    assert_eq!(layers, vec![(0, 2), (1, 2), (10, 1)]);
    assert_eq!(info.non_layer.names, ["token_embd.weight", "output.weight", "positions"]);
    let layer_bytes: u64 = info.layers.iter().map(|l| l.bytes).sum();
    assert_eq!(layer_bytes + info.non_layer.bytes, info.total_bytes);
    assert_eq!(info.bytes_by_type.iter().map(|t| t.bytes).sum::<u64>(), info.total_bytes);
    assert!(info.bytes_by_type.windows(2).all(|p| p[0].bytes >= p[1].bytes));
    let tokens = info.metadata.iter().find(|m| m.key == "tokenizer.ggml.tokens").unwrap();
    assert_eq!((tokens.value_type.as_str(), tokens.summary.as_str()), ("array", "[string; 6]"));
    let embd = &info.tensors[0];
    assert_eq!((embd.ggml_type.as_str(), embd.shape.as_slice(), embd.n_elements), ("q8_0", &[64u64, 7][..], 448));

    let json: serde_json::Value = serde_json::to_value(&info).unwrap();
    assert_eq!(json["tensors"][0]["type"], "q8_0");
    assert_eq!(json["metadata"][0]["key"], "general.architecture");
    let table = info.render_table();
    for needle in ["sample.gguf", "blk.0.ffn_up.weight", "q4_1", "96 × 5", "non-layer", "[string; 6]", "by type"] {
        assert!(table.contains(needle), "{needle:?} missing from\n{table}");
    }
}

#[test]
fn gguf_inspect_default_model() {
    let Some(path) = crate::support::model_path_or_skip() else { return };
    let info = inspect(&GgufFile::open(&path).unwrap(), &path);
    assert_eq!(info.layers.len(), 30);
    assert!(info.layers.iter().all(|l| l.tensors == 9 && l.bytes == info.layers[0].bytes));
    assert_eq!(info.non_layer.names, ["token_embd.weight", "output_norm.weight"]);
    let types: Vec<&str> = info.bytes_by_type.iter().map(|t| t.ggml_type.as_str()).collect();
    assert_eq!(types, ["q4_1", "q8_0", "f32"]);
    println!("{}", info.render_table());
}
