//! The hand decoder against the generated type: what it sends reads back
//! field by field, and written again it is the same request.

use std::collections::BTreeMap;

use prost::Message;

use super::super::pb;
use super::*;

fn p(c: C) -> pb::InferParameter {
    pb::InferParameter {
        parameter_choice: Some(c),
    }
}

/// Everything the generated type can carry, as a client sends it.
fn generated() -> pb::ModelInferRequest {
    use pb::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};
    pb::ModelInferRequest {
        model_name: "sine".into(),
        model_version: "3".into(),
        id: "req-é".into(),
        parameters: BTreeMap::from([
            ("sequence_id".into(), p(C::Int64Param(42))),
            ("sequence_start".into(), p(C::BoolParam(true))),
            ("custom".into(), p(C::StringParam("x".into()))),
            ("ratio".into(), p(C::DoubleParam(0.5))),
            ("big".into(), p(C::Uint64Param(u64::MAX))),
            ("unset".into(), pb::InferParameter::default()),
        ]),
        inputs: vec![
            InferInputTensor {
                name: "INPUT".into(),
                datatype: "FP32".into(),
                shape: vec![1, 2, 3],
                parameters: BTreeMap::from([("p".into(), p(C::BoolParam(true)))]),
                contents: None,
            },
            InferInputTensor {
                name: "SEQUENCE_LENGTH".into(),
                datatype: "INT32".into(),
                shape: vec![1],
                contents: Some(Box::new(pb::InferTensorContents {
                    int_contents: vec![2],
                    ..Default::default()
                })),
                ..Default::default()
            },
        ],
        outputs: vec![
            InferRequestedOutputTensor {
                name: "OUTPUT".into(),
                parameters: BTreeMap::from([("binary_data".into(), p(C::BoolParam(true)))]),
            },
            InferRequestedOutputTensor {
                name: "mine".into(),
                ..Default::default()
            },
        ],
        raw_input_contents: vec![Bytes::from(vec![1u8; 24]), Bytes::from(vec![2u8; 4])],
    }
}

#[test]
fn reads_what_the_generated_type_sends_and_writes_it_back() {
    let sent = generated();
    let got = ModelInferRequest::decode(&sent.encode_to_vec()[..]).unwrap();
    assert_eq!(
        (&*got.model_name, &*got.model_version, &*got.id),
        ("sine", "3", "req-é")
    );
    let mut params = got.parameters.0.clone();
    params.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        params,
        vec![
            ("big".into(), Param::UInt(u64::MAX)),
            ("custom".into(), Param::Str("x".into())),
            ("ratio".into(), Param::Double(0.5)),
            ("sequence_id".into(), Param::Int(42)),
            ("sequence_start".into(), Param::Bool(true)),
        ]
    );
    let key = |k: &str| {
        got.parameters
            .0
            .iter()
            .find(|(n, _)| n == k)
            .unwrap()
            .0
            .clone()
    };
    assert!(matches!(key("sequence_id"), Name::Borrowed(_)));
    assert!(matches!(key("custom"), Name::Owned(_)));
    assert_eq!(got.inputs.len(), 2);
    assert_eq!(
        (
            &*got.inputs[0].name,
            &*got.inputs[0].datatype,
            &got.inputs[0].shape[..]
        ),
        ("INPUT", "FP32", &[1i64, 2, 3][..])
    );
    assert!(matches!(got.inputs[0].name, Name::Borrowed(_)));
    assert_eq!(got.inputs[1].contents.as_ref().unwrap().int_contents, [2]);
    assert_eq!(got.outputs, [Name::from("OUTPUT"), Name::from("mine")]);
    assert_eq!(got.raw_input_contents, sent.raw_input_contents);

    // Written back, the generated type reads the same request, less the
    // tensors' parameter maps this type skips and the unset parameter.
    let mut expect = sent.clone();
    expect.parameters.remove("unset");
    expect.inputs[0].parameters.clear();
    expect.outputs[0].parameters.clear();
    let bytes = got.encode_to_vec();
    assert_eq!(bytes.len(), got.encoded_len());
    assert_eq!(pb::ModelInferRequest::decode(&bytes[..]).unwrap(), expect);
}

#[test]
fn a_request_split_across_buffer_chunks_reads_the_same() {
    use prost::bytes::Buf;
    let bytes = generated().encode_to_vec();
    let whole = ModelInferRequest::decode(&bytes[..]).unwrap();
    for cut in 0..=bytes.len() {
        let (a, b) = bytes.split_at(cut);
        let got = ModelInferRequest::decode(a.chain(b)).unwrap();
        assert_eq!(got, whole, "split at {cut}");
    }
}

