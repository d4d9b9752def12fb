//! The optional linear head on the top GRU layer: MatMul (+ Add) or Gemm.

use std::collections::HashSet;

use super::graph::{attr_int, GraphIndex, OpKind};
use super::tensor::{read_bias, read_f32, reshape, transpose2};
use super::{pb, Array, LinearHead, OnnxError, Result};

impl<'a> GraphIndex<'a> {
    /// Finds the optional linear head on top GRU `top` (hidden size `h`).
    /// Returns it and the set of head nodes it consists of.
    pub(super) fn head(
        &self,
        top: usize,
        h: usize,
    ) -> Result<(Option<LinearHead>, HashSet<usize>)> {
        let outs: Vec<&'a str> = self
            .node(top)
            .output
            .iter()
            .take(2)
            .filter(|o| !o.is_empty())
            .map(String::as_str)
            .collect();
        let consumers = self.forward_consumers(&outs)?;
        let mut claimed = HashSet::new();
        let Some(&(first, first_pos, first_val)) = consumers.first() else {
            return Ok((None, claimed));
        };
        if let Some(&(second, _, _)) = consumers.iter().find(|c| c.0 != first) {
            return Err(OnnxError::Head {
                problem: format!(
                    "the output of the top GRU node '{}' feeds two heads: {} node '{}' and {} node '{}'; gru-serve imports at most one linear head",
                    self.label(top),
                    self.node(first).op_type(),
                    self.label(first),
                    self.node(second).op_type(),
                    self.label(second)
                ),
            });
        }
        let top_label = self.label(top);
        let kind = self.kind(first);
        if !matches!(kind, OpKind::MatMul | OpKind::Gemm) || first_pos != 0 || consumers.len() > 1 {
            return Err(OnnxError::Head {
                problem: format!(
                    "the output of the top GRU node '{top_label}' (as '{first_val}') feeds input {first_pos} of {} node '{}'; only a MatMul or Gemm head reading it as input A (0), optionally followed by Add, is supported",
                    self.node(first).op_type(),
                    self.label(first)
                ),
            });
        }
        claimed.insert(first);
        let head_node = self.node(first);
        let head_label = self.label(first);
        let head_err = |problem: String| OnnxError::Head {
            problem: format!(
                "{} head node '{head_label}' on GRU node '{top_label}': {problem}",
                head_node.op_type()
            ),
        };
        let b_name = head_node
            .input
            .get(1)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| head_err("has no weight input B (input 1)".to_string()))?;
        let b_role = format!("input B of {} node '{head_label}'", head_node.op_type());
        let b_tensor = self.constant_tensor(b_name, &b_role)?;
        let b_dims = b_tensor.dims.clone();
        let b_data = read_f32(b_tensor)?;
        let h64 = h as i64;

        let (weight, mut bias) = if kind == OpKind::MatMul {
            let o = match b_dims.as_slice() {
                &[rows, o] if rows == h64 && o > 0 => o,
                _ => {
                    return Err(OnnxError::Shape {
                        role: format!("weight B of MatMul head node '{head_label}'"),
                        tensor: b_tensor.name().to_string(),
                        expected: format!(
                            "[H = {h}, O] (H = hidden_size of GRU node '{top_label}')"
                        ),
                        found: b_dims,
                    })
                }
            };
            let weight = transpose2(&reshape(b_data, &[h64, o])?);
            (weight, None)
        } else {
            self.gemm_head(first, h, b_tensor, b_data, &head_err)?
        };
        let o = weight.shape[0];

