//! Parity of the model core with independent references.
//!
//! Expected numbers come from PyTorch 2.15 `nn.GRU` and onnxruntime 1.32's GRU
//! operator, written by `scripts/reference/make_fixtures.py` (pinned in
//! `scripts/reference/requirements.txt`). The fixtures have distinct per-gate
//! weights, non-zero initial states, T ≥ 10, 2–3 layers and variable lengths,
//! so the two reset modes give visibly different numbers (the script checks
//! they differ by > 1e-2).

mod common;

use candle_core::{DType, Device, Tensor};
use common::*;
use gru_serve::formats::pytorch::{import_pytorch, PytorchNames};
use gru_serve::model::{Backend, GruModel, ResetMode, Task};

const TOL: f64 = 1e-5;

fn check_fixture(model: &GruModel, data: &str, backend: Backend) {
    let model = model.clone().with_backend(backend);
    let d = load_data(data);
    let lens = lengths(&d);
    let (ys, h_n) = model.forward(&d["x"], &lens, Some(&d["h0"])).unwrap();
    let want = if model.head().is_some() {
        &d["y"]
    } else {
        &d["y_hidden"]
    };
    assert_close(&format!("{data} outputs ({backend:?})"), &ys, want, TOL);
    assert_close(
        &format!("{data} final state ({backend:?})"),
        &h_n,
        &d["h_n"],
        TOL,
    );
}

fn torch_l2() -> GruModel {
    import_pytorch(
        &fixture("torch_gru_l2.safetensors"),
        &PytorchNames::default(),
        Task::Regression,
        &Device::Cpu,
    )
    .unwrap()
}

#[test]
fn pytorch_two_layers_with_head() {
    let m = torch_l2();
    assert_eq!(m.config().num_layers, 2);
    assert_eq!(m.config().output_size, Some(3));
    assert_eq!(m.config().reset_mode, ResetMode::AfterMatmul);
    for backend in [Backend::Fused, Backend::Reference] {
        check_fixture(&m, "torch_gru_l2.data.safetensors", backend);
    }
}

#[test]
fn pytorch_three_layers_no_prefix_no_head() {
    let m = import_pytorch(
        &fixture("torch_gru_l3_nohead.safetensors"),
        &PytorchNames::default(),
        Task::Regression,
        &Device::Cpu,
    )
    .unwrap();
    assert_eq!(m.config().num_layers, 3);
    assert!(m.head().is_none());
    for backend in [Backend::Fused, Backend::Reference] {
        check_fixture(&m, "torch_gru_l3_nohead.data.safetensors", backend);
    }
}

/// The benchmark-shape fixtures (I = 64, H = 256, B = 64, T = 100, ragged
/// lengths, one layer): B = 64 > 4 rows, so the fused forward multiplies
/// through the packed AVX-512 kernel where the CPU has AVX-512F and through
/// the gemm crate elsewhere (and in both cases through the gemm crate at the
/// last steps, where ≤ 4 rows are still running). The data files hold the
/// outputs at every 10th step and the final states (see make_fixtures.py).
/// Returns the largest differences (outputs, final states) for the log.
fn check_h256_fixture(model: &GruModel, data: &str) -> (f64, f64) {
    let d = load_data(data);
    let lens = lengths(&d);
    assert_eq!(d["x"].dims(), &[64, 100, 64]);
    assert!(lens.contains(&1) && lens.contains(&100), "{lens:?}");
    let (ys, h_n) = model.forward(&d["x"], &lens, Some(&d["h0"])).unwrap();
    let steps: Vec<u32> = d["steps"]
        .to_vec1::<i64>()
        .unwrap()
        .into_iter()
        .map(|s| s as u32)
        .collect();
    let idx = Tensor::new(steps.as_slice(), &Device::Cpu).unwrap();
    let at_steps = ys.index_select(&idx, 1).unwrap();
    let want = &d["y_hidden_at_steps"];
    assert_close(
        &format!("{data} outputs at steps {steps:?}"),
        &at_steps,
        want,
        TOL,
    );
    assert_close(&format!("{data} final state"), &h_n, &d["h_n"], TOL);
    // One layer: each row's output at its own last step is its final state.
    let last: Vec<Tensor> = lens
        .iter()
        .enumerate()
        .map(|(b, &len)| ys.get(b).unwrap().get(len - 1).unwrap())
        .collect();
    let last = Tensor::stack(&last, 0).unwrap().unsqueeze(0).unwrap();
    assert_close(
        &format!("{data} output at the last step"),
        &last,
        &d["h_n"],
        TOL,
    );
    let diffs = (
        max_abs_diff(&at_steps, want).max(max_abs_diff(&last, &d["h_n"])),
        max_abs_diff(&h_n, &d["h_n"]),
    );
    eprintln!(
        "{data}: max |diff| outputs {:e}, final states {:e} (packed AVX-512 kernel: {})",
        diffs.0,
        diffs.1,
        has_avx512f()
    );
    diffs
}

