//! One ONNX GRU node: its attributes, its weights, and how it is wired
//! (the chain of layers, the state inputs).

use super::graph::{attr_int, attr_string, GraphIndex, OpKind, Origin};
use super::tensor::{read_f32, reshape, to_usize};
use super::{GruNode, OnnxError, Result};

impl<'a> GraphIndex<'a> {
    /// Reads a GRU node's attributes and weights.
    pub(super) fn gru_node(&self, id: usize) -> Result<GruNode> {
        let node = self.node(id);
        let label = self.label(id);
        let attr_err = |attribute: &str, problem: String| OnnxError::Attribute {
            op: "GRU".to_string(),
            node: label.clone(),
            attribute: attribute.to_string(),
            problem,
        };

        let mut hidden_size = None;
        let mut linear_before_reset = false;
        let mut layout = 0;
        for a in &node.attribute {
            match a.name() {
                "hidden_size" => {
                    let h = attr_int(a).map_err(|p| attr_err("hidden_size", p))?;
                    if h <= 0 {
                        return Err(attr_err("hidden_size", format!("must be positive, found {h}")));
                    }
                    hidden_size = Some(h);
                }
                "direction" => {
                    let d = attr_string(a).map_err(|p| attr_err("direction", p))?;
                    match d.as_str() {
                        "forward" => {}
                        "reverse" | "bidirectional" => {
                            return Err(OnnxError::Direction {
                                node: label,
                                direction: d,
                            })
                        }
                        _ => {
                            return Err(attr_err(
                                "direction",
                                format!("must be 'forward', 'reverse' or 'bidirectional', found '{d}'"),
                            ))
                        }
                    }
                }
                "linear_before_reset" => {
                    linear_before_reset = match attr_int(a)
                        .map_err(|p| attr_err("linear_before_reset", p))?
                    {
                        0 => false,
                        1 => true,
                        v => {
                            return Err(attr_err(
                                "linear_before_reset",
                                format!("must be 0 or 1, found {v}"),
                            ))
                        }
                    };
                }
                "layout" => {
                    layout = attr_int(a).map_err(|p| attr_err("layout", p))?;
                    if layout != 0 && layout != 1 {
                        return Err(attr_err("layout", format!("must be 0 or 1, found {layout}")));
                    }
                }
                "activations" => {
                    let acts: Vec<String> = a
                        .strings
                        .iter()
                        .map(|s| String::from_utf8_lossy(s).into_owned())
                        .collect();
                    // ONNX spells them "Sigmoid" and "Tanh"; runtimes match
                    // case-insensitively, so do we.
                    let default = acts.len() == 2
                        && acts[0].eq_ignore_ascii_case("Sigmoid")
                        && acts[1].eq_ignore_ascii_case("Tanh");
                    if !default {
                        return Err(attr_err(
                            "activations",
                            format!(
                                "is {acts:?}; only the default [\"Sigmoid\", \"Tanh\"] is supported"
                            ),
                        ));
                    }
                }
                "clip" => {
                    return Err(attr_err(
                        "clip",
                        format!(
                            "is set ({}); clipped GRUs are not supported",
                            a.f.map_or_else(|| "no value".to_string(), |f| f.to_string())
                        ),
                    ))
                }
                "activation_alpha" | "activation_beta" => {
                    return Err(attr_err(
                        a.name(),
                        format!(
                            "is set ({:?}); only the default activations without parameters are supported",
                            a.floats
                        ),
                    ))
                }
                other => {
                    return Err(attr_err(
                        other,
                        "is not a GRU attribute gru-serve knows; refusing rather than guessing its meaning"
                            .to_string(),
                    ))
                }
            }
        }
        let h = hidden_size
            .ok_or_else(|| attr_err("hidden_size", "is required but missing".to_string()))?;

        let input = |idx: usize| {
            node.input
                .get(idx)
                .map(String::as_str)
                .filter(|s| !s.is_empty())
        };
        let required = |idx: usize, what: &str| {
            input(idx).ok_or_else(|| {
                OnnxError::Malformed(format!(
                    "GRU node '{label}' has no {what} input (input {idx}); it has inputs {:?}",
                    node.input
                ))
            })
        };
        required(0, "X")?;
        let w_name = required(1, "W")?;
        let r_name = required(2, "R")?;

        let w_role = format!("W of GRU node '{label}'");
        let w_tensor = self.constant_tensor(w_name, &format!("input {w_role}"))?;
        let w_dims = w_tensor.dims.clone();
        let (three_h, six_h) = match (h.checked_mul(3), h.checked_mul(6)) {
            (Some(a), Some(b)) => (a, b),
            _ => return Err(attr_err("hidden_size", format!("is absurdly large ({h})"))),
        };
        let w = read_f32(w_tensor)?;
        let (input_size, w) = match w_dims.as_slice() {
            &[1, rows, i] if rows == three_h && i > 0 => (i, reshape(w, &[three_h, i])?),
            _ => {
                return Err(OnnxError::Shape {
                    role: w_role,
                    tensor: w_tensor.name().to_string(),
                    expected: format!(
                        "[1, 3*hidden_size = {three_h}, input_size] (hidden_size = {h})"
                    ),
                    found: w_dims,
                })
            }
        };

        let r_role = format!("R of GRU node '{label}'");
        let r_tensor = self.constant_tensor(r_name, &format!("input {r_role}"))?;
        if r_tensor.dims != [1, three_h, h] {
            return Err(OnnxError::Shape {
                role: r_role,
                tensor: r_tensor.name().to_string(),
                expected: format!("[1, {three_h}, {h}] (hidden_size = {h})"),
                found: r_tensor.dims.clone(),
            });
        }
        let r = reshape(read_f32(r_tensor)?, &[three_h, h])?;

        let b = match input(3) {
            None => None,
            Some(b_name) => {
                let b_role = format!("B of GRU node '{label}'");
                let b_tensor = self.constant_tensor(b_name, &format!("input {b_role}"))?;
                if b_tensor.dims != [1, six_h] {
                    return Err(OnnxError::Shape {
                        role: b_role,
                        tensor: b_tensor.name().to_string(),
                        expected: format!("[1, {}] (hidden_size = {h})", six_h),
                        found: b_tensor.dims.clone(),
                    });
                }
                Some(reshape(read_f32(b_tensor)?, &[six_h])?)
            }
        };

        Ok(GruNode {
            name: node.name().to_string(),
            hidden_size: to_usize(h)?,
            input_size: to_usize(input_size)?,
            linear_before_reset,
            layout,
            w,
            r,
            b,
        })
    }

