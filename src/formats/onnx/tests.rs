//! Models are built with the prost types, encoded, and parsed back, so the
//! tests exercise the real decode path without fixture files.

use super::pb;
use super::pb::tensor_proto::{DataLocation, DataType};
use super::*;

// ---------------------------------------------------------------- helpers

/// Distinct, non-trivial values (negative, fractional, one subnormal and one
/// negative zero), so that any reordering or lossy conversion shows up.
fn vals(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| match (i as u32 + seed) % 11 {
            3 => -0.0,
            7 => f32::from_bits(0x0000_0123),
            _ => ((i as f32 + 1.0) * 0.731 + seed as f32).sin() * 1.37,
        })
        .collect()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn tensor(name: &str, dims: &[i64], data: &[f32], raw: bool) -> pb::TensorProto {
    let mut t = pb::TensorProto {
        name: Some(name.to_string()),
        dims: dims.to_vec(),
        data_type: Some(DataType::Float as i32),
        ..Default::default()
    };
    if raw {
        t.raw_data = Some(data.iter().flat_map(|v| v.to_le_bytes()).collect());
    } else {
        t.float_data = data.to_vec();
    }
    t
}

fn int64_tensor(name: &str, data: &[i64]) -> pb::TensorProto {
    pb::TensorProto {
        name: Some(name.to_string()),
        dims: vec![data.len() as i64],
        data_type: Some(DataType::Int64 as i32),
        int64_data: data.to_vec(),
        ..Default::default()
    }
}

fn attr_i(name: &str, v: i64) -> pb::AttributeProto {
    pb::AttributeProto {
        name: Some(name.to_string()),
        r#type: Some(pb::attribute_proto::AttributeType::Int as i32),
        i: Some(v),
        ..Default::default()
    }
}

fn attr_f(name: &str, v: f32) -> pb::AttributeProto {
    pb::AttributeProto {
        name: Some(name.to_string()),
        r#type: Some(pb::attribute_proto::AttributeType::Float as i32),
        f: Some(v),
        ..Default::default()
    }
}

fn attr_s(name: &str, v: &str) -> pb::AttributeProto {
    pb::AttributeProto {
        name: Some(name.to_string()),
        r#type: Some(pb::attribute_proto::AttributeType::String as i32),
        s: Some(v.as_bytes().to_vec()),
        ..Default::default()
    }
}

fn attr_ss(name: &str, v: &[&str]) -> pb::AttributeProto {
    pb::AttributeProto {
        name: Some(name.to_string()),
        r#type: Some(pb::attribute_proto::AttributeType::Strings as i32),
        strings: v.iter().map(|s| s.as_bytes().to_vec()).collect(),
        ..Default::default()
    }
}

fn attr_fs(name: &str, v: &[f32]) -> pb::AttributeProto {
    pb::AttributeProto {
        name: Some(name.to_string()),
        r#type: Some(pb::attribute_proto::AttributeType::Floats as i32),
        floats: v.to_vec(),
        ..Default::default()
    }
}

fn attr_t(name: &str, t: pb::TensorProto) -> pb::AttributeProto {
    pb::AttributeProto {
        name: Some(name.to_string()),
        r#type: Some(pb::attribute_proto::AttributeType::Tensor as i32),
        t: Some(t),
        ..Default::default()
    }
}

fn node(
    op: &str,
    name: &str,
    inputs: &[&str],
    outputs: &[&str],
    attrs: Vec<pb::AttributeProto>,
) -> pb::NodeProto {
    pb::NodeProto {
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        name: Some(name.to_string()),
        op_type: Some(op.to_string()),
        domain: None,
        attribute: attrs,
    }
}

fn value(name: &str) -> pb::ValueInfoProto {
    pb::ValueInfoProto {
        name: Some(name.to_string()),
    }
}

/// A GRU layer's nodes and initializers.
struct Layer {
    node: pb::NodeProto,
    inits: Vec<pb::TensorProto>,
    w: Vec<f32>,
    r: Vec<f32>,
    b: Vec<f32>,
}

/// GRU `name` reading `x`, writing `<name>_Y` and `<name>_Yh`, with weights
/// `<name>_W`, `<name>_R` and (when `bias`) `<name>_B`.
fn gru_layer(name: &str, x: &str, i: usize, h: usize, bias: bool, raw: bool, seed: u32) -> Layer {
    let w = vals(3 * h * i, seed);
    let r = vals(3 * h * h, seed + 1);
    let b = vals(6 * h, seed + 2);
    let (wn, rn, bn) = (
        format!("{name}_W"),
        format!("{name}_R"),
        format!("{name}_B"),
    );
    let mut inits = vec![
        tensor(&wn, &[1, 3 * h as i64, i as i64], &w, raw),
        tensor(&rn, &[1, 3 * h as i64, h as i64], &r, raw),
    ];
    if bias {
        inits.push(tensor(&bn, &[1, 6 * h as i64], &b, raw));
    }
    let inputs: Vec<&str> = if bias {
        vec![x, &wn, &rn, &bn]
    } else {
        vec![x, &wn, &rn]
    };
    let node = node(
        "GRU",
        name,
        &inputs,
        &[&format!("{name}_Y"), &format!("{name}_Yh")],
        vec![attr_i("hidden_size", h as i64)],
    );
    Layer {
        node,
        inits,
        w,
        r,
        b,
    }
}

