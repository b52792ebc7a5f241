//! Malformed GGUF files: every truncation, each kind of bad header, metadata and tensor info
//! (asserting the specific error), absurd counts and lengths (asserting that nothing large is
//! allocated), and a property test that random mutations never make the reader panic.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use proptest::prelude::*;
use strata_model::gguf::{GgmlType, GgufError, GgufFile, GgufWriter, Value};

use crate::gguf::{pattern, sample};

/// Tracks the largest single allocation per thread, so tests can show that an absurd count in
/// a header is rejected without allocating for it. (A global allocator is the only way to see
/// allocations; it wraps `System` and adds one thread-local compare per allocation.)
struct Tracking;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
}

// SAFETY: every call is forwarded unchanged to `System`, which upholds GlobalAlloc's contract;
// `note` only touches a const-initialized thread-local Cell and never allocates.
unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        // SAFETY: ptr/layout come from this allocator, i.e. from System.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: ptr/layout come from this allocator, i.e. from System.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Tracking = Tracking;

/// Runs `f` and returns its result and the largest single allocation this thread made
/// meanwhile (allocations on other threads are not seen).
pub(crate) fn largest_alloc_during<R>(f: impl FnOnce() -> R) -> (R, usize) {
    LARGEST.with(|l| l.set(0));
    let r = f();
    (r, LARGEST.with(Cell::get))
}

/// Parses `bytes` and returns the error and the largest allocation made meanwhile.
fn parse_err_and_largest_alloc(bytes: Vec<u8>) -> (GgufError, usize) {
    let (result, largest) = largest_alloc_during(|| GgufFile::from_bytes(bytes));
    match result {
        Ok(f) => panic!("expected an error, parsed {f:?}"),
        Err(e) => (e, largest),
    }
}

/// Raw GGUF bytes, written field by field so each test can break exactly one thing.
struct Raw(Vec<u8>);

const F32: u32 = 0;
const Q8_0: u32 = 8;
const TYPE_U8: u32 = 0;
const TYPE_U32: u32 = 4;
const TYPE_BOOL: u32 = 7;
const TYPE_STRING: u32 = 8;
const TYPE_ARRAY: u32 = 9;
const TYPE_U64: u32 = 10;