#[test]
fn field_by_field_decoding_reads_the_same_as_the_whole_message() {
    // prost's generic loop (a nested message's decoding) goes through
    // merge_field; Message::decode through the slice parser.
    let bytes = generated().encode_length_delimited_to_vec();
    let mut by_field = ModelInferRequest::default();
    prost::encoding::message::merge(
        WireType::LengthDelimited,
        &mut by_field,
        &mut &bytes[..],
        DecodeContext::default(),
    )
    .unwrap();
    let whole = ModelInferRequest::decode_length_delimited(&bytes[..]).unwrap();
    assert_eq!(by_field, whole);
    assert_eq!(whole.inputs.len(), 2);
}

#[test]
fn a_repeated_parameter_keeps_its_last_value_and_an_unset_one_removes_it() {
    let entry = |k: &str, v: pb::InferParameter| {
        let mut one = pb::ModelInferRequest::default();
        one.parameters.insert(k.into(), v);
        one.encode_to_vec()
    };
    let mut wire = entry("sequence_id", p(C::Int64Param(1)));
    wire.extend(entry("sequence_end", p(C::BoolParam(true))));
    wire.extend(entry("sequence_id", p(C::Int64Param(2))));
    wire.extend(entry("sequence_end", pb::InferParameter::default()));
    let got = ModelInferRequest::decode(&wire[..]).unwrap();
    assert_eq!(
        got.parameters.0,
        vec![("sequence_id".into(), Param::Int(2))]
    );
    // The generated type agrees (a map's last entry wins).
    let generated = pb::ModelInferRequest::decode(&wire[..]).unwrap();
    assert_eq!(generated.parameters["sequence_id"], p(C::Int64Param(2)));
}

#[test]
fn truncated_or_mistyped_fields_are_decode_errors_not_panics() {
    let bytes = generated().encode_to_vec();
    for cut in 1..bytes.len() {
        // Any prefix either decodes (a field boundary) or is an error.
        let _ = ModelInferRequest::decode(&bytes[..cut]);
    }
    assert!(ModelInferRequest::decode(&bytes[..bytes.len() - 1]).is_err());
    // model_name (tag 1) sent as a varint.
    assert!(ModelInferRequest::decode(&[0x08, 0x01][..]).is_err());
    // A parameter key that is not UTF-8.
    let bad = [0x22, 0x04, 0x0a, 0x02, 0xff, 0xfe];
    assert!(ModelInferRequest::decode(&bad[..]).is_err());
    // An input (tag 5) whose length runs past the end.
    assert!(ModelInferRequest::decode(&[0x2a, 0x09, 0x0a, 0x01][..]).is_err());
}

#[test]
fn into_request_reads_raw_and_typed_inputs_and_refuses_a_mismatch() {
    let mut sent = generated();
    sent.inputs.truncate(1);
    sent.raw_input_contents.truncate(1);
    sent.outputs.truncate(1);
    let r = ModelInferRequest::decode(&sent.encode_to_vec()[..])
        .unwrap()
        .into_request()
        .unwrap();
    let one = f32::from_le_bytes([1; 4]);
    assert_eq!(r.inputs[0].data, Data::F32(vec![one; 6]));
    assert_eq!(r.outputs, [Name::from("OUTPUT")]);
    assert_eq!(r.params.get("sequence_id"), Some(&Param::Int(42)));

    let mut two_raw = generated();
    two_raw.raw_input_contents.truncate(1);
    let e = ModelInferRequest::decode(&two_raw.encode_to_vec()[..])
        .unwrap()
        .into_request()
        .unwrap_err();
    assert!(e
        .error
        .message
        .contains("raw_input_contents has 1 entries for 2 inputs"));
    assert_eq!((&*e.echo.model, &*e.echo.id), ("sine", "req-é"));
}

mod props {
    use std::collections::BTreeMap;

    use proptest::prelude::*;
    use prost::Message;