fn model(
    nodes: Vec<pb::NodeProto>,
    inits: Vec<pb::TensorProto>,
    inputs: &[&str],
    outputs: &[&str],
) -> pb::ModelProto {
    pb::ModelProto {
        ir_version: Some(8),
        opset_import: vec![pb::OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(14),
        }],
        producer_name: Some("gru-serve-tests".to_string()),
        graph: Some(pb::GraphProto {
            node: nodes,
            name: Some("g".to_string()),
            initializer: inits,
            input: inputs.iter().map(|n| value(n)).collect(),
            output: outputs.iter().map(|n| value(n)).collect(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn parse(m: &pb::ModelProto) -> Result<GruGraph> {
    parse_gru_model(&m.encode_to_vec())
}

fn err(m: &pb::ModelProto) -> String {
    match parse(m) {
        Ok(g) => panic!("expected an error, parsed {} layers", g.layers.len()),
        Err(e) => e.to_string(),
    }
}

#[track_caller]
fn assert_contains(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "message {msg:?} does not contain {p:?}");
    }
}

/// One GRU (I = 3, H = 4) on graph input "x", outputs its Y.
fn one_layer(bias: bool, raw: bool) -> (pb::ModelProto, Layer) {
    let l = gru_layer("gru0", "x", 3, 4, bias, raw, 1);
    let m = model(vec![l.node.clone()], l.inits.clone(), &["x"], &["gru0_Y"]);
    (m, l)
}

/// The model with the first node matching `name` changed by `f`.
fn with_node(
    mut m: pb::ModelProto,
    name: &str,
    f: impl FnOnce(&mut pb::NodeProto),
) -> pb::ModelProto {
    let g = m.graph.as_mut().expect("test model has a graph");
    let n = g
        .node
        .iter_mut()
        .find(|n| n.name() == name)
        .expect("test node exists");
    f(n);
    m
}

fn with_init(
    mut m: pb::ModelProto,
    name: &str,
    f: impl FnOnce(&mut pb::TensorProto),
) -> pb::ModelProto {
    let g = m.graph.as_mut().expect("test model has a graph");
    let t = g
        .initializer
        .iter_mut()
        .find(|t| t.name() == name)
        .expect("test initializer exists");
    f(t);
    m
}

/// One GRU (H = 4) on "x", then Squeeze(axis 1) of Y, MatMul with [4, 2],
/// optionally Add of [2] (operands in either order).
fn matmul_head_model(add: Option<bool>) -> (pb::ModelProto, Vec<f32>, Vec<f32>) {
    let l = gru_layer("gru0", "x", 3, 4, true, true, 1);
    let wh = vals(4 * 2, 20);
    let bh = vals(2, 21);
    let mut nodes = vec![
        l.node,
        node("Squeeze", "sq", &["gru0_Y", "axes1"], &["y2"], vec![]),
        node("MatMul", "head_mm", &["y2", "Wh"], &["mm"], vec![]),
    ];
    let mut inits = l.inits;
    inits.push(int64_tensor("axes1", &[1]));
    inits.push(tensor("Wh", &[4, 2], &wh, false));
    let out = match add {
        None => "mm",
        Some(swapped) => {
            inits.push(tensor("bh", &[2], &bh, true));
            let ins: [&str; 2] = if swapped { ["bh", "mm"] } else { ["mm", "bh"] };
            nodes.push(node("Add", "head_add", &ins, &["out"], vec![]));
            "out"
        }
    };
    (model(nodes, inits, &["x"], &[out]), wh, bh)
}

/// One GRU (H = 4) → Squeeze → Reshape → Gemm with B for `trans_b`, C [1, 2].
fn gemm_model(
    trans_b: i64,
    attrs: Vec<pb::AttributeProto>,
) -> (pb::ModelProto, Vec<f32>, Vec<f32>) {
    let l = gru_layer("gru0", "x", 3, 4, true, true, 1);
    let wb = vals(4 * 2, 30);
    let c = vals(2, 31);
    let b_dims: [i64; 2] = if trans_b == 0 { [4, 2] } else { [2, 4] };
    let mut gemm_attrs = vec![
        attr_i("transB", trans_b),
        attr_f("alpha", 1.0),
        attr_f("beta", 1.0),
    ];
    gemm_attrs.extend(attrs);
    let nodes = vec![
        l.node,
        node("Squeeze", "sq", &["gru0_Y", "axes1"], &["y3"], vec![]),
        node("Reshape", "rs", &["y3", "shape"], &["y2"], vec![]),
        node(
            "Gemm",
            "head_gemm",
            &["y2", "Bg", "Cg"],
            &["out"],
            gemm_attrs,
        ),
    ];
    let mut inits = l.inits;
    inits.push(int64_tensor("axes1", &[1]));
    inits.push(int64_tensor("shape", &[-1, 4]));
    inits.push(tensor("Bg", &b_dims, &wb, false));
    inits.push(tensor("Cg", &[1, 2], &c, false));
    (model(nodes, inits, &["x"], &["out"]), wb, c)
}

/// Two stacked layers: gru0 (I = 3, H = 4) → Squeeze(axis 1) → gru1 (I = 4, H = 5).
fn two_layers() -> (pb::ModelProto, Layer, Layer) {
    let l0 = gru_layer("gru0", "x", 3, 4, true, true, 1);
    let l1 = gru_layer("gru1", "y0", 4, 5, false, false, 10);
    let mut inits = l0.inits.clone();
    inits.extend(l1.inits.clone());
    inits.push(int64_tensor("axes1", &[1]));
    let nodes = vec![
        l0.node.clone(),
        node("Squeeze", "sq0", &["gru0_Y", "axes1"], &["y0"], vec![]),
        l1.node.clone(),
    ];
    (model(nodes, inits, &["x"], &["gru1_Y"]), l0, l1)
}

// ---------------------------------------------------------------- accepted

#[test]
fn one_layer_round_trips_exactly() {
    for raw in [false, true] {
        let (m, l) = one_layer(true, raw);
        let g = parse(&m).expect("valid model");
        assert_eq!(g.opset, 14);
        assert_eq!(g.producer, "gru-serve-tests");
        assert!(g.head.is_none());
        assert_eq!(g.layers.len(), 1);
        let n = &g.layers[0];
        assert_eq!(n.name, "gru0");
        assert_eq!((n.hidden_size, n.input_size), (4, 3));
        assert!(!n.linear_before_reset);
        assert_eq!(n.layout, 0);
        assert_eq!(n.w.shape, [12, 3]);
        assert_eq!(n.r.shape, [12, 4]);
        assert_eq!(bits(&n.w.data), bits(&l.w), "raw = {raw}");
        assert_eq!(bits(&n.r.data), bits(&l.r), "raw = {raw}");
        let b = n.b.as_ref().expect("bias present");
        assert_eq!(b.shape, [24]);
        assert_eq!(bits(&b.data), bits(&l.b), "raw = {raw}");
    }
}

#[test]
fn absent_bias_is_none() {
    let (m, _) = one_layer(false, false);
    assert_eq!(parse(&m).expect("valid").layers[0].b, None);
    // An empty-string B input also means absent.
    let (m, _) = one_layer(false, false);
    let m = with_node(m, "gru0", |n| n.input.push(String::new()));
    assert_eq!(parse(&m).expect("valid").layers[0].b, None);
}

#[test]
fn attributes_are_read() {
    let (m, _) = one_layer(true, true);
    let m = with_node(m, "gru0", |n| {
        n.attribute.extend([
            attr_i("linear_before_reset", 1),
            attr_i("layout", 1),
            attr_s("direction", "forward"),
            attr_ss("activations", &["Sigmoid", "Tanh"]),
        ])
    });
    let g = parse(&m).expect("valid");
    assert!(g.layers[0].linear_before_reset);
    assert_eq!(g.layers[0].layout, 1);
}

#[test]
fn two_layers_with_squeeze_between() {
    let (m, l0, l1) = two_layers();
    let g = parse(&m).expect("valid");
    assert_eq!(g.layers.len(), 2);
    assert_eq!((g.layers[0].input_size, g.layers[0].hidden_size), (3, 4));
    assert_eq!((g.layers[1].input_size, g.layers[1].hidden_size), (4, 5));
    assert_eq!(bits(&g.layers[0].w.data), bits(&l0.w));
    assert_eq!(bits(&g.layers[1].w.data), bits(&l1.w));
    assert_eq!(bits(&g.layers[1].r.data), bits(&l1.r));
    assert_eq!(g.layers[1].b, None);
}

#[test]
fn matmul_head_without_and_with_add() {
    let (m, wh, _) = matmul_head_model(None);
    let head = parse(&m).expect("valid").head.expect("head");
    assert_eq!(head.weight.shape, [2, 4]);
    assert_eq!(head.bias, None);
    // weight[o][h] == Wh[h][o]
    for o in 0..2 {
        for h in 0..4 {
            assert_eq!(
                head.weight.data[o * 4 + h].to_bits(),
                wh[h * 2 + o].to_bits()
            );
        }
    }
    for swapped in [false, true] {
        let (m, wh, bh) = matmul_head_model(Some(swapped));
        let head = parse(&m).expect("valid").head.expect("head");
        assert_eq!(head.weight.data[4].to_bits(), wh[1].to_bits());
        let bias = head.bias.expect("bias");
        assert_eq!(bias.shape, [2]);
        assert_eq!(bits(&bias.data), bits(&bh));
    }
}

#[test]
fn gemm_head_trans_b_0_and_1() {
    let (m, wb, c) = gemm_model(0, vec![]);
    let head = parse(&m).expect("valid").head.expect("head");
    assert_eq!(head.weight.shape, [2, 4]);
    for o in 0..2 {
        for h in 0..4 {
            assert_eq!(
                head.weight.data[o * 4 + h].to_bits(),
                wb[h * 2 + o].to_bits()
            );
        }
    }
    assert_eq!(bits(&head.bias.as_ref().expect("bias").data), bits(&c));
    assert_eq!(head.bias.expect("bias").shape, [2]);

    let (m, wb, _) = gemm_model(1, vec![attr_i("transA", 0)]);
    let head = parse(&m).expect("valid").head.expect("head");
    assert_eq!(head.weight.shape, [2, 4]);
    assert_eq!(bits(&head.weight.data), bits(&wb));
}

#[test]
fn gemm_without_c_has_no_bias() {
    let (m, _, _) = gemm_model(1, vec![]);
    let m = with_node(m, "head_gemm", |n| n.input.truncate(2));
    assert_eq!(parse(&m).expect("valid").head.expect("head").bias, None);
}

#[test]
fn head_on_y_h_and_shape_ops_after_head() {
    let (m, _, _) = matmul_head_model(Some(false));
    let m = with_node(m, "sq", |n| n.input[0] = "gru0_Yh".to_string());
    let mut m = m;
    let g = m.graph.as_mut().expect("graph");
    g.node.push(node(
        "Unsqueeze",
        "unsq",
        &["out", "axes1"],
        &["final"],
        vec![],
    ));
    g.output = vec![value("final"), value("gru0_Y")];
    assert!(parse(&m).expect("valid").head.is_some());
}

#[test]
fn constant_nodes_and_initializers_listed_as_inputs() {
    // W comes from a Constant node, the Squeeze axes too, and the
    // initializers are also listed as graph inputs (old exporters).
    let (mut m, l0, _) = two_layers();
    let g = m.graph.as_mut().expect("graph");
    let w_pos = g
        .initializer
        .iter()
        .position(|t| t.name() == "gru0_W")
        .expect("W");
    let w = g.initializer.remove(w_pos);
    g.node.insert(
        0,
        node("Constant", "cw", &[], &["gru0_W"], vec![attr_t("value", w)]),
    );
    let axes_pos = g
        .initializer
        .iter()
        .position(|t| t.name() == "axes1")
        .expect("axes");
    let axes = g.initializer.remove(axes_pos);
    g.node.insert(
        0,
        node(
            "Constant",
            "caxes",
            &[],
            &["axes1"],
            vec![attr_t("value", axes)],
        ),
    );
    let names: Vec<String> = g.initializer.iter().map(|t| t.name().to_string()).collect();
    g.input.extend(names.iter().map(|n| value(n)));
    let g = parse(&m).expect("valid");
    assert_eq!(bits(&g.layers[0].w.data), bits(&l0.w));
}

#[test]
fn graph_input_initial_h_and_zero_constant_accepted() {
    let (m, _) = one_layer(true, false);
    let mut m = with_node(m, "gru0", |n| {
        n.input.extend(["".to_string(), "h0".to_string()]);
    });
    m.graph.as_mut().expect("graph").input.push(value("h0"));
    assert!(parse(&m).is_ok());

    let (m, _) = one_layer(true, false);
    let mut m = with_node(m, "gru0", |n| {
        n.input.extend(["".to_string(), "h0".to_string()]);
    });
    m.graph
        .as_mut()
        .expect("graph")
        .initializer
        .push(tensor("h0", &[1, 1, 4], &[0.0; 4], true));
    assert!(parse(&m).is_ok());
}

#[test]
fn load_reads_file_and_names_missing_path() {
    let (m, l) = one_layer(true, true);
    let path =
        std::env::temp_dir().join(format!("gru_serve_onnx_test_{}.onnx", std::process::id()));
    std::fs::write(&path, m.encode_to_vec()).expect("write temp file");
    let g = load_gru_model(&path);
    let _ = std::fs::remove_file(&path);
    assert_eq!(bits(&g.expect("valid").layers[0].w.data), bits(&l.w));

    let missing = Path::new("/nonexistent/dir/model.onnx");
    let e = load_gru_model(missing).expect_err("missing file");
    assert!(matches!(e, OnnxError::Io { .. }));
    assert_contains(&e.to_string(), &["/nonexistent/dir/model.onnx"]);
}

// ---------------------------------------------------------------- refused: bytes

#[test]
fn truncated_bytes_are_an_error() {
    let (m, _) = one_layer(true, true);
    let bytes = m.encode_to_vec();
    for cut in [bytes.len() / 2, bytes.len() - 1, 1] {
        let e = parse_gru_model(&bytes[..cut]).expect_err("truncated");
        assert!(
            matches!(e, OnnxError::Decode(_) | OnnxError::NoGraph),
            "cut {cut}: {e}"
        );
    }
    let e = parse_gru_model(&bytes[..bytes.len() / 2]).expect_err("truncated");
    assert_contains(&e.to_string(), &["not a valid ONNX model"]);
}

#[test]
fn garbage_bytes_are_an_error() {
    // A simple LCG: deterministic "random" bytes.
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    for len in [1usize, 7, 64, 1000, 4096] {
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1);
                (state >> 33) as u8
            })
            .collect();
        assert!(parse_gru_model(&bytes).is_err(), "len {len}");
    }
    assert!(parse_gru_model(b"this is not an onnx file at all").is_err());
    assert!(parse_gru_model(&[0xff; 32]).is_err());
}