fn has_avx512f() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// after_matmul at the benchmarked shape against PyTorch 2.15 `nn.GRU`.
#[test]
fn pytorch_at_the_benchmark_shape() {
    let m = import_pytorch(
        &fixture("torch_gru_h256.safetensors"),
        &PytorchNames::default(),
        Task::Regression,
        &Device::Cpu,
    )
    .unwrap();
    assert_eq!(m.config().hidden_size, 256);
    assert_eq!(m.config().reset_mode, ResetMode::AfterMatmul);
    check_h256_fixture(&m, "torch_gru_h256.data.safetensors");
}

/// Every file in tests/fixtures/ is listed in SHA256SUMS (written by
/// make_fixtures.py) with the hash of its bytes, and every listed file exists.
#[test]
fn fixtures_match_their_sha256_manifest() {
    use sha2::{Digest, Sha256};
    let manifest =
        std::fs::read_to_string(fixture("SHA256SUMS")).expect("tests/fixtures/SHA256SUMS");
    let mut listed = std::collections::BTreeMap::new();
    for line in manifest.lines() {
        let (hash, name) = line
            .split_once("  ")
            .unwrap_or_else(|| panic!("SHA256SUMS: not `HASH  NAME`: {line:?}"));
        assert_eq!(hash.len(), 64, "SHA256SUMS: {line:?}");
        assert!(
            listed.insert(name.to_string(), hash.to_string()).is_none(),
            "{name} listed twice"
        );
    }
    let mut on_disk: Vec<String> = std::fs::read_dir(fixture(""))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n != "SHA256SUMS")
        .collect();
    on_disk.sort();
    assert_eq!(
        on_disk,
        listed.keys().cloned().collect::<Vec<_>>(),
        "files in tests/fixtures vs SHA256SUMS"
    );
    for (name, want) in &listed {
        let bytes = std::fs::read(fixture(name)).unwrap();
        let got: String = Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(&got, want, "{name}: SHA-256 differs from SHA256SUMS");
    }
}

#[cfg(feature = "onnx")]
mod onnx {
    use super::*;
    use gru_serve::formats::onnx::import_onnx;

    fn check(name: &str, mode: ResetMode, layers: usize) {
        let m = import_onnx(
            &fixture(&format!("{name}.onnx")),
            Task::Regression,
            &Device::Cpu,
        )
        .unwrap();
        assert_eq!(m.config().reset_mode, mode, "{name}");
        assert_eq!(m.config().num_layers, layers, "{name}");
        for backend in [Backend::Fused, Backend::Reference] {
            check_fixture(&m, &format!("{name}.data.safetensors"), backend);
        }
    }

    /// linear_before_reset = 0 is the seed's cell: checks `before_matmul`.
    #[test]
    fn onnx_lbr0_is_before_matmul() {
        check("onnx_gru_lbr0", ResetMode::BeforeMatmul, 2);
    }

