//! The model core's weight formats: the native folder (`config.json` +
//! `model.safetensors`) and PyTorch `nn.GRU` state dicts in safetensors.
//!
//! Where the expectations come from:
//! - **Round trips are bit-exact.** Saving/loading copies bytes; PyTorch
//!   import/export only transposes and negates the z blocks, and negation is
//!   exact in IEEE arithmetic (`formats/pytorch.rs` documents `layer_to_pytorch` as the
//!   bit-exact inverse of `layer_from_pytorch`). So round trips are compared bit for
//!   bit (`to_bits` / raw safetensors bytes), never within a tolerance.
//! - **Refusals name what is wrong.** `weights.rs` says loading checks every
//!   tensor's name, shape, dtype and finiteness against the config, and
//!   `ModelError`'s docs say messages name the tensor, field or file and the
//!   values involved, because they reach users verbatim. Each refusal test
//!   asserts on those parts of the message, and every refusal is an `Err`
//!   (a panic would fail the test).
//! - The PyTorch fixtures are `nn.GRU` state dicts written by
//!   `scripts/reference/make_fixtures.py`: `torch_gru_l2` has keys `gru.*` and
//!   an `nn.Linear` head `head.*` (I = 5, H = 7, O = 3); `torch_gru_l3_nohead`
//!   has unprefixed keys and no head (I = 4, H = 6, 3 layers).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use common::*;
use gru_serve::formats::native::{
    load_config, load_native, save_native, CONFIG_FILE, WEIGHTS_FILE,
};
use gru_serve::formats::pytorch::{export_pytorch, import_pytorch, PytorchNames};
use gru_serve::model::{GruModel, ModelConfig, ModelError, Precision, ResetMode, Task};
use safetensors::SafeTensors;
use tempfile::TempDir;

// ---------------------------------------------------------------- helpers

/// The message of an error result (the `Ok` type need not be `Debug`).
fn err_msg<T>(r: Result<T, ModelError>) -> String {
    match r {
        Ok(_) => panic!("expected an error, got Ok"),
        Err(e) => e.to_string(),
    }
}

fn assert_mentions(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "message should mention {p:?}: {msg}");
    }
}

/// Every element's bit pattern (f32 bits widened to u64).
fn bits(t: &Tensor) -> Vec<u64> {
    let flat = t.flatten_all().unwrap();
    match t.dtype() {
        DType::F32 => flat
            .to_vec1::<f32>()
            .unwrap()
            .into_iter()
            .map(|v| u64::from(v.to_bits()))
            .collect(),
        DType::F64 => flat
            .to_vec1::<f64>()
            .unwrap()
            .into_iter()
            .map(f64::to_bits)
            .collect(),
        d => panic!("unexpected dtype {d:?}"),
    }
}

fn assert_bit_equal(what: &str, a: &Tensor, b: &Tensor) {
    assert_eq!(a.dtype(), b.dtype(), "{what}: dtype");
    assert_eq!(a.dims(), b.dims(), "{what}: shape");
    let (x, y) = (bits(a), bits(b));
    if let Some(i) = x.iter().zip(&y).position(|(p, q)| p != q) {
        panic!("{what}: element {i} differs: {:#x} vs {:#x}", x[i], y[i]);
    }
}

fn assert_models_bit_equal(a: &GruModel, b: &GruModel) {
    assert_eq!(a.config(), b.config(), "config");
    assert_eq!(a.layers().len(), b.layers().len(), "layer count");
    for (k, (la, lb)) in a.layers().iter().zip(b.layers()).enumerate() {
        assert_eq!(la.mode(), lb.mode(), "layer {k} mode");
        let (pa, pb) = (la.params(), lb.params());
        assert_bit_equal(&format!("layer {k} w_ih"), &pa.w_ih, &pb.w_ih);
        assert_bit_equal(&format!("layer {k} w_hh"), &pa.w_hh, &pb.w_hh);
        assert_bit_equal(&format!("layer {k} b_ih"), &pa.b_ih, &pb.b_ih);
        assert_bit_equal(&format!("layer {k} b_hh"), &pa.b_hh, &pb.b_hh);
    }
    match (a.head(), b.head()) {
        (None, None) => {}
        (Some(ha), Some(hb)) => {
            assert_bit_equal("head w", &ha.w, &hb.w);
            assert_bit_equal("head b", &ha.b, &hb.b);
        }
        _ => panic!("one model has a head, the other not"),
    }
}