        // Past the head: shape ops (already looked through), then at most one
        // Add of a constant bias for MatMul, then nothing but shape ops.
        let mut tail: Vec<&'a str> = head_node
            .output
            .iter()
            .take(1)
            .filter(|s| !s.is_empty())
            .map(String::as_str)
            .collect();
        loop {
            let next = self.forward_consumers(&tail)?;
            let Some(&(n, p, _)) = next.first() else {
                break;
            };
            if next.len() > 1
                || self.kind(n) != OpKind::Add
                || bias.is_some()
                || kind == OpKind::Gemm
            {
                let extra = next
                    .iter()
                    .map(|&(n, _, _)| {
                        format!("{} node '{}'", self.node(n).op_type(), self.label(n))
                    })
                    .collect::<Vec<_>>()
                    .join(", ");
                return Err(head_err(format!(
                    "its output feeds {extra}; after the head only shape ops{} may follow",
                    if kind == OpKind::MatMul && bias.is_none() {
                        " and one Add of a constant bias [O]"
                    } else {
                        ""
                    }
                )));
            }
            claimed.insert(n);
            let add = self.node(n);
            let add_label = self.label(n);
            let other = add
                .input
                .get(1 - p.min(1))
                .filter(|s| !s.is_empty() && add.input.len() == 2)
                .ok_or_else(|| {
                    head_err(format!(
                        "its Add node '{add_label}' must have exactly two inputs, found {:?}",
                        add.input
                    ))
                })?;
            let c =
                self.constant_tensor(other, &format!("bias input of Add node '{add_label}'"))?;
            bias = Some(read_bias(
                c,
                o,
                &format!("bias of Add node '{add_label}'"),
                false,
            )?);
            tail = add
                .output
                .iter()
                .take(1)
                .filter(|s| !s.is_empty())
                .map(String::as_str)
                .collect();
        }
        Ok((Some(LinearHead { weight, bias }), claimed))
    }

    /// Reads a Gemm head: `Y = A · op(B) + C` with alpha = beta = 1, transA = 0.
    pub(super) fn gemm_head(
        &self,
        id: usize,
        h: usize,
        b_tensor: &pb::TensorProto,
        b_data: Vec<f32>,
        head_err: &dyn Fn(String) -> OnnxError,
    ) -> Result<(Array, Option<Array>)> {
        let node = self.node(id);
        let label = self.label(id);
        let mut trans_b = 0;
        for a in &node.attribute {
            let attr_err = |problem: String| OnnxError::Attribute {
                op: "Gemm".to_string(),
                node: label.clone(),
                attribute: a.name().to_string(),
                problem,
            };
            match a.name() {
                "alpha" | "beta" => {
                    let v = a.f.ok_or_else(|| attr_err("must be a FLOAT".to_string()))?;
                    if v != 1.0 {
                        return Err(attr_err(format!(
                            "is {v}; only 1.0 is supported (scale the weights instead)"
                        )));
                    }
                }
                "transA" => {
                    let v = attr_int(a).map_err(attr_err)?;
                    if v != 0 {
                        return Err(attr_err(format!("is {v}; only 0 is supported")));
                    }
                }
                "transB" => {
                    trans_b = attr_int(a).map_err(attr_err)?;
                    if trans_b != 0 && trans_b != 1 {
                        return Err(attr_err(format!("must be 0 or 1, found {trans_b}")));
                    }
                }
                _ => {
                    return Err(attr_err(
                        "is not a Gemm attribute gru-serve knows".to_string(),
                    ))
                }
            }
        }
        let h64 = h as i64;
        let dims = b_tensor.dims.as_slice();
        let weight = match (trans_b, dims) {
            (0, &[rows, o]) if rows == h64 && o > 0 => transpose2(&reshape(b_data, &[h64, o])?),
            (1, &[o, cols]) if cols == h64 && o > 0 => reshape(b_data, &[o, h64])?,
            _ => {
                return Err(OnnxError::Shape {
                    role: format!("weight B of Gemm head node '{label}' (transB = {trans_b})"),
                    tensor: b_tensor.name().to_string(),
                    expected: if trans_b == 0 {
                        format!("[H = {h}, O]")
                    } else {
                        format!("[O, H = {h}]")
                    },
                    found: dims.to_vec(),
                })
            }
        };
        let o = weight.shape[0];
        let bias = match node.input.get(2).filter(|s| !s.is_empty()) {
            None => None,
            Some(c_name) => {
                let c = self.constant_tensor(c_name, &format!("input C of Gemm node '{label}'"))?;
                Some(read_bias(
                    c,
                    o,
                    &format!("C of Gemm head node '{label}'"),
                    true,
                )?)
            }
        };
        if node.input.len() > 3 {
            return Err(head_err(format!(
                "has more than 3 inputs: {:?}",
                node.input
            )));
        }
        Ok((weight, bias))
    }
}