impl Raw {
    fn new(version: u32, n_tensors: u64, n_kv: u64) -> Raw {
        Raw(b"GGUF".to_vec()).u32(version).u64(n_tensors).u64(n_kv)
    }
    fn u32(mut self, v: u32) -> Raw {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(mut self, v: u64) -> Raw {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn bytes(mut self, b: &[u8]) -> Raw {
        self.0.extend_from_slice(b);
        self
    }
    fn str(self, s: &str) -> Raw {
        self.u64(s.len() as u64).bytes(s.as_bytes())
    }
    fn kv_u32(self, key: &str, v: u32) -> Raw {
        self.str(key).u32(TYPE_U32).u32(v)
    }
    fn tensor(self, name: &str, dims: &[u64], ty: u32, rel_offset: u64) -> Raw {
        let r = dims.iter().fold(self.str(name).u32(dims.len() as u32), |r, &d| r.u64(d));
        r.u32(ty).u64(rel_offset)
    }
    /// Pads to `align`, then appends `n` data bytes.
    fn data(mut self, align: usize, n: usize) -> Raw {
        self.0.resize(self.0.len().next_multiple_of(align), 0);
        self.0.resize(self.0.len() + n, 0xab);
        self
    }
    fn parse(self) -> Result<GgufFile, GgufError> {
        GgufFile::from_bytes(self.0)
    }
    fn err(self) -> GgufError {
        match self.parse() {
            Ok(f) => panic!("expected an error, parsed {f:?}"),
            Err(e) => e,
        }
    }
}

/// A valid file with one metadata key and one f32 tensor of 8 elements; the tests below change
/// one field of it.
fn valid() -> Raw {
    Raw::new(3, 1, 1).kv_u32("a", 1).tensor("t", &[8], F32, 0).data(32, 32)
}

#[test]
fn gguf_malformed_baseline_is_valid() {
    let f = valid().parse().unwrap();
    // Header: 24 + key 17 + tensor info 33 = 74 bytes, padded to 96.
    assert_eq!((f.tensors().len(), f.data_offset()), (1, 96));
    let v2 = Raw::new(2, 1, 1).kv_u32("a", 1).tensor("t", &[8], F32, 0).data(32, 32).parse().unwrap();
    assert_eq!(v2.version(), 2);
}

#[test]
fn gguf_malformed_every_truncation_fails() {
    let full = sample(None).to_bytes(pattern).unwrap();
    let f = GgufFile::from_bytes(full.clone()).unwrap();
    let data_end = f.tensors().iter().map(|t| t.offset + t.n_bytes).max().unwrap() as usize;
    for cut in 0..full.len() {
        let result = GgufFile::from_bytes(full[..cut].to_vec());
        if cut < data_end {
            let e = result.unwrap_err();
            // Cut in the header, counts and lengths may already claim more than what remains.
            let ok = matches!(
                e,
                GgufError::Truncated { .. }
                    | GgufError::TooManyKvs { .. }
                    | GgufError::TooManyTensors { .. }
                    | GgufError::ArrayTooLong { .. }
                    | GgufError::BadTensorOffset { .. }
            );
            assert!(ok, "cut at {cut}: {e}");
        }
    }
}

#[test]
fn gguf_malformed_magic_and_version() {
    let mut bytes = valid().0;
    bytes[..4].copy_from_slice(b"GGML");
    assert!(matches!(GgufFile::from_bytes(bytes), Err(GgufError::BadMagic { .. })));
    assert!(matches!(GgufFile::from_bytes(b"PK".to_vec()), Err(GgufError::BadMagic { .. })));
    assert!(matches!(GgufFile::from_bytes(b"GG".to_vec()), Err(GgufError::Truncated { .. })));
    assert!(matches!(GgufFile::from_bytes(Vec::new()), Err(GgufError::Truncated { .. })));

    let e = Raw::new(1, 0, 0).err();
    assert!(matches!(e, GgufError::UnsupportedVersion { version: 1, .. }));
    assert!(e.to_string().contains("version 1"), "{e}");
    assert!(matches!(Raw::new(99, 0, 0).err(), GgufError::UnsupportedVersion { version: 99, .. }));
    let big_endian = Raw::new(3u32.swap_bytes(), 0, 0).err();
    assert!(big_endian.to_string().contains("big-endian"), "{big_endian}");
}

#[test]
fn gguf_malformed_absurd_counts_fail_without_allocating() {
    for count in [u64::MAX, 1 << 40, 1 << 20] {
        let (e, largest) = parse_err_and_largest_alloc(Raw::new(3, count, 0).data(32, 64).0);
        assert!(matches!(e, GgufError::TooManyTensors { count: c, .. } if c == count), "{e}");
        assert!(largest < 64 << 10, "allocated {largest} bytes for {count} tensors");
        let (e, largest) = parse_err_and_largest_alloc(Raw::new(3, 0, count).data(32, 64).0);
        assert!(matches!(e, GgufError::TooManyKvs { count: c, .. } if c == count), "{e}");
        assert!(largest < 64 << 10, "allocated {largest} bytes for {count} keys");
    }
}

#[test]
fn gguf_malformed_counts_over_the_caps_fail_even_when_backed() {
    use strata_model::gguf::{MAX_METADATA_VALUES, MAX_TENSORS};
    // Enough bytes for the claim, but more tensors than any model has.
    let e = Raw::new(3, MAX_TENSORS + 1, 0).data(1, 40 << 20).err();
    assert!(matches!(e, GgufError::TooManyTensors { max: MAX_TENSORS, .. }), "{e}");
    // A u8 array backed byte for byte, but whose values would cost 32× the file in memory.
    let big = Raw::new(3, 0, 1).str("k").u32(TYPE_ARRAY).u32(TYPE_U8).u64(MAX_METADATA_VALUES + 1);
    let e = big.data(1, (MAX_METADATA_VALUES + 1) as usize).err();
    assert!(matches!(e, GgufError::ArrayTooLong { max: MAX_METADATA_VALUES, .. }), "{e}");
}

#[test]
fn gguf_malformed_absurd_lengths_fail_without_allocating() {
    let key = |len: u64| Raw::new(3, 0, 1).u64(len).data(1, 64).0;
    let string = |len: u64| Raw::new(3, 0, 1).str("k").u32(TYPE_STRING).u64(len).data(1, 64).0;
    let array = |elem: u32, len: u64| Raw::new(3, 0, 1).str("k").u32(TYPE_ARRAY).u32(elem).u64(len).data(1, 64).0;
    for len in [u64::MAX, 1 << 40] {
        let (e, largest) = parse_err_and_largest_alloc(key(len));
        assert!(matches!(e, GgufError::StringTooLong { .. }), "{e}");
        assert!(largest < 64 << 10);
        let (e, largest) = parse_err_and_largest_alloc(string(len));
        assert!(matches!(e, GgufError::StringTooLong { len: l, .. } if l == len), "{e}");
        assert!(largest < 64 << 10);
        for elem in [TYPE_U8, TYPE_STRING, TYPE_ARRAY] {
            let (e, largest) = parse_err_and_largest_alloc(array(elem, len));
            assert!(matches!(e, GgufError::ArrayTooLong { len: l, max, .. } if l == len && max <= 64), "{e}");
            assert!(largest < 64 << 10);
        }
    }
    // Under the cap but longer than the file.
    assert!(matches!(GgufFile::from_bytes(string(1000)), Err(GgufError::Truncated { need: 1000, have: 64, .. })));
    // A nested array whose inner length is absurd.
    let nested = Raw::new(3, 0, 1).str("k").u32(TYPE_ARRAY).u32(TYPE_ARRAY).u64(1).u32(TYPE_U8).u64(1 << 50);
    assert!(matches!(nested.data(1, 16).err(), GgufError::ArrayTooLong { .. }));
    // A tensor name over the spec's 64 bytes, and an absurd rank.
    let long_name = Raw::new(3, 1, 0).tensor(&"n".repeat(65), &[8], F32, 0).data(32, 32).err();
    assert!(matches!(long_name, GgufError::StringTooLong { len: 65, max: 64, .. }), "{long_name}");
    let (e, largest) = parse_err_and_largest_alloc(Raw::new(3, 1, 0).str("t").u32(u32::MAX).data(1, 64).0);
    assert!(matches!(e, GgufError::BadRank { rank: u32::MAX, .. }), "{e}");
    assert!(largest < 64 << 10);
}

#[test]
fn gguf_malformed_metadata() {
    // A file of one metadata entry, written by `entry`, and some spare bytes.
    let one = |entry: &dyn Fn(Raw) -> Raw| entry(Raw::new(3, 0, 1)).data(1, 8).err();
    assert!(matches!(one(&|r| r.str("k").u32(13).u32(0)), GgufError::UnknownValueType { id: 13, .. }));
    let unknown_elem = one(&|r| r.str("k").u32(TYPE_ARRAY).u32(99).u64(0));
    assert!(matches!(unknown_elem, GgufError::UnknownValueType { id: 99, .. }));
    assert!(matches!(one(&|r| r.str("k").u32(TYPE_BOOL).bytes(&[2])), GgufError::BadBool { value: 2, .. }));
    let bad_key = one(&|r| r.u64(2).bytes(&[0xff, 0xfe]).u32(TYPE_U8).bytes(&[1]));
    assert!(matches!(bad_key, GgufError::InvalidUtf8 { .. }), "{bad_key}");
    let bad_value = one(&|r| r.str("k").u32(TYPE_STRING).u64(2).bytes(&[0xc3, 0x28]));
    assert!(matches!(bad_value, GgufError::InvalidUtf8 { .. }), "{bad_value}");
    assert!(matches!(one(&|r| r.str("").u32(TYPE_U8).bytes(&[1])), GgufError::EmptyName { .. }));

    // `levels` arrays nested in each other, the innermost empty.
    let nested = |levels: usize| {
        let outer = (1..levels).fold(Raw::new(3, 0, 1).str("k").u32(TYPE_ARRAY), |r, _| r.u32(TYPE_ARRAY).u64(1));
        outer.u32(TYPE_U8).u64(0)
    };
    assert!(nested(4).parse().is_ok());
    assert!(matches!(nested(5).err(), GgufError::NestingTooDeep { depth: 5, .. }));

    let dup = Raw::new(3, 0, 2).kv_u32("a", 1).kv_u32("a", 2).err();
    assert!(matches!(dup, GgufError::DuplicateKey { key } if key == "a"));
}

#[test]
fn gguf_malformed_alignment() {
    let with_alignment = |a: u32| Raw::new(3, 1, 1).kv_u32("general.alignment", a).tensor("t", &[8], F32, 0);
    for a in [0, 3, 48, 1 << 21] {
        let e = with_alignment(a).data(32, 32).err();
        assert!(matches!(e, GgufError::BadAlignment { value, .. } if value == u64::from(a)), "{a}: {e}");
    }
    let as_u64 = Raw::new(3, 0, 1).str("general.alignment").u32(TYPE_U64).u64(32).err();
    assert!(matches!(as_u64, GgufError::BadValue { .. }), "{as_u64}");
    let f = with_alignment(64).data(64, 32).parse().unwrap();
    assert_eq!((f.alignment(), f.data_offset() % 64), (64, 0));
}

#[test]
fn gguf_malformed_tensor_infos() {
    let t = |dims: &[u64], ty: u32, rel: u64| Raw::new(3, 1, 0).tensor("t", dims, ty, rel).data(32, 256).err();
    for id in [4, 31, 36, 1000] {
        assert!(matches!(t(&[8], id, 0), GgufError::UnknownTensorType { id: i, .. } if i == id));
    }
    assert!(t(&[8], 31, 0).to_string().contains("removed"));
    assert!(matches!(t(&[], F32, 0), GgufError::BadRank { rank: 0, .. }));
    assert!(matches!(t(&[1; 5], F32, 0), GgufError::BadRank { rank: 5, .. }));
    assert!(matches!(t(&[8, 0], F32, 0), GgufError::BadDims { .. }));
    assert!(matches!(t(&[33], Q8_0, 0), GgufError::BadDims { .. }));
    assert!(matches!(t(&[1 << 32, 1 << 32], F32, 0), GgufError::Overflow { .. }));
    assert!(matches!(t(&[1 << 62], F32, 0), GgufError::Overflow { .. }));
    assert!(matches!(t(&[8], F32, 4), GgufError::BadTensorOffset { .. }));
    assert!(matches!(t(&[8], F32, 1 << 40), GgufError::BadTensorOffset { .. }));
    assert!(matches!(t(&[8], F32, u64::MAX - 31), GgufError::BadTensorOffset { .. }));
    assert!(matches!(t(&[128], F32, 0), GgufError::BadTensorOffset { .. }), "512 bytes in 256");
    assert!(matches!(Raw::new(3, 1, 0).tensor("", &[8], F32, 0).data(32, 32).err(), GgufError::EmptyName { .. }));
    let bad_name = Raw::new(3, 1, 0).u64(1).bytes(&[0x80]).u32(1).u64(8).u32(F32).u64(0).data(32, 32).err();
    assert!(matches!(bad_name, GgufError::InvalidUtf8 { .. }));
}

#[test]
fn gguf_malformed_tensor_layout() {
    let two = |a: (&str, u64, u64), b: (&str, u64, u64)| {
        Raw::new(3, 2, 0).tensor(a.0, &[a.1], F32, a.2).tensor(b.0, &[b.1], F32, b.2).data(32, 256)
    };
    // a: 64 bytes at 0; b at 32 overlaps it, at 64 does not.
    let e = two(("a", 16, 0), ("b", 8, 32)).err();
    assert!(
        matches!(&e, GgufError::BadTensorOffset { tensor, reason, .. } if tensor == "b" && reason.contains("overlaps"))
    );
    let e = two(("a", 8, 96), ("b", 8, 96)).err();
    assert!(matches!(e, GgufError::BadTensorOffset { .. }), "same offset: {e}");
    let e = two(("a", 16, 64), ("b", 32, 0)).err();
    assert!(matches!(&e, GgufError::BadTensorOffset { tensor, .. } if tensor == "a"), "out of order: {e}");
    assert!(two(("a", 16, 64), ("b", 16, 0)).parse().is_ok());
    assert!(matches!(two(("a", 8, 0), ("a", 8, 32)).err(), GgufError::DuplicateTensor { tensor } if tensor == "a"));
}

/// One change to a valid file.
#[derive(Debug, Clone)]
enum Mutation {
    Flip { at: usize, bit: u8 },
    PutU32 { at: usize, value: u32 },
    PutU64 { at: usize, value: u64 },
    Truncate { len: usize },
    Insert { at: usize, bytes: Vec<u8> },
    Remove { at: usize, n: usize },
}

impl Mutation {
    fn apply(&self, b: &mut Vec<u8>) {
        let len = b.len().max(1);
        match *self {
            Mutation::Flip { at, bit } => {
                if let Some(x) = b.get_mut(at % len) {
                    *x ^= 1 << bit;
                }
            }
            Mutation::PutU32 { at, value } => put(b, at % len, &value.to_le_bytes()),
            Mutation::PutU64 { at, value } => put(b, at % len, &value.to_le_bytes()),
            Mutation::Truncate { len: n } => b.truncate(n % len),
            Mutation::Insert { at, ref bytes } => {
                let at = at % len.min(b.len() + 1);
                b.splice(at..at, bytes.iter().copied());
            }
            Mutation::Remove { at, n } => {
                let at = at % len;
                b.drain(at.min(b.len())..(at + n).min(b.len()));
            }
        }
    }
}

fn put(b: &mut [u8], at: usize, v: &[u8]) {
    for (dst, src) in b.iter_mut().skip(at).zip(v) {
        *dst = *src;
    }
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let u64s = prop_oneof![Just(0u64), Just(1), Just(u64::MAX), Just(1 << 40), Just(1 << 63), 0u64..4096, any::<u64>()];
    let u32s = prop_oneof![Just(0u32), 0u32..64, Just(u32::MAX), any::<u32>()];
    prop_oneof![
        (any::<usize>(), 0u8..8).prop_map(|(at, bit)| Mutation::Flip { at, bit }),
        (any::<usize>(), u32s).prop_map(|(at, value)| Mutation::PutU32 { at, value }),
        (any::<usize>(), u64s).prop_map(|(at, value)| Mutation::PutU64 { at, value }),
        any::<usize>().prop_map(|len| Mutation::Truncate { len }),
        (any::<usize>(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
        (any::<usize>(), 1usize..16).prop_map(|(at, n)| Mutation::Remove { at, n }),
    ]
}

/// `STRATA_TEST_CASES` caps the number of cases (default 512).
fn config() -> ProptestConfig {
    let cases = std::env::var("STRATA_TEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(512);
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

/// A small valid file for mutation: a few keys of several types and three tensors, so random
/// positions land in every part of the format.
fn small() -> Vec<u8> {
    let mut w = GgufWriter::new();
    let md = w.metadata_mut();
    md.set("general.architecture", Value::String("llama".into()));
    md.set("llama.block_count", Value::U32(1));
    md.set("tokenizer.ggml.tokens", Value::Array(vec![Value::String("a".into()), Value::String("bc".into())]));
    md.set("x.nested", Value::Array(vec![Value::Array(vec![Value::I16(-1)])]));
    md.set("x.flag", Value::Bool(true));
    w.add_tensor("blk.0.a", GgmlType::F32, &[3, 2]).unwrap();
    w.add_tensor("blk.0.b", GgmlType::Q8_0, &[32]).unwrap();
    w.add_tensor("c", GgmlType::F16, &[5]).unwrap();
    // The newer types: a super-block type with two rows, and 32-value blocks.
    w.add_tensor("blk.0.k", GgmlType::Q4_K, &[256, 2]).unwrap();
    w.add_tensor("blk.0.l", GgmlType::Q6_K, &[256]).unwrap();
    w.add_tensor("blk.0.m", GgmlType::Q5_0, &[64]).unwrap();
    w.add_tensor("blk.0.n", GgmlType::IQ4_XS, &[256]).unwrap();
    w.to_bytes(pattern).unwrap()
}

/// Dequantizes every row of every tensor of `f` whose type strata computes with: Ok or a typed
/// error, never a panic, and each value NaN/inf only where the block has a non-finite scale.
fn dequantize_all(f: &GgufFile) -> Result<(), TestCaseError> {
    for t in f.tensors() {
        let Some(dt) = t.dtype() else { continue };
        let Some(kt) = dt.weight() else { continue };
        let row = t.dims[0] as usize;
        let data = f.tensor_data(t);
        let row_bytes = kt.row_bytes(row).map_err(|e| TestCaseError::fail(format!("{}: {e}", t.name)))?;
        for bytes in data.chunks(row_bytes) {
            let mut out = vec![0.0f32; row];
            strata_kernels::quant::dequantize_row(kt, bytes, &mut out)
                .map_err(|e| TestCaseError::fail(format!("{}: {e}", t.name)))?;
            if kt.is_quantized() && strata_kernels::quant::find_nonfinite_scale(kt, bytes).is_none() {
                prop_assert!(out.iter().all(|v| v.is_finite()), "{}: finite scales gave a non-finite value", t.name);
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn gguf_malformed_mutations_never_panic(mutations in prop::collection::vec(mutation(), 1..5)) {
        let mut bytes = small();
        for m in &mutations {
            m.apply(&mut bytes);
        }
        // Ok or Err, never a panic; what an Ok file hands out is in bounds, and its tensors
        // dequantize (whatever the bytes) without a panic.
        if let Ok(f) = GgufFile::from_bytes(bytes) {
            for t in f.tensors() {
                prop_assert_eq!(f.tensor_data(t).len() as u64, t.n_bytes);
                prop_assert_eq!(t.offset % f.alignment(), 0);
                prop_assert!(f.tensor(&t.name).is_some());
            }
            dequantize_all(&f)?;
        }
    }
}

/// The K-quants and the other new weight types: a row length that is not a whole number of
/// (super-)blocks and data shorter than the type needs are errors naming the tensor; valid
/// tensors map to strata dtypes; binary16 scales that decode to NaN or infinity parse (the
/// reader does not read tensor data) and dequantize to non-finite values, which
/// `quant::find_nonfinite_scale` locates (see `strata_kernels::quant`'s module doc).
#[test]
fn gguf_malformed_new_weight_types() {
    const Q4_K: u32 = 12;
    let one =
        |dims: &[u64], ty: u32, n: usize| Raw::new(3, 1, 0).tensor("blk.0.ffn_down.weight", dims, ty, 0).data(32, n);
    for (ty, id, block, size) in [
        (GgmlType::Q5_0, 6, 32, 22),
        (GgmlType::Q5_1, 7, 32, 24),
        (GgmlType::Q2_K, 10, 256, 84),
        (GgmlType::Q3_K, 11, 256, 110),
        (GgmlType::Q4_K, 12, 256, 144),
        (GgmlType::Q5_K, 13, 256, 176),
        (GgmlType::Q6_K, 14, 256, 210),
        (GgmlType::IQ4_NL, 20, 32, 18),
        (GgmlType::IQ4_XS, 23, 256, 136),
    ] {
        assert_eq!(ty.id(), id);
        let f = one(&[2 * block, 3], id, 6 * size as usize).parse().unwrap_or_else(|e| panic!("{ty}: {e}"));
        let dtype = f.tensors()[0].dtype().unwrap_or_else(|| panic!("{ty} maps to no strata dtype"));
        assert_eq!(dtype.name(), ty.name());
        let e = one(&[block * 3 / 2, 3], id, 1 << 12).err();
        assert!(
            matches!(&e, GgufError::BadDims { tensor, .. } if tensor == "blk.0.ffn_down.weight"),
            "{ty}: a partial block is an error naming the tensor, got {e}"
        );
        let e = one(&[2 * block, 3], id, 6 * size as usize - 1).err();
        assert!(
            matches!(&e, GgufError::BadTensorOffset { tensor, .. } if tensor == "blk.0.ffn_down.weight"),
            "{ty}: truncated data is an error naming the tensor, got {e}"
        );
    }
    let e = one(&[640, 4], Q4_K, 1 << 12).err().to_string();
    assert!(e.contains("blk.0.ffn_down.weight") && e.contains("640") && e.contains("256"), "{e}");

    // Q4_K blocks whose d is NaN (block 0) and +inf (block 1): the file parses, the values are
    // not finite, and the scan names block 0.
    let mut raw = one(&[512, 1], Q4_K, 288);
    let data = raw.0.len() - 288;
    raw.0[data..data + 2].copy_from_slice(&0x7E00u16.to_le_bytes());
    raw.0[data + 144..data + 146].copy_from_slice(&0x7C00u16.to_le_bytes());
    let f = raw.parse().expect("scales are not checked when parsing");
    let info = &f.tensors()[0];
    let bytes = f.tensor_data(info);
    let kt = strata_kernels::DType::Q4_K;
    assert_eq!(strata_kernels::quant::find_nonfinite_scale(kt, bytes), Some(0));
    let mut values = vec![0.0f32; 512];
    strata_kernels::quant::dequantize_row(kt, bytes, &mut values).expect("dequantize");
    assert!(values.iter().all(|v| !v.is_finite()), "NaN/inf scales must not give finite values");
}