#[test]
fn empty_model_has_no_graph() {
    assert!(matches!(parse_gru_model(&[]), Err(OnnxError::NoGraph)));
}

#[test]
fn missing_default_opset_is_refused() {
    let (mut m, _) = one_layer(true, true);
    m.opset_import = vec![pb::OperatorSetIdProto {
        domain: Some("com.example".to_string()),
        version: Some(1),
    }];
    assert_contains(&err(&m), &["opset", "com.example"]);
}

// ---------------------------------------------------------------- refused: GRU attributes

#[test]
fn bidirectional_and_reverse_are_refused() {
    for d in ["bidirectional", "reverse"] {
        let (m, _) = one_layer(true, true);
        let m = with_node(m, "gru0", |n| n.attribute.push(attr_s("direction", d)));
        assert_contains(&err(&m), &[d, "gru0", "forward"]);
    }
}

#[test]
fn missing_or_mismatched_hidden_size_is_refused() {
    let (m, _) = one_layer(true, true);
    let m = with_node(m, "gru0", |n| n.attribute.clear());
    assert_contains(&err(&m), &["hidden_size", "missing", "gru0"]);

    let (m, _) = one_layer(true, true);
    let m = with_node(m, "gru0", |n| n.attribute = vec![attr_i("hidden_size", 5)]);
    assert_contains(&err(&m), &["gru0_W", "[1, 12, 3]", "15"]);
}