/// Reads a safetensors file into candle tensors, sorted by name.
fn read_tensors(path: &Path) -> BTreeMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu)
        .unwrap()
        .into_iter()
        .collect()
}

fn write_tensors(path: &Path, tensors: &BTreeMap<String, Tensor>) {
    let bytes = safetensors::serialize(tensors.iter().map(|(k, v)| (k.clone(), v)), None).unwrap();
    std::fs::write(path, bytes).unwrap();
}

/// `t` with element `flat_index` (of the flattened tensor) set to `value`.
fn with_value(t: &Tensor, flat_index: usize, value: f64) -> Tensor {
    let mut v = t
        .flatten_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    v[flat_index] = value;
    Tensor::from_vec(v, t.dims(), &Device::Cpu)
        .unwrap()
        .to_dtype(t.dtype())
        .unwrap()
}

// ------------------------------------------------ 1. native save → load

/// Native save → load gives the same model bit for bit, and the same outputs.
/// Expectation: saving writes the tensors' bytes and loading reads them back,
/// so nothing may change (not even the sign of a zero).
#[test]
fn native_round_trip_is_bit_exact() {
    let dev = Device::Cpu;
    for mode in [ResetMode::AfterMatmul, ResetMode::BeforeMatmul] {
        for prec in [Precision::F32, Precision::F64] {
            for head in [None, Some(3)] {
                let mut cfg = ModelConfig::new(5, 8, 2)
                    .with_reset_mode(mode)
                    .with_dtype(prec);
                cfg.output_size = head;
                let what = format!("{mode:?} {prec:?} head {head:?}");
                let m = GruModel::init(cfg.clone(), 42, &dev).unwrap();
                let tmp = TempDir::new().unwrap();
                let dir = tmp.path().join("model");
                save_native(&m, &dir).unwrap();
                let back = load_native(&dir, &dev).unwrap_or_else(|e| panic!("{what}: {e}"));
                assert_eq!(back.config(), &cfg, "{what}: config");
                assert_models_bit_equal(&m, &back);

                let dtype = prec.dtype();
                let xs = rand_tensor(&[3, 6, 5], 1, 1.0).to_dtype(dtype).unwrap();
                let h0 = rand_tensor(&[2, 3, 8], 2, 0.5).to_dtype(dtype).unwrap();
                let lens = [6, 2, 5];
                let (ya, ha) = m.forward(&xs, &lens, Some(&h0)).unwrap();
                let (yb, hb) = back.forward(&xs, &lens, Some(&h0)).unwrap();
                assert_bit_equal(&format!("{what}: outputs"), &ya, &yb);
                assert_bit_equal(&format!("{what}: final state"), &ha, &hb);
            }
        }
    }
}

/// Saving over an existing folder replaces it (atomic writes rename over the
/// old files), and no temporary files are left behind.
#[test]
fn native_save_overwrites_and_leaves_no_temp_files() {
    let dev = Device::Cpu;
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path().join("model");
    let a = GruModel::init(ModelConfig::new(3, 4, 1), 1, &dev).unwrap();
    let b = GruModel::init(ModelConfig::new(3, 4, 2).with_head(2), 2, &dev).unwrap();
    save_native(&a, &dir).unwrap();
    save_native(&b, &dir).unwrap();
    assert_models_bit_equal(&b, &load_native(&dir, &dev).unwrap());
    let names: BTreeSet<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let want: BTreeSet<String> = [CONFIG_FILE, WEIGHTS_FILE].map(String::from).into();
    assert_eq!(names, want);
}

// --------------------------------------------- 2. PyTorch import → export

