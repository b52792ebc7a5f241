//! The reference dequantizer against known values of the real default model
//! (SmolLM2-135M-Instruct, Q4_1 weights and a Q8_0 embedding table), and the CUDA dequantizer
//! against the reference on whole real tensors.
//!
//! The expected values were produced independently by the `gguf` Python package
//! (`gguf.quants.dequantize`, llama.cpp's own reader) on the same file.

// The expected values are written exactly as the Python tool printed them.
#![allow(clippy::excessive_precision)]

use strata_kernels::DType;
use strata_kernels::check::{Tolerance, assert_close};

use crate::device_test;
use crate::support::gguf::{self, Gguf};
use crate::support::{Backend, Cpu};

struct Known {
    tensor: &'static str,
    row: usize,
    first8: [f32; 8],
    last4: [f32; 4],
    sum: f64,
}

const KNOWN: &[Known] = &[
    Known {
        tensor: "token_embd.weight",
        row: 0,
        first8: [
            -0.10654449462890625,
            0.032978057861328125,
            0.048198699951171875,
            -0.022830963134765625,
            -0.06849288940429688,
            -0.04566192626953125,
            0.020294189453125,
            -0.12176513671875,
        ],
        last4: [-0.013885498046875, -0.017852783203125, -0.251922607421875, 0.029754638671875],
        sum: -2.2541093826293945,
    },
    Known {
        tensor: "token_embd.weight",
        row: 49151,
        first8: [
            0.011505126953125,
            0.0057525634765625,
            0.0977935791015625,
            -0.0977935791015625,
            0.0862884521484375,
            -0.0460205078125,
            0.172576904296875,
            0.0517730712890625,
        ],
        last4: [0.07819175720214844, 0.12858200073242188, -0.11989402770996094, -0.0417022705078125],
        sum: -0.4662208557128906,
    },
    Known {
        tensor: "blk.0.attn_q.weight",
        row: 0,
        first8: [
            -0.0963134765625,
            0.1573486328125,
            -0.0963134765625,
            -0.73046875,
            1.1719970703125,
            -0.0963134765625,
            0.030517578125,
            0.6646728515625,
        ],
        last4: [-0.0665283203125, 0.503662109375, 0.503662109375, 0.12353515625],
        sum: 1.00726318359375,
    },
    Known {
        tensor: "blk.0.attn_q.weight",
        row: 575,
        first8: [
            -0.15679931640625,
            0.154327392578125,
            0.34100341796875,
            0.029876708984375,
            0.216552734375,
            -0.28125,
            0.09210205078125,
            -0.0323486328125,
        ],
        last4: [0.009185791015625, -0.096832275390625, -0.14984130859375, -0.255859375],
        sum: -4.734954833984375,
    },
    Known {
        tensor: "blk.29.ffn_down.weight",
        row: 3,
        first8: [
            0.19677734375,
            -0.0380859375,
            0.0206298828125,
            0.2554931640625,
            -0.0380859375,
            0.3729248046875,
            0.314208984375,
            0.079345703125,
        ],
        last4: [-0.07867431640625, -0.373046875, 0.17364501953125, 0.0474853515625],
        sum: -5.767303466796875,
    },
    Known {
        tensor: "blk.0.attn_k.weight",
        row: 191,
        first8: [
            0.015869140625,
            -0.4342041015625,
            0.015869140625,
            -0.7342529296875,
            0.4659423828125,
            0.4659423828125,
            0.015869140625,
            0.1658935546875,
        ],
        last4: [0.0125732421875, -0.250732421875, 0.1881103515625, 0.3636474609375],
        sum: 6.2149658203125,
    },
];

/// The default model, or `None` after counting the test as skipped (`STRATA_NO_MODEL=1`); a
/// missing model without that variable fails the test.
fn model(test: &str) -> Option<Gguf> {
    strata_kernels::check::model_or_skip(test).map(|p| gguf::read(&p))
}

/// (dtype, rows, cols, bytes) of a 2-D tensor of the model.
fn matrix<'a>(g: &'a Gguf, name: &str) -> (DType, usize, usize, &'a [u8]) {
    let t = &g.tensors[name];
    let dt = DType::from_ggml_type(t.ggml_type).unwrap_or_else(|| panic!("{name}: unsupported type {}", t.ggml_type));
    let (cols, rows) = (t.dims[0] as usize, t.dims[1] as usize);
    let len = dt.matrix_bytes(rows, cols).unwrap();
    (dt, rows, cols, &g.data[t.offset..t.offset + len])
}