#[test]
fn bad_attribute_values_are_refused() {
    let cases: Vec<(pb::AttributeProto, Vec<&str>)> = vec![
        (
            attr_i("linear_before_reset", 2),
            vec!["linear_before_reset", "2"],
        ),
        (attr_i("layout", 3), vec!["layout", "3"]),
        (attr_f("clip", 3.5), vec!["clip", "3.5"]),
        (
            attr_ss("activations", &["Relu", "Tanh"]),
            vec!["activations", "Relu", "Tanh"],
        ),
        (
            attr_ss("activations", &["Sigmoid", "Tanh", "Tanh"]),
            vec!["activations"],
        ),
        (
            attr_fs("activation_alpha", &[0.5]),
            vec!["activation_alpha", "0.5"],
        ),
        (attr_fs("activation_beta", &[0.5]), vec!["activation_beta"]),
        (
            attr_s("direction", "sideways"),
            vec!["direction", "sideways"],
        ),
        (attr_i("output_sequence", 1), vec!["output_sequence"]),
        (
            attr_f("hidden_size", 4.0),
            vec!["hidden_size", "INT", "FLOAT"],
        ),
    ];
    for (a, parts) in cases {
        let (m, _) = one_layer(true, true);
        let m = with_node(m, "gru0", |n| n.attribute.push(a));
        let msg = err(&m);
        assert_contains(&msg, &parts);
        assert_contains(&msg, &["gru0"]);
    }
}