/// Every tensor of `b` equals the tensor of the same name in `a`: same names,
/// dtypes, shapes and data bytes.
fn assert_safetensors_files_equal(a: &Path, b: &Path) {
    let (ba, bb) = (std::fs::read(a).unwrap(), std::fs::read(b).unwrap());
    let (sa, sb) = (
        SafeTensors::deserialize(&ba).unwrap(),
        SafeTensors::deserialize(&bb).unwrap(),
    );
    let na: BTreeSet<&str> = sa.names().into_iter().collect();
    let nb: BTreeSet<&str> = sb.names().into_iter().collect();
    assert_eq!(na, nb, "tensor names");
    for n in na {
        let (ta, tb) = (sa.tensor(n).unwrap(), sb.tensor(n).unwrap());
        assert_eq!(ta.dtype(), tb.dtype(), "{n}: dtype");
        assert_eq!(ta.shape(), tb.shape(), "{n}: shape");
        assert!(ta.data() == tb.data(), "{n}: data bytes differ");
    }
}

fn import(path: &Path, gru: &str, head: Option<&str>) -> Result<GruModel, ModelError> {
    let names = PytorchNames {
        gru_prefix: Some(gru.into()),
        head_prefix: head.map(String::from),
    };
    import_pytorch(path, &names, Task::Regression, &Device::Cpu)
}

/// Import → export reproduces the PyTorch state dict byte for byte.
/// Expectation: `layer_to_pytorch` is documented as the bit-exact inverse of
/// `from_pytorch` (transposes and exact negations only).
#[test]
fn pytorch_import_export_is_bit_exact_with_head() {
    let src = fixture("torch_gru_l2.safetensors");
    let m = import(&src, "gru.", Some("head.")).unwrap();
    assert_eq!(m.config().num_layers, 2);
    assert_eq!(m.config().output_size, Some(3));
    let tmp = TempDir::new().unwrap();
    let out = tmp.path().join("exported.safetensors");
    export_pytorch(&m, &out, "gru.", "head.").unwrap();
    assert_safetensors_files_equal(&src, &out);
}

/// Same without a head and without a prefix; `export_pytorch` writes no head
/// keys for a model without a head, so its `head_prefix` is unused.
#[test]
fn pytorch_import_export_is_bit_exact_no_head_no_prefix() {
    let src = fixture("torch_gru_l3_nohead.safetensors");
    let m = import(&src, "", None).unwrap();
    assert_eq!(m.config().num_layers, 3);
    assert!(m.head().is_none());
    let tmp = TempDir::new().unwrap();
    let out = tmp.path().join("exported.safetensors");
    export_pytorch(&m, &out, "", "").unwrap();
    assert_safetensors_files_equal(&src, &out);
    // With found (not named) prefixes the result is the same model.
    let found = import_pytorch(
        &src,
        &PytorchNames::default(),
        Task::Regression,
        &Device::Cpu,
    )
    .unwrap();
    assert_models_bit_equal(&m, &found);
}

/// The same in f64 (the fixture's values widened): f64 state dicts import as
/// f64 models and export unchanged.
#[test]
fn pytorch_import_export_is_bit_exact_f64() {
    let tmp = TempDir::new().unwrap();
    let src = tmp.path().join("f64.safetensors");
    let t: BTreeMap<_, _> = read_tensors(&fixture("torch_gru_l2.safetensors"))
        .into_iter()
        .map(|(k, v)| (k, v.to_dtype(DType::F64).unwrap()))
        .collect();
    write_tensors(&src, &t);
    let m = import(&src, "gru.", Some("head.")).unwrap();
    assert_eq!(m.config().dtype, Precision::F64);
    let out = tmp.path().join("exported.safetensors");
    export_pytorch(&m, &out, "gru.", "head.").unwrap();
    assert_safetensors_files_equal(&src, &out);
}

/// PyTorch → native → PyTorch is also byte-exact (the two round trips compose).
#[test]
fn pytorch_through_native_folder_is_bit_exact() {
    let src = fixture("torch_gru_l2.safetensors");
    let m = import(&src, "gru.", Some("head.")).unwrap();
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path().join("native");
    save_native(&m, &dir).unwrap();
    let back = load_native(&dir, &Device::Cpu).unwrap();
    assert_models_bit_equal(&m, &back);
    let out = tmp.path().join("exported.safetensors");
    export_pytorch(&back, &out, "gru.", "head.").unwrap();
    assert_safetensors_files_equal(&src, &out);
}