#[test]
fn model_tensor_types_are_the_documented_ones() {
    let Some(g) = model("model::model_tensor_types_are_the_documented_ones") else { return };
    assert_eq!(matrix(&g, "token_embd.weight").0, DType::Q8_0);
    assert_eq!(matrix(&g, "blk.0.attn_q.weight").0, DType::Q4_1);
    assert_eq!(matrix(&g, "blk.0.ffn_down.weight").0, DType::Q4_1);
}

#[test]
fn dequantize_matches_known_model_values() {
    let Some(g) = model("model::dequantize_matches_known_model_values") else { return };
    for k in KNOWN {
        let (dt, rows, cols, w) = matrix(&g, k.tensor);
        let rb = dt.row_bytes(cols).unwrap();
        assert!(k.row < rows);
        let row = Cpu.dequantize_rows(dt, &w[k.row * rb..][..rb], 1, cols);
        assert_eq!(row[..8], k.first8, "{} row {}: first values", k.tensor, k.row);
        assert_eq!(row[cols - 4..], k.last4, "{} row {}: last values", k.tensor, k.row);
        let sum: f64 = row.iter().map(|&v| v as f64).sum();
        assert!((sum - k.sum).abs() < 1e-9, "{} row {}: sum {sum} want {}", k.tensor, k.row, k.sum);
    }
}

/// Whole real tensors (the 49152 x 576 Q8_0 embedding table, Q4_1 projections) dequantized on
/// the device, bit for bit equal to the reference.
fn real_tensors_body(dev: &dyn Backend) {
    let Some(g) = model(&format!("model::real_tensors::{}", dev.name())) else { return };
    for name in ["token_embd.weight", "blk.0.attn_q.weight", "blk.7.ffn_down.weight", "blk.29.ffn_up.weight"] {
        let (dt, rows, cols, w) = matrix(&g, name);
        let want = Cpu.dequantize_rows(dt, w, rows, cols);
        assert_close(
            &format!("{name}: {} vs cpu", dev.name()),
            &dev.dequantize_rows(dt, w, rows, cols),
            &want,
            Tolerance::STRICT,
        );
    }
}
device_test!(real_tensors, real_tensors_body);

/// The model policy, end to end in a child run of this binary with `STRATA_MODEL` naming a
/// file that does not exist: without `STRATA_NO_MODEL` a test that needs the model fails and
/// says what to do; with `STRATA_NO_MODEL=1` it passes as a counted skip, and the binary's
/// summary line reaches stderr (what cargo shows).
#[test]
fn a_missing_model_fails_unless_the_machine_opts_out() {
    let child = |no_model: Option<&str>| {
        let mut cmd = std::process::Command::new(std::env::current_exe().expect("this test binary"));
        cmd.args(["--exact", "model::model_tensor_types_are_the_documented_ones", "--test-threads", "1"])
            .env("STRATA_MODEL", "/nonexistent/strata-test/missing.gguf")
            .env_remove("STRATA_NO_MODEL");
        if let Some(v) = no_model {
            cmd.env("STRATA_NO_MODEL", v);
        }
        let out = cmd.output().expect("run the child");
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    };
    let (ok, text) = child(None);
    assert!(!ok, "a missing model must fail the test:\n{text}");
    assert!(
        text.contains("/nonexistent/strata-test/missing.gguf") && text.contains("scripts/fetch-model.sh"),
        "the failure names the file and the fix:\n{text}"
    );
    for v in ["0", ""] {
        let (ok, text) = child(Some(v));
        assert!(!ok, "STRATA_NO_MODEL={v:?} is not the opt-out:\n{text}");
    }
    let (ok, text) = child(Some("1"));
    assert!(ok && text.contains("1 passed"), "STRATA_NO_MODEL=1 makes it a skip:\n{text}");
    assert!(
        text.lines().any(|l| l == "skipped: 1 test in this binary: no model on this machine (STRATA_NO_MODEL=1)"),
        "the skip is counted and reported:\n{text}"
    );
}