    use super::super::super::pb;
    use super::super::*;
    use super::p;
    use pb::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};

    /// A name: mostly the protocol's own, sometimes anything.
    fn name() -> impl Strategy<Value = String> {
        prop_oneof![
            3 => prop::sample::select(vec![
                "INPUT", "STATE_IN", "SEQUENCE_LENGTH", "OUTPUT", "STATE_OUT", "FP32",
                "INT32", "INT64", "sequence_id", "sequence_start", "sequence_end",
                "sequence_step", "BYTES", "",
            ])
            .prop_map(str::to_string),
            1 => ".{0,12}",
        ]
    }

    fn value() -> impl Strategy<Value = pb::InferParameter> {
        prop_oneof![
            any::<bool>().prop_map(|b| p(C::BoolParam(b))),
            any::<i64>().prop_map(|n| p(C::Int64Param(n))),
            any::<u64>().prop_map(|n| p(C::Uint64Param(n))),
            any::<f64>().prop_map(|d| p(C::DoubleParam(d))),
            ".{0,8}".prop_map(|s| p(C::StringParam(s))),
            Just(pb::InferParameter::default()),
        ]
    }

    fn params() -> impl Strategy<Value = BTreeMap<String, pb::InferParameter>> {
        prop::collection::btree_map(name(), value(), 0..5)
    }

    fn request() -> impl Strategy<Value = pb::ModelInferRequest> {
        let input = (
            name(),
            name(),
            prop::collection::vec(any::<i64>(), 0..4),
            params(),
            prop::option::of(prop::collection::vec(any::<f32>(), 0..6)),
        )
            .prop_map(
                |(name, datatype, shape, parameters, fp32)| InferInputTensor {
                    name,
                    datatype,
                    shape,
                    parameters,
                    contents: fp32.map(|v| {
                        Box::new(pb::InferTensorContents {
                            fp32_contents: v,
                            ..Default::default()
                        })
                    }),
                },
            );
        let output = (name(), params())
            .prop_map(|(name, parameters)| InferRequestedOutputTensor { name, parameters });
        (
            ".{0,12}",
            "[0-9]{0,3}",
            ".{0,6}",
            params(),
            prop::collection::vec(input, 0..3),
            prop::collection::vec(output, 0..3),
            prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 0..3),
        )
            .prop_map(
                |(model_name, model_version, id, parameters, inputs, outputs, raw)| {
                    pb::ModelInferRequest {
                        model_name,
                        model_version,
                        id,
                        parameters,
                        inputs,
                        outputs,
                        raw_input_contents: raw.into_iter().map(Bytes::from).collect(),
                    }
                },
            )
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        /// Any request the generated type sends reads back field by
        /// field, and written again it is the same request to the
        /// generated type (less the tensors' parameter maps, skipped).
        #[test]
        fn any_request_reads_back_as_sent(sent in request()) {
            let got = ModelInferRequest::decode(&sent.encode_to_vec()[..]).unwrap();
            prop_assert_eq!(&got.model_name, &sent.model_name);
            prop_assert_eq!(&got.model_version, &sent.model_version);
            prop_assert_eq!(&got.id, &sent.id);
            let set: BTreeMap<String, pb::InferParameter> = sent
                .parameters
                .iter()
                .filter(|(_, v)| v.parameter_choice.is_some())
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            prop_assert_eq!(got.parameters.0.len(), set.len());
            for (k, v) in &got.parameters.0 {
                prop_assert_eq!(Some(&choice(v)), set.get(&**k));
            }
            prop_assert_eq!(got.inputs.len(), sent.inputs.len());
            for (g, s) in got.inputs.iter().zip(&sent.inputs) {
                prop_assert_eq!((&*g.name, &*g.datatype, &g.shape), (&*s.name, &*s.datatype, &s.shape));
                prop_assert_eq!(&g.contents, &s.contents);
            }
            let names: Vec<&str> = got.outputs.iter().map(|n| &**n).collect();
            let sent_names: Vec<&str> = sent.outputs.iter().map(|o| &*o.name).collect();
            prop_assert_eq!(names, sent_names);
            prop_assert_eq!(&got.raw_input_contents, &sent.raw_input_contents);

            let mut expect = sent.clone();
            expect.parameters = set;
            expect.inputs.iter_mut().for_each(|t| t.parameters.clear());
            expect.outputs.iter_mut().for_each(|o| o.parameters.clear());
            let bytes = got.encode_to_vec();
            prop_assert_eq!(bytes.len(), got.encoded_len());
            prop_assert_eq!(pb::ModelInferRequest::decode(&bytes[..]).unwrap(), expect);
        }

        /// A request with a byte overwritten or cut short decodes or is
        /// refused; it never panics, and neither does reading its tensors.
        #[test]
        fn a_damaged_request_is_refused_or_read_never_a_panic(
            sent in request(),
            at in any::<prop::sample::Index>(),
            byte in any::<u8>(),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut bytes = sent.encode_to_vec();
            if !bytes.is_empty() {
                let i = at.index(bytes.len());
                bytes[i] = byte;
                bytes.truncate(cut.index(bytes.len()) + 1);
            }
            if let Ok(m) = ModelInferRequest::decode(&bytes[..]) {
                let _ = m.into_request();
            }
        }
    }
}