// ---------------------------------------------------------------- refused: tensors

#[test]
fn non_float_weights_are_refused() {
    let (m, _) = one_layer(true, true);
    let m = with_init(m, "gru0_R", |t| t.data_type = Some(DataType::Double as i32));
    assert_contains(&err(&m), &["gru0_R", "DOUBLE"]);
    let (m, _) = one_layer(true, true);
    let m = with_init(m, "gru0_W", |t| {
        t.data_type = Some(DataType::Float16 as i32)
    });
    assert_contains(&err(&m), &["gru0_W", "FLOAT16"]);
}

#[test]
fn external_data_is_refused() {
    let (m, _) = one_layer(true, true);
    let m = with_init(m, "gru0_W", |t| {
        t.raw_data = None;
        t.data_location = Some(DataLocation::External as i32);
        t.external_data = vec![pb::StringStringEntryProto {
            key: Some("location".to_string()),
            value: Some("weights.bin".to_string()),
        }];
    });
    assert_contains(
        &err(&m),
        &[
            "gru0_W",
            "external data is not supported; re-save with all tensors inside the file",
        ],
    );
    // external_data entries alone are enough to refuse.
    let (m, _) = one_layer(true, true);
    let m = with_init(m, "gru0_B", |t| {
        t.external_data = vec![pb::StringStringEntryProto::default()];
    });
    assert_contains(&err(&m), &["gru0_B", "external data"]);
}

