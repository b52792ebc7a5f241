//! What `strata inspect FILE` reports about a GGUF file: header facts, metadata summaries,
//! every tensor, and byte totals per layer and per type. [`Inspection`] serializes to JSON
//! (`--json`) and renders as an aligned text table.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;
use strata_tensor::fmt_bytes;

use crate::gguf::GgufFile;

/// Everything `strata inspect` shows about one file.
#[derive(Debug, Clone, Serialize)]
pub struct Inspection {
    /// The file inspected.
    pub path: String,
    /// Size of the file, bytes.
    pub file_bytes: u64,
    /// GGUF version.
    pub version: u32,
    /// Alignment of the data section and tensors, bytes.
    pub alignment: u64,
    /// Byte offset of the tensor data section.
    pub data_offset: u64,
    /// Number of tensors.
    pub tensor_count: usize,
    /// Every metadata key, in file order.
    pub metadata: Vec<MetadataEntry>,
    /// Every tensor, in file order.
    pub tensors: Vec<TensorEntry>,
    /// Tensors named `blk.N.*`, by N ascending.
    pub layers: Vec<LayerTotal>,
    /// Everything else (token_embd, output_norm, output …).
    pub non_layer: GroupTotal,
    /// Bytes of all tensors.
    pub total_bytes: u64,
    /// Elements of all tensors.
    pub total_elements: u64,
    /// Largest share first.
    pub bytes_by_type: Vec<TypeTotal>,
    /// The mixture-of-experts layout, for a file with experts.
    pub experts: Option<ExpertSummary>,
}

/// What the experts of a mixture-of-experts file weigh.
#[derive(Debug, Clone, Serialize)]
pub struct ExpertSummary {
    /// Experts per layer (`{arch}.expert_count`).
    pub count: u64,
    /// Experts per token (`{arch}.expert_used_count`).
    pub used: u64,
    /// Bytes of all expert tensors (`ffn_{gate,up,down}_exps`).
    pub bytes: u64,
    /// Bytes of one expert of one layer (gate, up and down), averaged over the layers.
    pub bytes_per_expert: u64,
    /// Weight bytes one token reads: everything but the experts, plus `used` experts per layer.
    pub active_bytes_per_token: u64,
}

/// One metadata key and a summary of its value.
#[derive(Debug, Clone, Serialize)]
pub struct MetadataEntry {
    /// The key.
    pub key: String,
    /// The value type (`u32`, `string`, `array` …).
    #[serde(rename = "type")]
    pub value_type: String,
    /// Arrays as `[type; len]`, long strings cut.
    pub summary: String,
}

/// One tensor of the file.
#[derive(Debug, Clone, Serialize)]
pub struct TensorEntry {
    /// The tensor name.
    pub name: String,
    /// The ggml type name (`f16`, `q4_K` …).
    #[serde(rename = "type")]
    pub ggml_type: String,
    /// GGUF order: `shape[0]` elements per row.
    pub shape: Vec<u64>,
    /// Number of elements.
    pub n_elements: u64,
    /// Size of the data, bytes.
    pub bytes: u64,
    /// Absolute byte offset of the data in the file.
    pub offset: u64,
}

/// Totals of one layer's tensors.
#[derive(Debug, Clone, Serialize)]
pub struct LayerTotal {
    /// The layer index N of `blk.N.*`.
    pub layer: u32,
    /// Number of tensors.
    pub tensors: usize,
    /// Bytes of these tensors.
    pub bytes: u64,
}

/// Totals of a group of tensors.
#[derive(Debug, Clone, Default, Serialize)]
pub struct GroupTotal {
    /// The tensor names.
    pub names: Vec<String>,
    /// Bytes of these tensors.
    pub bytes: u64,
}

/// Totals of the tensors of one ggml type.
#[derive(Debug, Clone, Serialize)]
pub struct TypeTotal {
    /// The ggml type name.
    #[serde(rename = "type")]
    pub ggml_type: String,
    /// Number of tensors of this type.
    pub tensors: usize,
    /// Elements of these tensors.
    pub elements: u64,
    /// Bytes of these tensors.
    pub bytes: u64,
    /// Whether strata computes with weights of this type (on the CPU at least).
    pub supported: bool,
}