    /// before_matmul at the benchmarked shape against onnxruntime 1.32's GRU
    /// (linear_before_reset = 0), itself checked against a float64 numpy SEED-GRU.
    #[test]
    fn onnx_lbr0_at_the_benchmark_shape() {
        let m = import_onnx(
            &fixture("onnx_gru_lbr0_h256.onnx"),
            Task::Regression,
            &Device::Cpu,
        )
        .unwrap();
        assert_eq!(m.config().hidden_size, 256);
        assert_eq!(m.config().reset_mode, ResetMode::BeforeMatmul);
        check_h256_fixture(&m, "onnx_gru_lbr0_h256.data.safetensors");
    }

    #[test]
    fn onnx_lbr1_is_after_matmul() {
        check("onnx_gru_lbr1", ResetMode::AfterMatmul, 2);
    }

    #[test]
    fn onnx_layout1() {
        check("onnx_gru_layout1", ResetMode::AfterMatmul, 1);
    }

    #[test]
    fn onnx_refusals_name_what_was_found() {
        let e = import_onnx(
            &fixture("onnx_gru_bad_bidirectional.onnx"),
            Task::Regression,
            &Device::Cpu,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("bidirectional"), "{e}");
        let e = import_onnx(
            &fixture("onnx_gru_bad_op.onnx"),
            Task::Regression,
            &Device::Cpu,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("Relu"), "{e}");
    }

    /// The same weights in the two reset modes differ: the fixtures can tell them apart.
    #[test]
    fn reset_modes_differ_on_the_fixtures() {
        let m0 = import_onnx(
            &fixture("onnx_gru_lbr0.onnx"),
            Task::Regression,
            &Device::Cpu,
        )
        .unwrap();
        let d = load_data("onnx_gru_lbr1.data.safetensors");
        let (ys, _) = m0.forward(&d["x"], &lengths(&d), Some(&d["h0"])).unwrap();
        assert!(max_abs_diff(&ys, &d["y"]) > 1e-2);
    }
}

/// Stepping one step at a time reproduces the sequence forward (≤ 1e-6).
#[test]
fn stepping_equals_sequence_forward() {
    for mode in [ResetMode::AfterMatmul, ResetMode::BeforeMatmul] {
        let cfg = gru_serve::model::ModelConfig::new(5, 16, 2)
            .with_head(3)
            .with_reset_mode(mode);
        let m = GruModel::init(cfg, 7, &Device::Cpu).unwrap();
        let (b, t) = (3, 11);
        let xs = rand_tensor(&[b, t, 5], 1, 1.0);
        let h0 = rand_tensor(&[2, b, 16], 2, 0.5);
        let lens = [11, 4, 7];
        let (ys, h_n) = m.forward(&xs, &lens, Some(&h0)).unwrap();
        for (row, &len) in lens.iter().enumerate() {
            let mut state = h0.narrow(1, row, 1).unwrap();
            for step in 0..len {
                let x = xs.get(row).unwrap().narrow(0, step, 1).unwrap();
                let (y, s) = m.step(&x, &state).unwrap();
                state = s;
                let want = ys.get(row).unwrap().narrow(0, step, 1).unwrap();
                assert_close(&format!("{mode:?} row {row} step {step}"), &y, &want, 1e-6);
            }
            let want = h_n.narrow(1, row, 1).unwrap();
            assert_close(&format!("{mode:?} row {row} final"), &state, &want, 1e-6);
        }
        // Padded positions are exactly zero.
        let pad = ys.get(1).unwrap().narrow(0, 4, 7).unwrap();
        assert_eq!(max_abs_diff(&pad, &pad.zeros_like().unwrap()), 0.0);
    }
}