#[test]
fn element_count_mismatch_is_refused() {
    let (m, _) = one_layer(true, false);
    let m = with_init(m, "gru0_R", |t| {
        t.float_data.pop();
    });
    assert_contains(&err(&m), &["gru0_R", "48", "47"]);
    let (m, _) = one_layer(true, true);
    let m = with_init(m, "gru0_W", |t| {
        if let Some(raw) = t.raw_data.as_mut() {
            raw.pop();
        }
    });
    assert_contains(&err(&m), &["gru0_W", "143 bytes"]);
}

#[test]
fn wrong_weight_shapes_are_refused() {
    let (m, _) = one_layer(true, true);
    let m = with_init(m, "gru0_R", |t| t.dims = vec![1, 4, 12]);
    assert_contains(&err(&m), &["gru0_R", "[1, 4, 12]", "[1, 12, 4]"]);
    let (m, _) = one_layer(true, true);
    let m = with_init(m, "gru0_B", |t| t.dims = vec![24]);
    assert_contains(&err(&m), &["gru0_B", "[24]", "[1, 24]"]);
    let (m, _) = one_layer(true, true);
    let m = with_init(m, "gru0_W", |t| t.dims = vec![12, 3]);
    assert_contains(
        &err(&m),
        &["gru0_W", "[12, 3]", "[1, 3*hidden_size = 12, input_size]"],
    );
}

#[test]
fn weights_must_be_constant() {
    let (mut m, _) = one_layer(true, true);
    let g = m.graph.as_mut().expect("graph");
    g.initializer.retain(|t| t.name() != "gru0_R");
    g.input.push(value("gru0_R"));
    assert_contains(
        &err(&m),
        &[
            "gru0_R",
            "graph input",
            "initializer or the output of a Constant",
        ],
    );

    let (mut m, _) = one_layer(true, true);
    let g = m.graph.as_mut().expect("graph");
    g.initializer.retain(|t| t.name() != "gru0_R");
    assert_contains(&err(&m), &["gru0_R", "not produced by any node"]);

    // A Constant without a tensor `value`.
    let (mut m, _) = one_layer(true, true);
    let g = m.graph.as_mut().expect("graph");
    g.initializer.retain(|t| t.name() != "gru0_R");
    g.node.insert(
        0,
        node(
            "Constant",
            "cr",
            &[],
            &["gru0_R"],
            vec![attr_f("value_float", 1.0)],
        ),
    );
    assert_contains(&err(&m), &["gru0_R", "Constant node 'cr'", "value_float"]);
}

// ---------------------------------------------------------------- refused: graph structure

#[test]
fn unsupported_ops_are_refused_by_name() {
    for op in ["Relu", "Sigmoid", "LSTM", "Slice"] {
        let (m, _, _) = two_layers();
        let mut m = with_node(m, "sq0", |n| n.output[0] = "pre".to_string());
        m.graph
            .as_mut()
            .expect("graph")
            .node
            .insert(2, node(op, "odd", &["pre"], &["y0"], vec![]));
        let msg = err(&m);
        assert_contains(
            &msg,
            &[
                &format!("unsupported op '{op}' (node 'odd')"),
                "gru-serve imports graphs of GRU nodes, shape ops and an optional MatMul+Add/Gemm head",
            ],
        );
    }
    // A GRU in another domain is not the ONNX GRU.
    let (m, _) = one_layer(true, true);
    let m = with_node(m, "gru0", |n| n.domain = Some("com.microsoft".to_string()));
    assert_contains(&err(&m), &["'GRU'", "com.microsoft", "gru0"]);
}

#[test]
fn ai_onnx_domain_is_default() {
    let (m, _) = one_layer(true, true);
    let m = with_node(m, "gru0", |n| n.domain = Some("ai.onnx".to_string()));
    assert!(parse(&m).is_ok());
}