/// Summarizes a validated file; `path` is only reported.
pub fn inspect(file: &GgufFile, path: &Path) -> Inspection {
    let metadata = file
        .metadata()
        .iter()
        .map(|(k, v)| MetadataEntry { key: k.into(), value_type: v.type_name().into(), summary: v.summary() })
        .collect();
    let mut layers: BTreeMap<u32, LayerTotal> = BTreeMap::new();
    let mut non_layer = GroupTotal::default();
    let mut by_type: BTreeMap<&str, TypeTotal> = BTreeMap::new();
    let mut tensors = Vec::with_capacity(file.tensors().len());
    for t in file.tensors() {
        match layer_of(&t.name) {
            Some(n) => {
                let l = layers.entry(n).or_insert(LayerTotal { layer: n, tensors: 0, bytes: 0 });
                l.tensors += 1;
                l.bytes += t.n_bytes;
            }
            None => {
                non_layer.names.push(t.name.clone());
                non_layer.bytes += t.n_bytes;
            }
        }
        let ty = by_type.entry(t.ggml_type.name()).or_insert_with(|| TypeTotal {
            ggml_type: t.ggml_type.name().into(),
            tensors: 0,
            elements: 0,
            bytes: 0,
            supported: t.dtype().and_then(|d| d.weight()).is_some(),
        });
        ty.tensors += 1;
        ty.elements += t.n_elements();
        ty.bytes += t.n_bytes;
        tensors.push(TensorEntry {
            name: t.name.clone(),
            ggml_type: t.ggml_type.name().into(),
            shape: t.dims.clone(),
            n_elements: t.n_elements(),
            bytes: t.n_bytes,
            offset: t.offset,
        });
    }
    let experts = expert_summary(file, &tensors);
    let mut bytes_by_type: Vec<TypeTotal> = by_type.into_values().collect();
    bytes_by_type.sort_by(|a, b| b.bytes.cmp(&a.bytes).then_with(|| a.ggml_type.cmp(&b.ggml_type)));
    Inspection {
        path: path.display().to_string(),
        file_bytes: file.file_len(),
        version: file.version(),
        alignment: file.alignment(),
        data_offset: file.data_offset(),
        tensor_count: tensors.len(),
        metadata,
        total_bytes: tensors.iter().map(|t| t.bytes).sum(),
        total_elements: tensors.iter().map(|t| t.n_elements).sum(),
        tensors,
        layers: layers.into_values().collect(),
        non_layer,
        bytes_by_type,
        experts,
    }
}

/// The expert summary of a file whose architecture has `expert_count` > 0.
fn expert_summary(file: &GgufFile, tensors: &[TensorEntry]) -> Option<ExpertSummary> {
    let md = file.metadata();
    let arch = md.opt_str("general.architecture").ok()??;
    let count = md.opt_u64(&format!("{arch}.expert_count")).ok()?.filter(|&n| n > 0)?;
    let used = md.opt_u64(&format!("{arch}.expert_used_count")).ok()?.unwrap_or(0);
    let is_expert = |n: &str| n.ends_with("_exps.weight");
    let expert_tensors: Vec<&TensorEntry> = tensors.iter().filter(|t| is_expert(&t.name)).collect();
    let bytes: u64 = expert_tensors.iter().map(|t| t.bytes).sum();
    let layers =
        expert_tensors.iter().filter_map(|t| layer_of(&t.name)).collect::<std::collections::BTreeSet<_>>().len();
    let bytes_per_expert = bytes.checked_div(count * layers as u64).unwrap_or(0);
    let total: u64 = tensors.iter().map(|t| t.bytes).sum();
    let active_bytes_per_token = total - bytes + used.min(count) * bytes_per_expert * layers as u64;
    Some(ExpertSummary { count, used, bytes, bytes_per_expert, active_bytes_per_token })
}

