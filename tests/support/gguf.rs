//! Just enough of a GGUF reader to find tensors in the default model for the tests (the real,
//! validating parser belongs to strata-model). Test-only: it trusts the file.

use std::collections::HashMap;

pub struct Tensor {
    pub ggml_type: u32,
    pub dims: Vec<u64>,
    pub offset: usize,
}

pub struct Gguf {
    pub data: Vec<u8>,
    pub tensors: HashMap<String, Tensor>,
}

struct Cursor<'a> {
    b: &'a [u8],
    at: usize,
}

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> &[u8] {
        let s = &self.b[self.at..self.at + n];
        self.at += n;
        s
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take(4).try_into().unwrap())
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take(8).try_into().unwrap())
    }
    fn string(&mut self) -> String {
        let n = self.u64() as usize;
        String::from_utf8_lossy(self.take(n)).into_owned()
    }
    fn skip_value(&mut self, ty: u32) -> Option<u64> {
        match ty {
            0 | 1 | 7 => Some(self.take(1)[0] as u64),
            2 | 3 => Some(u16::from_le_bytes(self.take(2).try_into().unwrap()) as u64),
            4..=6 => Some(self.u32() as u64),
            10..=12 => Some(self.u64()),
            8 => {
                self.string();
                None
            }
            9 => {
                let (inner, n) = (self.u32(), self.u64());
                for _ in 0..n {
                    self.skip_value(inner);
                }
                None
            }
            t => panic!("unknown GGUF value type {t}"),
        }
    }
}

pub fn read(path: &std::path::Path) -> Gguf {
    let data = std::fs::read(path).unwrap();
    let mut c = Cursor { b: &data, at: 0 };
    assert_eq!(c.take(4), b"GGUF");
    let _version = c.u32();
    let (n_tensors, n_kv) = (c.u64(), c.u64());
    let mut alignment = 32u64;
    for _ in 0..n_kv {
        let key = c.string();
        let ty = c.u32();
        let v = c.skip_value(ty);
        if key == "general.alignment" {
            alignment = v.unwrap();
        }
    }
    let mut infos = Vec::new();
    for _ in 0..n_tensors {
        let name = c.string();
        let n_dims = c.u32();
        let dims: Vec<u64> = (0..n_dims).map(|_| c.u64()).collect();
        let ggml_type = c.u32();
        let offset = c.u64();
        infos.push((name, Tensor { ggml_type, dims, offset: offset as usize }));
    }
    let start = (c.at as u64).div_ceil(alignment) * alignment;
    let tensors = infos
        .into_iter()
        .map(|(n, mut t)| {
            t.offset += start as usize;
            (n, t)
        })
        .collect();
    Gguf { data, tensors }
}