#[test]
fn zero_gru_nodes_is_refused() {
    let m = model(
        vec![node("Identity", "id", &["x"], &["y"], vec![])],
        vec![],
        &["x"],
        &["y"],
    );
    assert_contains(&err(&m), &["no GRU node", "Identity"]);
}

#[test]
fn layers_not_chained_are_refused() {
    // Both GRUs read the graph input: two parallel layers, not a chain.
    let l0 = gru_layer("gru0", "x", 3, 4, true, true, 1);
    let l1 = gru_layer("gru1", "x", 3, 4, true, true, 5);
    let mut inits = l0.inits;
    inits.extend(l1.inits);
    let m = model(vec![l0.node, l1.node], inits, &["x"], &["gru0_Y", "gru1_Y"]);
    assert_contains(
        &err(&m),
        &["gru1", "single chain", "gru0", "'x' is a graph input"],
    );

    // Layer 1 reading Y_h (output 1) instead of Y.
    let (m, _, _) = two_layers();
    let m = with_node(m, "sq0", |n| n.input[0] = "gru0_Yh".to_string());
    assert_contains(&err(&m), &["gru1", "output 1 of GRU node 'gru0'"]);

    // Layer 2 skipping layer 1 (reads layer 0's Y).
    let (mut m, _, _) = two_layers();
    let l2 = gru_layer("gru2", "y0", 4, 5, false, true, 20);
    let g = m.graph.as_mut().expect("graph");
    g.node.push(l2.node);
    g.initializer.extend(l2.inits);
    assert_contains(&err(&m), &["gru2", "gru1", "output 0 of GRU node 'gru0'"]);
}

#[test]
fn layer_size_mismatch_is_refused() {
    let l0 = gru_layer("gru0", "x", 3, 4, true, true, 1);
    let l1 = gru_layer("gru1", "y0", 6, 5, true, true, 5);
    let mut inits = l0.inits;
    inits.extend(l1.inits);
    inits.push(int64_tensor("axes1", &[1]));
    let nodes = vec![
        l0.node,
        node("Squeeze", "sq0", &["gru0_Y", "axes1"], &["y0"], vec![]),
        l1.node,
    ];
    let m = model(nodes, inits, &["x"], &["gru1_Y"]);
    assert_contains(&err(&m), &["gru1", "input_size is 6", "hidden_size 4"]);
}

#[test]
fn shape_parameters_must_be_constant() {
    let (mut m, _, _) = two_layers();
    let g = m.graph.as_mut().expect("graph");
    g.initializer.retain(|t| t.name() != "axes1");
    g.input.push(value("axes1"));
    assert_contains(
        &err(&m),
        &["shape parameter", "Squeeze", "sq0", "axes1", "graph input"],
    );
}

#[test]
fn constant_initial_h_is_refused() {
    let (m, _) = one_layer(true, false);
    let mut m = with_node(m, "gru0", |n| {
        n.input.extend(["".to_string(), "h0".to_string()]);
    });
    m.graph.as_mut().expect("graph").initializer.push(tensor(
        "h0",
        &[1, 1, 4],
        &[0.0, 1.0, 0.0, 0.0],
        true,
    ));
    assert_contains(
        &err(&m),
        &[
            "gru0",
            "initial_h",
            "'h0' is a constant with non-zero values",
        ],
    );
}

// ---------------------------------------------------------------- refused: heads

#[test]
fn two_heads_are_refused() {
    let (mut m, _, _) = matmul_head_model(Some(false));
    let g = m.graph.as_mut().expect("graph");
    g.node.push(node(
        "MatMul",
        "head2",
        &["gru0_Yh", "Wh"],
        &["mm2"],
        vec![],
    ));
    assert_contains(&err(&m), &["two heads", "head_mm", "head2"]);
}

#[test]
fn stacked_heads_are_refused() {
    let (mut m, _, _) = matmul_head_model(Some(false));
    let g = m.graph.as_mut().expect("graph");
    g.initializer
        .push(tensor("W2", &[2, 2], &vals(4, 3), false));
    g.node
        .push(node("MatMul", "second", &["out", "W2"], &["out2"], vec![]));
    assert_contains(&err(&m), &["head_mm", "MatMul node 'second'"]);
}

#[test]
fn head_weight_shape_is_checked() {
    let (m, _, _) = matmul_head_model(None);
    let m = with_init(m, "Wh", |t| t.dims = vec![2, 4]);
    assert_contains(&err(&m), &["Wh", "[2, 4]", "[H = 4, O]"]);
    let (m, _, _) = matmul_head_model(Some(true));
    let m = with_init(m, "bh", |t| t.dims = vec![1, 2]);
    assert_contains(&err(&m), &["bh", "[1, 2]", "[O = 2]"]);
    let (m, _, _) = gemm_model(1, vec![]);
    let m = with_init(m, "Bg", |t| t.dims = vec![4, 2]);
    assert_contains(&err(&m), &["Bg", "[4, 2]", "transB = 1", "[O, H = 4]"]);
}