// -------------------------------------------- 3. before_matmul to PyTorch

/// PyTorch's nn.GRU only has the after-matmul reset, so exporting a
/// before_matmul model is refused (`formats::pytorch::layer_to_pytorch`), and nothing is written.
#[test]
fn exporting_before_matmul_to_pytorch_is_refused() {
    let cfg = ModelConfig::new(3, 4, 2)
        .with_head(2)
        .with_reset_mode(ResetMode::BeforeMatmul);
    let m = GruModel::init(cfg, 5, &Device::Cpu).unwrap();
    let tmp = TempDir::new().unwrap();
    let out = tmp.path().join("exported.safetensors");
    let e = err_msg(export_pytorch(&m, &out, "gru.", "head."));
    assert_mentions(&e, &["before_matmul"]);
    assert!(
        !out.exists(),
        "a refused export must not write {}",
        out.display()
    );
}

// ------------------------------------------------- 4. bad native folders

/// A valid native folder (I = 3, H = 4, 2 layers, head O = 2, f32) to break.
struct Native {
    _tmp: TempDir,
    dir: PathBuf,
}

impl Native {
    fn new() -> Self {
        let tmp = TempDir::new().unwrap();
        let dir = tmp.path().join("model");
        let cfg = ModelConfig::new(3, 4, 2).with_head(2);
        save_native(&GruModel::init(cfg, 9, &Device::Cpu).unwrap(), &dir).unwrap();
        Native { _tmp: tmp, dir }
    }

    fn weights(&self) -> PathBuf {
        self.dir.join(WEIGHTS_FILE)
    }

    fn config(&self) -> PathBuf {
        self.dir.join(CONFIG_FILE)
    }

    /// Rewrites model.safetensors after `f` edits its tensors.
    fn edit_tensors(&self, f: impl FnOnce(&mut BTreeMap<String, Tensor>)) {
        let mut t = read_tensors(&self.weights());
        f(&mut t);
        write_tensors(&self.weights(), &t);
    }

    /// Rewrites config.json after `f` edits its JSON.
    fn edit_config(&self, f: impl FnOnce(&mut serde_json::Value)) {
        let mut v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(self.config()).unwrap()).unwrap();
        f(&mut v);
        std::fs::write(self.config(), serde_json::to_vec_pretty(&v).unwrap()).unwrap();
    }

    fn load_err(&self) -> String {
        err_msg(load_native(&self.dir, &Device::Cpu))
    }
}

#[test]
fn native_untouched_folder_loads() {
    let n = Native::new();
    load_native(&n.dir, &Device::Cpu).unwrap();
}

/// weights.rs: every tensor the config implies must be present.
#[test]
fn native_missing_tensor_is_named() {
    let n = Native::new();
    n.edit_tensors(|t| {
        t.remove("layers.1.w_hh").unwrap();
    });
    assert_mentions(&n.load_err(), &["missing tensor", "layers.1.w_hh"]);

    // A config with a head needs the head's tensors.
    let n = Native::new();
    n.edit_tensors(|t| {
        t.remove("head.b").unwrap();
    });
    assert_mentions(&n.load_err(), &["missing tensor", "head.b"]);
}

/// weights.rs: shapes are checked against the config; the message names the
/// tensor and both shapes.
#[test]
fn native_wrong_shape_names_tensor_and_shapes() {
    let n = Native::new();
    n.edit_tensors(|t| {
        t.insert("layers.1.w_hh".into(), rand_tensor(&[4, 9], 1, 0.5));
    });
    assert_mentions(&n.load_err(), &["layers.1.w_hh", "[4, 9]", "[4, 12]"]);

    // The head's weight [H, O] transposed (as PyTorch stores it) is refused too.
    let n = Native::new();
    n.edit_tensors(|t| {
        let w = t["head.w"].t().unwrap().contiguous().unwrap();
        t.insert("head.w".into(), w);
    });
    assert_mentions(&n.load_err(), &["head.w", "[2, 4]", "[4, 2]"]);
}