/// The fused CPU kernels and the candle-op reference agree, both modes, f32 and f64.
#[test]
fn fused_kernels_match_reference_ops() {
    for mode in [ResetMode::AfterMatmul, ResetMode::BeforeMatmul] {
        for dtype in [DType::F32, DType::F64] {
            let prec = gru_serve::model::Precision::from_dtype(dtype).unwrap();
            let cfg = gru_serve::model::ModelConfig::new(9, 33, 2)
                .with_reset_mode(mode)
                .with_dtype(prec);
            let m = GruModel::init(cfg, 11, &Device::Cpu).unwrap();
            let xs = rand_tensor(&[5, 13, 9], 3, 2.0).to_dtype(dtype).unwrap();
            let h0 = rand_tensor(&[2, 5, 33], 4, 0.9).to_dtype(dtype).unwrap();
            let lens = [13, 13, 2, 9, 1];
            let (a, ha) = m.forward(&xs, &lens, Some(&h0)).unwrap();
            let r = m.clone().with_backend(Backend::Reference);
            let (b, hb) = r.forward(&xs, &lens, Some(&h0)).unwrap();
            let tol = if dtype == DType::F64 { 1e-12 } else { 2e-6 };
            assert_close(&format!("{mode:?} {dtype:?} ys"), &a, &b, tol);
            assert_close(&format!("{mode:?} {dtype:?} h_n"), &ha, &hb, tol);
        }
    }
}

/// Shapes large enough that the fused forward projects the inputs in several
/// chunks of steps (256 KiB of gi each: 2 steps here in f32, 1 in f64), with
/// rows finishing inside and at the edges of chunks, a head and two layers.
#[test]
fn fused_matches_reference_across_input_projection_chunks() {
    for mode in [ResetMode::AfterMatmul, ResetMode::BeforeMatmul] {
        for dtype in [DType::F32, DType::F64] {
            let prec = gru_serve::model::Precision::from_dtype(dtype).unwrap();
            let cfg = gru_serve::model::ModelConfig::new(7, 200, 2)
                .with_head(3)
                .with_reset_mode(mode)
                .with_dtype(prec);
            let m = GruModel::init(cfg, 5, &Device::Cpu).unwrap();
            let (b, t) = (50, 7);
            let xs = rand_tensor(&[b, t, 7], 8, 1.5).to_dtype(dtype).unwrap();
            let h0 = rand_tensor(&[2, b, 200], 9, 0.9).to_dtype(dtype).unwrap();
            let lens: Vec<usize> = (0..b).map(|r| 1 + (r * 5) % t).collect();
            let r = m.clone().with_backend(Backend::Reference);
            let tol = if dtype == DType::F64 { 1e-12 } else { 5e-6 };
            for lens in [lens, vec![t; b]] {
                let (a, ha) = m.forward(&xs, &lens, Some(&h0)).unwrap();
                let (want, hw) = r.forward(&xs, &lens, Some(&h0)).unwrap();
                assert_close(&format!("{mode:?} {dtype:?} ys"), &a, &want, tol);
                assert_close(&format!("{mode:?} {dtype:?} h_n"), &ha, &hw, tol);
            }
            // And without a head (the top layer writes [B, T, H] directly).
            let cfg = gru_serve::model::ModelConfig::new(7, 200, 1)
                .with_reset_mode(mode)
                .with_dtype(prec);
            let m = GruModel::init(cfg, 6, &Device::Cpu).unwrap();
            let r = m.clone().with_backend(Backend::Reference);
            let h0 = h0.narrow(0, 0, 1).unwrap();
            let lens: Vec<usize> = (0..b).map(|r| t - (r * 3) % t).collect();
            let (a, ha) = m.forward(&xs, &lens, Some(&h0)).unwrap();
            let (want, hw) = r.forward(&xs, &lens, Some(&h0)).unwrap();
            assert_close(&format!("{mode:?} {dtype:?} ys, no head"), &a, &want, tol);
            assert_close(&format!("{mode:?} {dtype:?} h_n, no head"), &ha, &hw, tol);
        }
    }
}