#[test]
fn gemm_scaling_and_trans_a_are_refused() {
    for (a, parts) in [
        (attr_f("alpha", 0.5), vec!["alpha", "0.5"]),
        (attr_f("beta", 2.0), vec!["beta", "2"]),
        (attr_i("transA", 1), vec!["transA", "1"]),
    ] {
        let (m, _, _) = gemm_model(0, vec![]);
        let m = with_node(m, "head_gemm", |n| {
            n.attribute.retain(|x| x.name() != a.name());
            n.attribute.push(a);
        });
        let msg = err(&m);
        assert_contains(&msg, &parts);
        assert_contains(&msg, &["Gemm", "head_gemm"]);
    }
}

#[test]
fn head_weight_must_be_constant() {
    let (mut m, _, _) = matmul_head_model(None);
    let g = m.graph.as_mut().expect("graph");
    g.initializer.retain(|t| t.name() != "Wh");
    g.input.push(value("Wh"));
    assert_contains(
        &err(&m),
        &["input B of MatMul node 'head_mm'", "Wh", "graph input"],
    );
}

#[test]
fn matmul_off_the_top_layer_is_refused() {
    // A MatMul on layer 0's output, in a two-layer graph.
    let (mut m, _, _) = two_layers();
    let g = m.graph.as_mut().expect("graph");
    g.initializer
        .push(tensor("Wx", &[4, 2], &vals(8, 4), false));
    g.node
        .push(node("MatMul", "side", &["y0", "Wx"], &["side_out"], vec![]));
    assert_contains(
        &err(&m),
        &["MatMul node 'side'", "not part of a linear head", "gru1"],
    );
}

#[test]
fn add_directly_on_gru_output_is_refused() {
    let (mut m, _) = one_layer(true, true);
    let g = m.graph.as_mut().expect("graph");
    g.initializer.push(tensor("c", &[4], &vals(4, 2), false));
    g.node
        .push(node("Add", "plus", &["gru0_Y", "c"], &["o"], vec![]));
    assert_contains(&err(&m), &["Add node 'plus'", "MatMul or Gemm"]);
}

#[test]
fn cyclic_graph_is_an_error_not_a_hang() {
    let (m, _, _) = two_layers();
    // sq0 reads its own output.
    let m = with_node(m, "sq0", |n| n.input[0] = "y0".to_string());
    assert!(parse(&m).is_err());
}

#[test]
fn constant_sequence_lens_is_refused() {
    let (m, _) = one_layer(true, false);
    let mut m = with_node(m, "gru0", |n| n.input.push("lens".to_string()));
    m.graph
        .as_mut()
        .expect("graph")
        .initializer
        .push(int64_tensor("lens", &[5]));
    assert_contains(
        &err(&m),
        &[
            "gru0",
            "sequence_lens (input 4)",
            "'lens' is an initializer",
        ],
    );
}

#[test]
fn bottom_layer_must_read_a_graph_input() {
    let (mut m, _) = one_layer(true, true);
    let g = m.graph.as_mut().expect("graph");
    g.input.clear();
    g.initializer
        .push(tensor("x", &[2, 1, 3], &vals(6, 9), false));
    assert_contains(&err(&m), &["gru0", "bottom layer", "'x' is an initializer"]);
}

#[test]
fn sparse_weight_is_refused() {
    let (mut m, _) = one_layer(true, true);
    let g = m.graph.as_mut().expect("graph");
    let pos = g
        .initializer
        .iter()
        .position(|t| t.name() == "gru0_R")
        .expect("R");
    let r = g.initializer.remove(pos);
    g.sparse_initializer.push(pb::SparseTensorProto {
        values: Some(r),
        indices: None,
        dims: vec![1, 12, 4],
    });
    assert_contains(&err(&m), &["gru0_R", "sparse initializer"]);
}

#[test]
fn unnamed_nodes_get_positional_labels() {
    let (m, _) = one_layer(true, true);
    let m = with_node(m, "gru0", |n| {
        n.name = None;
        n.attribute.push(attr_s("direction", "reverse"));
    });
    assert_contains(&err(&m), &["<unnamed GRU #0>", "reverse"]);
}

#[test]
fn value_produced_twice_is_malformed() {
    let (mut m, _, _) = two_layers();
    let g = m.graph.as_mut().expect("graph");
    g.node
        .push(node("Identity", "dup", &["x"], &["y0"], vec![]));
    assert_contains(&err(&m), &["malformed", "'y0'", "sq0", "dup"]);
}