/// weights.rs: dtype is checked against the config's precision.
#[test]
fn native_wrong_dtype_is_named() {
    let n = Native::new();
    n.edit_tensors(|t| {
        let b = t["layers.0.b_ih"].to_dtype(DType::F64).unwrap();
        t.insert("layers.0.b_ih".into(), b);
    });
    assert_mentions(&n.load_err(), &["layers.0.b_ih", "F64", "F32"]);

    // A dtype the model never computes in (f16) is refused with its name too.
    let n = Native::new();
    n.edit_tensors(|t| {
        let w = t["layers.1.w_ih"].to_dtype(DType::F16).unwrap();
        t.insert("layers.1.w_ih".into(), w);
    });
    assert_mentions(&n.load_err(), &["layers.1.w_ih", "F16"]);
}

/// A torn or foreign weights file is "not a valid safetensors file" and the
/// message names the file.
#[test]
fn native_truncated_or_garbage_weights_are_refused() {
    let n = Native::new();
    let bytes = std::fs::read(n.weights()).unwrap();
    std::fs::write(n.weights(), &bytes[..bytes.len() / 2]).unwrap();
    assert_mentions(
        &n.load_err(),
        &["not a valid safetensors file", WEIGHTS_FILE],
    );

    // Only the data cut short (header intact): still refused.
    let n = Native::new();
    std::fs::write(n.weights(), &bytes[..bytes.len() - 4]).unwrap();
    assert_mentions(
        &n.load_err(),
        &["not a valid safetensors file", WEIGHTS_FILE],
    );

    for garbage in [
        b"this is not a safetensors file at all \xff\xfe\x00\x01".as_slice(),
        b"".as_slice(),
        b"\x05".as_slice(),
        // A plausible header length followed by something that is not JSON.
        b"\x08\x00\x00\x00\x00\x00\x00\x00not json".as_slice(),
    ] {
        let n = Native::new();
        std::fs::write(n.weights(), garbage).unwrap();
        assert_mentions(
            &n.load_err(),
            &["not a valid safetensors file", WEIGHTS_FILE],
        );
    }
}

/// A folder with config.json but no model.safetensors names the missing file.
#[test]
fn native_missing_weights_file_names_the_path() {
    let n = Native::new();
    std::fs::remove_file(n.weights()).unwrap();
    let e = n.load_err();
    assert_mentions(&e, &[&n.weights().display().to_string()]);
}

/// weights.rs: values are checked for finiteness; the message names the tensor.
#[test]
fn native_non_finite_values_are_named() {
    let n = Native::new();
    n.edit_tensors(|t| {
        let w = with_value(&t["layers.1.w_ih"], 5, f64::NAN);
        t.insert("layers.1.w_ih".into(), w);
    });
    assert_mentions(&n.load_err(), &["layers.1.w_ih", "non-finite", "index 5"]);

    let n = Native::new();
    n.edit_tensors(|t| {
        let b = with_value(&t["layers.0.b_hh"], 2, f64::INFINITY);
        t.insert("layers.0.b_hh".into(), b);
    });
    assert_mentions(&n.load_err(), &["layers.0.b_hh", "non-finite", "index 2"]);

    let n = Native::new();
    n.edit_tensors(|t| {
        let b = with_value(&t["head.b"], 1, f64::NEG_INFINITY);
        t.insert("head.b".into(), b);
    });
    assert_mentions(&n.load_err(), &["head.b", "non-finite"]);
}

/// config.rs/weights.rs: a newer format says so plainly, naming both versions
/// and the file.
#[test]
fn native_unknown_format_version_is_named() {
    let n = Native::new();
    n.edit_config(|v| v["format_version"] = 2.into());
    let e = n.load_err();
    assert_mentions(&e, &["unknown format_version 2", "version 1", CONFIG_FILE]);
    // load_config alone says the same.
    assert_mentions(&err_msg(load_config(&n.dir)), &["unknown format_version 2"]);

    let n = Native::new();
    n.edit_config(|v| {
        v.as_object_mut().unwrap().remove("format_version");
    });
    assert_mentions(&n.load_err(), &["missing format_version", CONFIG_FILE]);
}