/// Zero weights: z = ½ and the candidate is 0, so h_t = ½ h_{t−1} exactly.
#[test]
fn zero_weights_halve_the_state() {
    let cfg = gru_serve::model::ModelConfig::new(2, 4, 1);
    let m = GruModel::init(cfg.clone(), 0, &Device::Cpu).unwrap();
    let zero = |t: &Tensor| t.zeros_like().unwrap();
    let l = &m.layers()[0];
    let p = l.params();
    let layer = gru_serve::model::GruLayer::new(
        l.mode(),
        gru_serve::model::LayerParams {
            w_ih: zero(&p.w_ih),
            w_hh: zero(&p.w_hh),
            b_ih: zero(&p.b_ih),
            b_hh: zero(&p.b_hh),
        },
    )
    .unwrap();
    let m = GruModel::new(cfg, vec![layer], None).unwrap();
    let h0 = Tensor::new(&[[[0.8f32, -0.4, 0.2, 1.0]]], &Device::Cpu).unwrap();
    let x = Tensor::new(&[[0.3f32, -2.0]], &Device::Cpu).unwrap();
    let (_, h1) = m.step(&x, &h0).unwrap();
    assert_close("h1", &h1, &(h0 * 0.5).unwrap(), 1e-7);
}

#[test]
fn bad_inputs_are_refused_with_a_message() {
    let m = torch_l2();
    let xs = Tensor::zeros((2, 4, 5), DType::F32, &Device::Cpu).unwrap();
    let err = |r: Result<_, gru_serve::model::ModelError>| r.map(|_| ()).unwrap_err().to_string();
    assert!(err(m.forward(&xs, &[4, 5], None)).contains("lengths[1] = 5"));
    assert!(err(m.forward(&xs, &[4], None)).contains("1 lengths for a batch of 2"));
    let xs6 = Tensor::zeros((2, 4, 6), DType::F32, &Device::Cpu).unwrap();
    assert!(err(m.forward(&xs6, &[4, 4], None)).contains("input_size is 5"));
    let bad_state = Tensor::zeros((1, 2, 7), DType::F32, &Device::Cpu).unwrap();
    assert!(err(m.forward(&xs, &[4, 4], Some(&bad_state))).contains("[2, 2, 7]"));
}

/// The shared comparison helpers fail on a NaN or an infinity anywhere, not
/// only at the first element (candle's `max` and `f32::max` skip a NaN).
#[test]
fn comparison_helpers_fail_on_a_late_nan_or_infinity() {
    use std::panic::{catch_unwind, AssertUnwindSafe};
    let fails = |f: &dyn Fn()| catch_unwind(AssertUnwindSafe(f)).is_err();
    let n = 64;
    let ok = vec![0.25f32; n];
    let t = |v: &[f32]| Tensor::from_slice(v, (8, 8), &Device::Cpu).unwrap();
    assert_close("same", &t(&ok), &t(&ok), 0.0);
    assert_eq!(max_abs_diff(&t(&ok), &t(&ok)), 0.0);
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let mut v = ok.clone();
        v[n - 1] = bad;
        let (good, bad_t) = (t(&ok), t(&v));
        assert!(
            fails(&|| assert_close("got", &bad_t, &good, 1e-5)),
            "{bad} in got"
        );
        assert!(
            fails(&|| assert_close("want", &good, &bad_t, 1e-5)),
            "{bad} in want"
        );
        assert!(
            fails(&|| assert_close("both", &bad_t, &bad_t, 1e-5)),
            "{bad} in both"
        );
        assert!(fails(&|| {
            max_abs_diff(&bad_t, &good);
        }));
        #[cfg(feature = "grpc")]
        {
            assert!(
                fails(&|| common::server::assert_close("got", &v, &ok)),
                "{bad}"
            );
            assert!(
                fails(&|| common::server::assert_close("want", &ok, &v)),
                "{bad}"
            );
        }
    }
    // Finite values keep their tolerance: 1e-3 apart passes at 1.1e-3, not at 1e-4.
    let mut v = ok.clone();
    v[40] += 1e-3;
    assert_close("at tol", &t(&v), &t(&ok), 1.1e-3);
    assert!(fails(&|| assert_close("over tol", &t(&v), &t(&ok), 1e-4)));
    #[cfg(feature = "grpc")]
    {
        common::server::assert_close("same", &ok, &ok);
        assert!(fails(&|| common::server::assert_close("over", &v, &ok)));
    }
}