    /// The bottom layer must read the graph's input (possibly reshaped), not
    /// something computed.
    pub(super) fn check_first_input(&self, id: usize) -> Result<()> {
        let x = self.gru_x(id)?;
        let (name, origin) = self.trace_back(x, |_, k| k == OpKind::Shape)?;
        match origin {
            Origin::GraphInput => Ok(()),
            other => Err(OnnxError::Chain {
                node: self.label(id),
                problem: format!(
                    "as the bottom layer its input X must come from a graph input (through shape ops only), but {}",
                    self.describe(name, other)
                ),
            }),
        }
    }

    /// Layer `id` must read output 0 (`Y`) of layer `prev`, through shape ops only.
    pub(super) fn check_stacked(&self, id: usize, prev: usize) -> Result<()> {
        let x = self.gru_x(id)?;
        let (name, origin) = self.trace_back(x, |_, k| k == OpKind::Shape)?;
        match origin {
            Origin::Node { node, output: 0 } if node == prev => Ok(()),
            other => Err(OnnxError::Chain {
                node: self.label(id),
                problem: format!(
                    "its input X must be output Y (output 0) of GRU node '{}' through shape ops only (Squeeze, Unsqueeze, Transpose, Reshape, Flatten, Identity), but {}",
                    self.label(prev),
                    self.describe(name, other)
                ),
            }),
        }
    }

    pub(super) fn gru_x(&self, id: usize) -> Result<&'a str> {
        match self.node(id).input.first() {
            Some(x) if !x.is_empty() => Ok(x.as_str()),
            _ => Err(OnnxError::Malformed(format!(
                "GRU node '{}' has no X input",
                self.label(id)
            ))),
        }
    }

    /// `sequence_lens` (input 4) and `initial_h` (input 5) may be graph inputs
    /// (run-time values the server supplies itself), and `initial_h` may be an
    /// all-zero constant (the ONNX default). Any other constant would change
    /// the results in a way the imported arrays cannot express.
    pub(super) fn check_state_inputs(&self, id: usize) -> Result<()> {
        let node = self.node(id);
        for (idx, what) in [(4, "sequence_lens"), (5, "initial_h")] {
            let Some(value) = node.input.get(idx).filter(|s| !s.is_empty()) else {
                continue;
            };
            // initial_h may be reshaped on its way in; sequence_lens never is,
            // but following shape ops costs nothing.
            let (name, origin) = self.trace_back(value, |_, k| k == OpKind::Shape)?;
            let ok = match origin {
                Origin::GraphInput => true,
                Origin::Initializer(_) | Origin::Node { .. }
                    if what == "initial_h" && self.is_constant(name)? =>
                {
                    let t = self.constant_tensor(
                        name,
                        &format!("input initial_h of GRU node '{}'", self.label(id)),
                    )?;
                    read_f32(t)?.iter().all(|v| *v == 0.0)
                }
                _ => false,
            };
            if !ok {
                let (allowed, found) = if what == "initial_h" {
                    (
                        "absent, a graph input or an all-zero constant",
                        match origin {
                            Origin::Initializer(_) | Origin::Node { .. }
                                if self.is_constant(name)? =>
                            {
                                format!("'{name}' is a constant with non-zero values")
                            }
                            _ => self.describe(name, origin),
                        },
                    )
                } else {
                    ("absent or a graph input", self.describe(name, origin))
                };
                return Err(OnnxError::StateInput {
                    node: self.label(id),
                    input: format!("{what} (input {idx})"),
                    problem: format!("must be {allowed}, but {found}"),
                });
            }
        }
        Ok(())
    }
}