/// A format_version that is present but not an unsigned integer (`"1"`,
/// `1.0`, `-1`) should be reported as such, not as missing.
#[test]
fn native_non_integer_format_version_is_not_called_missing() {
    for v in [
        serde_json::json!("1"),
        serde_json::json!(1.5),
        serde_json::json!(-1),
    ] {
        let n = Native::new();
        n.edit_config(|c| c["format_version"] = v.clone());
        let e = n.load_err();
        assert!(!e.contains("missing"), "format_version {v}: {e}");
        assert_mentions(&e, &["format_version", &v.to_string()]);
    }
}

#[test]
fn native_missing_config_names_the_path() {
    let n = Native::new();
    std::fs::remove_file(n.config()).unwrap();
    assert_mentions(&n.load_err(), &[&n.config().display().to_string()]);
    // A folder that does not exist at all: the same.
    let missing = n.dir.join("nope");
    let e = err_msg(load_native(&missing, &Device::Cpu));
    assert_mentions(&e, &[&missing.join(CONFIG_FILE).display().to_string()]);
}

/// weights.rs: tensors the config does not account for are refused by name.
#[test]
fn native_unexpected_tensor_is_named() {
    let n = Native::new();
    n.edit_tensors(|t| {
        t.insert("layers.2.w_ih".into(), rand_tensor(&[4, 12], 3, 0.5));
    });
    assert_mentions(&n.load_err(), &["unexpected tensor 'layers.2.w_ih'"]);

    // A head in the weights while config.json has none.
    let n = Native::new();
    n.edit_config(|v| v["output_size"] = serde_json::Value::Null);
    assert_mentions(&n.load_err(), &["unexpected tensor 'head."]);
}

/// config.rs `validate`: sizes must be ≥ 1; the message names the field and value.
#[test]
fn native_zero_sizes_in_config_are_refused() {
    for (field, msg) in [
        ("num_layers", "num_layers = 0"),
        ("hidden_size", "hidden_size = 0"),
        ("input_size", "input_size = 0"),
        ("output_size", "output_size = 0"),
    ] {
        let n = Native::new();
        n.edit_config(|v| v[field] = 0.into());
        let e = n.load_err();
        assert_mentions(&e, &[msg]);
        assert!(e.starts_with("invalid model config"), "{field}: {e}");
    }
}

/// config.json is strict (`deny_unknown_fields`) and must be JSON; a config
/// whose sizes disagree with the weights is a shape error naming the tensor.
#[test]
fn native_bad_config_contents_are_refused() {
    let n = Native::new();
    n.edit_config(|v| v["bidirectional"] = true.into());
    assert_mentions(&n.load_err(), &["bidirectional", CONFIG_FILE]);

    let n = Native::new();
    std::fs::write(n.config(), b"{ not json").unwrap();
    assert_mentions(&n.load_err(), &[CONFIG_FILE]);

    let n = Native::new();
    n.edit_config(|v| v["reset_mode"] = "sideways".into());
    assert_mentions(&n.load_err(), &["sideways", CONFIG_FILE]);

    let n = Native::new();
    n.edit_config(|v| v["hidden_size"] = 5.into());
    assert_mentions(&n.load_err(), &["layers.0.w_ih", "[3, 12]", "[3, 15]"]);
}

// ------------------------------------------------ 5. bad PyTorch dicts

/// The torch_gru_l2 fixture's tensors, edited by `f`, written to a temp file.
fn edited_l2(f: impl FnOnce(&mut BTreeMap<String, Tensor>)) -> (TempDir, PathBuf) {
    let mut t = read_tensors(&fixture("torch_gru_l2.safetensors"));
    f(&mut t);
    let tmp = TempDir::new().unwrap();
    let path = tmp.path().join("state_dict.safetensors");
    write_tensors(&path, &t);
    (tmp, path)
}

fn import_default(path: &Path) -> Result<GruModel, ModelError> {
    import_pytorch(
        path,
        &PytorchNames::default(),
        Task::Regression,
        &Device::Cpu,
    )
}