/// N of a tensor named `blk.N.…`.
fn layer_of(name: &str) -> Option<u32> {
    name.strip_prefix("blk.")?.split('.').next()?.parse().ok()
}

impl Inspection {
    /// A readable report: header, metadata, tensors, per-layer and per-type totals, as
    /// aligned columns.
    pub fn render_table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "file        {} ({})", self.path, fmt_bytes(self.file_bytes));
        let _ = writeln!(
            out,
            "gguf        v{}, alignment {}, data at byte {}, {} metadata keys, {} tensors",
            self.version,
            self.alignment,
            self.data_offset,
            self.metadata.len(),
            self.tensor_count
        );
        let _ = writeln!(
            out,
            "weights     {} in {} elements\n",
            fmt_bytes(self.total_bytes),
            group_digits(self.total_elements)
        );

        if let Some(x) = &self.experts {
            let share = if self.total_bytes == 0 { 0.0 } else { 100.0 * x.bytes as f64 / self.total_bytes as f64 };
            let _ = writeln!(
                out,
                "experts     {} per layer, {} per token: {} of expert tensors ({share:.1}% of the weights), {} per \
                 expert per layer; a token reads {} of weights\n",
                x.count,
                x.used,
                fmt_bytes(x.bytes),
                fmt_bytes(x.bytes_per_expert),
                fmt_bytes(x.active_bytes_per_token)
            );
        }
        let rows = self.metadata.iter().map(|m| vec![m.key.clone(), m.value_type.clone(), m.summary.clone()]);
        section(&mut out, "metadata", &["key", "type", "value"], "lll", rows);

        let rows = self.tensors.iter().map(|t| {
            let shape = t.shape.iter().map(u64::to_string).collect::<Vec<_>>().join(" × ");
            let elements = group_digits(t.n_elements);
            vec![t.name.clone(), t.ggml_type.clone(), shape, elements, fmt_bytes(t.bytes), t.offset.to_string()]
        });
        section(&mut out, "tensors", &["name", "type", "shape", "elements", "size", "offset"], "lllrrr", rows);

        let mut rows: Vec<Vec<String>> = self
            .layers
            .iter()
            .map(|l| vec![l.layer.to_string(), l.tensors.to_string(), fmt_bytes(l.bytes), String::new()])
            .collect();
        if !self.non_layer.names.is_empty() {
            let g = &self.non_layer;
            rows.push(vec!["non-layer".into(), g.names.len().to_string(), fmt_bytes(g.bytes), g.names.join(", ")]);
        }
        section(&mut out, "layers", &["layer", "tensors", "size", ""], "rrrl", rows);

        let rows = self.bytes_by_type.iter().map(|t| {
            let share = if self.total_bytes == 0 { 0.0 } else { 100.0 * t.bytes as f64 / self.total_bytes as f64 };
            vec![
                t.ggml_type.clone(),
                t.tensors.to_string(),
                group_digits(t.elements),
                fmt_bytes(t.bytes),
                format!("{share:.1}%"),
                if t.supported { "yes" } else { "no" }.into(),
            ]
        });
        let header = ["type", "tensors", "elements", "size", "share", "supported"];
        section(&mut out, "by type", &header, "lrrrrl", rows);
        out
    }
}

/// Appends a titled table; `align` has one `l` or `r` per column.
fn section(out: &mut String, title: &str, header: &[&str], align: &str, rows: impl IntoIterator<Item = Vec<String>>) {
    let rows: Vec<Vec<String>> =
        std::iter::once(header.iter().map(|h| (*h).to_string()).collect()).chain(rows).collect();
    let mut widths = vec![0; header.len()];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let _ = writeln!(out, "{title}");
    for row in &rows {
        let mut line = String::from(" ");
        for ((cell, &w), a) in row.iter().zip(&widths).zip(align.chars()) {
            let _ = if a == 'r' { write!(line, " {cell:>w$}") } else { write!(line, " {cell:<w$}") };
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
    out.push('\n');
}

/// `1234567` → `1,234,567`.
fn group_digits(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