#[test]
fn pytorch_without_weight_ih_l0_is_refused() {
    let (_tmp, path) = edited_l2(|t| {
        t.remove("gru.weight_ih_l0").unwrap();
    });
    assert_mentions(
        &err_msg(import_default(&path)),
        &["weight_ih_l0", "not an nn.GRU state dict"],
    );
    // With the prefix named, the missing tensor is named in full.
    assert_mentions(
        &err_msg(import(&path, "gru.", Some("head."))),
        &["missing tensor 'gru.weight_ih_l0'"],
    );
    // An empty state dict.
    let (_tmp, path) = edited_l2(|t| t.clear());
    assert_mentions(&err_msg(import_default(&path)), &["weight_ih_l0"]);
}

/// nn.GRU(bidirectional=True) adds `*_reverse` keys; a session steps forward
/// in time, so they are refused (weights.rs).
#[test]
fn pytorch_bidirectional_is_refused() {
    let (_tmp, path) = edited_l2(|t| {
        for base in ["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"] {
            let v = t[&format!("gru.{base}")].clone();
            t.insert(format!("gru.{base}_reverse"), v);
        }
    });
    for r in [import_default(&path), import(&path, "gru.", Some("head."))] {
        assert_mentions(&err_msg(r), &["bidirectional", "_reverse"]);
    }
}

#[test]
fn pytorch_wrong_shape_names_the_tensor() {
    let (_tmp, path) = edited_l2(|t| {
        t.insert("gru.weight_hh_l1".into(), rand_tensor(&[21, 6], 1, 0.3));
    });
    assert_mentions(
        &err_msg(import_default(&path)),
        &["gru.weight_hh_l1", "[21, 6]", "[21, 7]"],
    );
}

/// Only f32 and f64 weights are imported (Precision).
#[test]
fn pytorch_f16_and_i64_are_refused() {
    for dtype in [DType::F16, DType::BF16, DType::I64] {
        let (_tmp, path) = edited_l2(|t| {
            for v in t.values_mut() {
                *v = v.to_dtype(dtype).unwrap();
            }
        });
        let e = err_msg(import_default(&path));
        assert_mentions(&e, &["weight_ih_l0", &format!("{dtype:?}").to_uppercase()]);
        assert_mentions(&e, &["f32 or f64"]);
    }
    // One layer in another dtype than the first: named, with both dtypes.
    let (_tmp, path) = edited_l2(|t| {
        let w = t["gru.weight_hh_l1"].to_dtype(DType::F16).unwrap();
        t.insert("gru.weight_hh_l1".into(), w);
    });
    assert_mentions(
        &err_msg(import_default(&path)),
        &["gru.weight_hh_l1", "F16", "F32"],
    );
    let (_tmp, path) = edited_l2(|t| {
        let b = t["head.bias"].to_dtype(DType::I64).unwrap();
        t.insert("head.bias".into(), b);
    });
    assert_mentions(&err_msg(import_default(&path)), &["head.bias", "I64"]);
}

/// The head's weight must be [O, H] with the GRU's H.
#[test]
fn pytorch_head_with_wrong_hidden_size_is_refused() {
    let (_tmp, path) = edited_l2(|t| {
        t.insert("head.weight".into(), rand_tensor(&[3, 6], 1, 0.3));
    });
    for r in [import_default(&path), import(&path, "gru.", Some("head."))] {
        assert_mentions(&err_msg(r), &["head.weight", "[3, 6]", "[O, 7]"]);
    }
    // Bias of the wrong length.
    let (_tmp, path) = edited_l2(|t| {
        t.insert("head.bias".into(), rand_tensor(&[4], 1, 0.3));
    });
    assert_mentions(
        &err_msg(import_default(&path)),
        &["head.bias", "[4]", "[3]"],
    );
}

/// Non-finite values in a state dict are refused by tensor name, and the
/// message names the file (`annotate`).
#[test]
fn pytorch_non_finite_is_named() {
    let (_tmp, path) = edited_l2(|t| {
        let b = with_value(&t["gru.bias_hh_l1"], 4, f64::NAN);
        t.insert("gru.bias_hh_l1".into(), b);
    });
    let e = err_msg(import_default(&path));
    assert_mentions(
        &e,
        &["gru.bias_hh_l1", "non-finite", "state_dict.safetensors"],
    );
}

/// Under a named prefix, keys that are not part of the nn.GRU are refused.
#[test]
fn pytorch_stray_tensor_under_prefix_is_named() {
    let (_tmp, path) = edited_l2(|t| {
        t.insert("gru.weight_ih_l3".into(), rand_tensor(&[21, 7], 1, 0.3));
    });
    assert_mentions(
        &err_msg(import_default(&path)),
        &["gru.weight_ih_l3", "2 layers"],
    );
}

/// With an empty GRU prefix (a bare `nn.GRU` state dict, like
/// torch_gru_l3_nohead), keys of a layer past a gap are silently dropped:
/// `import_pytorch_tensors` skips its stray-key check when the prefix is empty.
/// Expected: the same refusal as under a named prefix.
#[test]
fn pytorch_stray_tensor_without_prefix_is_named() {
    let src = fixture("torch_gru_l3_nohead.safetensors");
    let mut t = read_tensors(&src);
    // Layer 2 moved to index 3: a gap at 2.
    for base in ["weight_ih", "weight_hh", "bias_ih", "bias_hh"] {
        let v = t.remove(&format!("{base}_l2")).unwrap();
        t.insert(format!("{base}_l3"), v);
    }
    let tmp = TempDir::new().unwrap();
    let path = tmp.path().join("gap.safetensors");
    write_tensors(&path, &t);
    let e = err_msg(import_default(&path));
    assert_mentions(&e, &["_l3", "2 layers"]);
}

/// Garbage instead of a state dict is an error naming the file.
#[test]
fn pytorch_garbage_file_is_refused() {
    let tmp = TempDir::new().unwrap();
    let path = tmp.path().join("junk.safetensors");
    std::fs::write(&path, b"PK\x03\x04 a torch.save zip, not safetensors").unwrap();
    assert_mentions(
        &err_msg(import_default(&path)),
        &["junk.safetensors", "not a valid safetensors file"],
    );
    let missing = tmp.path().join("missing.safetensors");
    assert_mentions(&err_msg(import_default(&missing)), &["missing.safetensors"]);
}

// ------------------------------------------------------ 6. config JSON

/// `ModelConfig` survives JSON unchanged, for every variant of each enum.
#[test]
fn model_config_json_round_trip() {
    let configs = [
        ModelConfig::new(5, 8, 2),
        ModelConfig::new(1, 1, 1).with_head(1),
        ModelConfig::new(7, 16, 3)
            .with_head(4)
            .with_reset_mode(ResetMode::BeforeMatmul)
            .with_task(Task::ClassifyPerStep)
            .with_dtype(Precision::F64),
        ModelConfig::new(2, 3, 4)
            .with_head(2)
            .with_task(Task::ClassifyLast),
    ];
    for cfg in configs {
        cfg.validate().unwrap();
        let text = serde_json::to_string(&cfg).unwrap();
        let back: ModelConfig = serde_json::from_str(&text).unwrap();
        assert_eq!(back, cfg, "{text}");
    }
}

/// config.json is meant to be read and edited by people: enums are written as
/// snake_case strings, and a missing head is an explicit null.
#[test]
fn config_json_is_human_readable() {
    for (mode, name) in [
        (ResetMode::BeforeMatmul, "before_matmul"),
        (ResetMode::AfterMatmul, "after_matmul"),
    ] {
        let cfg = ModelConfig::new(3, 4, 1)
            .with_reset_mode(mode)
            .with_dtype(Precision::F64);
        let tmp = TempDir::new().unwrap();
        save_native(
            &GruModel::init(cfg.clone(), 1, &Device::Cpu).unwrap(),
            tmp.path(),
        )
        .unwrap();
        let text = std::fs::read_to_string(tmp.path().join(CONFIG_FILE)).unwrap();
        assert_mentions(
            &text,
            &[
                &format!("\"reset_mode\": \"{name}\""),
                "\"task\": \"regression\"",
                "\"dtype\": \"f64\"",
                "\"output_size\": null",
                "\"format_version\": 1",
            ],
        );
        assert_eq!(name, mode.as_str());
        assert_eq!(load_config(tmp.path()).unwrap(), cfg);
    }
}
