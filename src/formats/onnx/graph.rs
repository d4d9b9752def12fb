//! Lookup tables over one ONNX graph: where each value comes from, who
//! consumes it, which op kinds may appear; node labels and attributes.

use std::collections::{HashMap, HashSet};

use super::{is_default_domain, pb, OnnxError, Result};

/// The roles nodes may play; everything else is [`OpKind::Other`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum OpKind {
    Gru,
    /// Squeeze, Unsqueeze, Transpose, Reshape, Flatten, Identity: they move
    /// data around without changing values, so they may sit between layers.
    Shape,
    Constant,
    MatMul,
    Add,
    Gemm,
    Other,
}

pub(super) fn op_kind(node: &pb::NodeProto) -> OpKind {
    if !is_default_domain(node.domain()) {
        return OpKind::Other;
    }
    match node.op_type() {
        "GRU" => OpKind::Gru,
        "Squeeze" | "Unsqueeze" | "Transpose" | "Reshape" | "Flatten" | "Identity" => OpKind::Shape,
        "Constant" => OpKind::Constant,
        "MatMul" => OpKind::MatMul,
        "Add" => OpKind::Add,
        "Gemm" => OpKind::Gemm,
        _ => OpKind::Other,
    }
}

/// Where a value comes from.
#[derive(Debug, Clone, Copy)]
pub(super) enum Origin<'a> {
    /// Output `output` of node `node`.
    Node {
        node: usize,
        output: usize,
    },
    Initializer(&'a pb::TensorProto),
    SparseInitializer,
    GraphInput,
    Undefined,
}

/// Lookup tables over one graph, built once.
pub(super) struct GraphIndex<'a> {
    graph: &'a pb::GraphProto,
    kinds: Vec<OpKind>,
    producer: HashMap<&'a str, (usize, usize)>,
    consumers: HashMap<&'a str, Vec<(usize, usize)>>,
    initializers: HashMap<&'a str, &'a pb::TensorProto>,
    sparse: HashSet<&'a str>,
    inputs: HashSet<&'a str>,
}

impl<'a> GraphIndex<'a> {
    pub(super) fn new(graph: &'a pb::GraphProto) -> Result<Self> {
        let mut producer = HashMap::new();
        let mut consumers: HashMap<&str, Vec<(usize, usize)>> = HashMap::new();
        for (i, node) in graph.node.iter().enumerate() {
            for (o, name) in node.output.iter().enumerate() {
                if name.is_empty() {
                    continue;
                }
                if let Some((j, _)) = producer.insert(name.as_str(), (i, o)) {
                    return Err(OnnxError::Malformed(format!(
                        "value '{name}' is produced by two nodes ('{}' and '{}')",
                        label_of(graph, j),
                        label_of(graph, i)
                    )));
                }
            }
            for (p, name) in node.input.iter().enumerate() {
                if !name.is_empty() {
                    consumers.entry(name.as_str()).or_default().push((i, p));
                }
            }
        }
        Ok(GraphIndex {
            graph,
            kinds: graph.node.iter().map(op_kind).collect(),
            producer,
            consumers,
            initializers: graph.initializer.iter().map(|t| (t.name(), t)).collect(),
            sparse: graph
                .sparse_initializer
                .iter()
                .filter_map(|s| s.values.as_ref().map(|v| v.name()))
                .collect(),
            inputs: graph.input.iter().map(|v| v.name()).collect(),
        })
    }

    pub(super) fn node(&self, i: usize) -> &'a pb::NodeProto {
        &self.graph.node[i]
    }

    pub(super) fn kind(&self, i: usize) -> OpKind {
        self.kinds[i]
    }

    pub(super) fn label(&self, i: usize) -> String {
        label_of(self.graph, i)
    }

    /// Refuses every node whose op has no place in an importable graph.
    pub(super) fn check_ops(&self) -> Result<()> {
        for (i, node) in self.graph.node.iter().enumerate() {
            if self.kind(i) == OpKind::Other {
                return Err(OnnxError::UnsupportedOp {
                    node: self.label(i),
                    op_type: node.op_type().to_string(),
                    domain: node.domain().to_string(),
                });
            }
        }
        Ok(())
    }

    /// Where `value` comes from, without looking through any op. A node
    /// output shadows an initializer of the same name, which in turn shadows a
    /// graph input (old exporters list initializers as inputs too).
    pub(super) fn origin(&self, value: &str) -> Origin<'a> {
        if let Some(&(node, output)) = self.producer.get(value) {
            Origin::Node { node, output }
        } else if let Some(t) = self.initializers.get(value) {
            Origin::Initializer(t)
        } else if self.sparse.contains(value) {
            Origin::SparseInitializer
        } else if self.inputs.contains(value) {
            Origin::GraphInput
        } else {
            Origin::Undefined
        }
    }

    /// Follows `value` back through nodes accepted by `through` (always via
    /// their data input 0) and returns the first value that is not such a
    /// node's output, with its origin.
    pub(super) fn trace_back(
        &self,
        value: &'a str,
        through: impl Fn(&pb::NodeProto, OpKind) -> bool,
    ) -> Result<(&'a str, Origin<'a>)> {
        let mut current = value;
        // Each step moves to an earlier node in a well-formed graph; the bound
        // turns a cyclic (malformed) graph into an error instead of a hang.
        for _ in 0..=self.graph.node.len() {
            let origin = self.origin(current);
            match origin {
                Origin::Node { node, .. } if through(self.node(node), self.kind(node)) => {
                    match self.node(node).input.first() {
                        Some(data) if !data.is_empty() => current = data.as_str(),
                        _ => {
                            return Err(OnnxError::Malformed(format!(
                                "{} node '{}' has no data input",
                                self.node(node).op_type(),
                                self.label(node)
                            )))
                        }
                    }
                }
                _ => return Ok((current, origin)),
            }
        }
        Err(OnnxError::Malformed(format!(
            "the graph has a cycle through value '{value}'"
        )))
    }

    /// Describes an origin for error messages.
    pub(super) fn describe(&self, value: &str, origin: Origin<'_>) -> String {
        match origin {
            Origin::Node { node, output } => format!(
                "'{value}' is output {output} of {} node '{}'",
                self.node(node).op_type(),
                self.label(node)
            ),
            Origin::Initializer(_) => format!("'{value}' is an initializer"),
            Origin::SparseInitializer => format!("'{value}' is a sparse initializer"),
            Origin::GraphInput => format!("'{value}' is a graph input"),
            Origin::Undefined => {
                format!("'{value}' is not produced by any node, initializer or graph input")
            }
        }
    }

    /// Resolves a constant input (initializer, or Constant node with a tensor
    /// `value`, possibly behind Identity nodes) to its tensor.
    pub(super) fn constant_tensor(
        &self,
        value: &'a str,
        role: &str,
    ) -> Result<&'a pb::TensorProto> {
        let (name, origin) = self.trace_back(value, is_identity)?;
        let not_constant = |found: String| OnnxError::NotConstant {
            role: role.to_string(),
            value: value.to_string(),
            found,
        };
        match origin {
            Origin::Initializer(t) => Ok(t),
            Origin::Node { node, .. } if self.kind(node) == OpKind::Constant => self
                .node(node)
                .attribute
                .iter()
                .find(|a| a.name() == "value")
                .and_then(|a| a.t.as_ref())
                .ok_or_else(|| {
                    not_constant(format!(
                        "Constant node '{}' has no tensor attribute 'value' (attributes: {})",
                        self.label(node),
                        attribute_names(self.node(node))
                    ))
                }),
            Origin::SparseInitializer => Err(not_constant(format!(
                "'{name}' is a sparse initializer, which is not supported"
            ))),
            other => Err(not_constant(self.describe(name, other))),
        }
    }

    /// Whether `value` is a constant (for shape-op parameters: any Constant
    /// node qualifies, whatever its attribute, since the values are not read).
    pub(super) fn is_constant(&self, value: &'a str) -> Result<bool> {
        let (_, origin) = self.trace_back(value, is_identity)?;
        Ok(match origin {
            Origin::Initializer(_) => true,
            Origin::Node { node, .. } => self.kind(node) == OpKind::Constant,
            _ => false,
        })
    }

    /// Non-shape consumers of `values`, looking forward through shape ops
    /// (as their data input). Returns `(node, input index, value consumed)`.
    pub(super) fn forward_consumers(
        &self,
        values: &[&'a str],
    ) -> Result<Vec<(usize, usize, &'a str)>> {
        let mut found = Vec::new();
        let mut stack: Vec<&'a str> = values.to_vec();
        // Each shape node is expanded once, so this ends even on cyclic graphs.
        let mut seen_nodes = HashSet::new();
        while let Some(v) = stack.pop() {
            for &(n, p) in self.consumers.get(v).map(Vec::as_slice).unwrap_or(&[]) {
                if self.kind(n) == OpKind::Shape && p == 0 {
                    if seen_nodes.insert(n) {
                        stack.extend(
                            self.node(n)
                                .output
                                .iter()
                                .filter(|o| !o.is_empty())
                                .map(String::as_str),
                        );
                    }
                } else {
                    found.push((n, p, v));
                }
            }
        }
        found.sort_unstable();
        found.dedup();
        Ok(found)
    }

    /// MatMul, Add and Gemm are only allowed as the head; Constants anywhere.
    /// Also checks that shape-op parameters (axes, shapes) are constants.
    pub(super) fn check_all_claimed(&self, claimed: &HashSet<usize>, top: usize) -> Result<()> {
        for (i, node) in self.graph.node.iter().enumerate() {
            match self.kind(i) {
                OpKind::MatMul | OpKind::Add | OpKind::Gemm if !claimed.contains(&i) => {
                    return Err(OnnxError::Head {
                        problem: format!(
                            "{} node '{}' is not part of a linear head on the output of the top GRU node '{}'; gru-serve imports graphs of GRU nodes, shape ops and an optional MatMul+Add/Gemm head",
                            node.op_type(),
                            self.label(i),
                            self.label(top)
                        ),
                    })
                }
                OpKind::Shape => {
                    for param in node.input.iter().skip(1).filter(|s| !s.is_empty()) {
                        if !self.is_constant(param)? {
                            let (name, origin) = self.trace_back(param, is_identity)?;
                            return Err(OnnxError::NotConstant {
                                role: format!(
                                    "shape parameter of {} node '{}'",
                                    node.op_type(),
                                    self.label(i)
                                ),
                                value: param.clone(),
                                found: self.describe(name, origin),
                            });
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// Identity is the only op constants are followed through: it is what
/// exporters put between a shared initializer and its users, and unlike the
/// other shape ops it keeps the tensor's dims, which are checked.
pub(super) fn is_identity(node: &pb::NodeProto, kind: OpKind) -> bool {
    kind == OpKind::Shape && node.op_type() == "Identity"
}

pub(super) fn label_of(graph: &pb::GraphProto, i: usize) -> String {
    match graph.node.get(i) {
        Some(n) if !n.name().is_empty() => n.name().to_string(),
        Some(n) => format!("<unnamed {} #{i}>", n.op_type()),
        None => format!("<node #{i}>"),
    }
}

pub(super) fn attribute_names(node: &pb::NodeProto) -> String {
    let names: Vec<&str> = node.attribute.iter().map(|a| a.name()).collect();
    if names.is_empty() {
        "none".to_string()
    } else {
        names.join(", ")
    }
}

pub(super) fn attr_int(a: &pb::AttributeProto) -> std::result::Result<i64, String> {
    a.i.ok_or_else(|| format!("must be an INT, found {}", attr_kind(a)))
}

pub(super) fn attr_string(a: &pb::AttributeProto) -> std::result::Result<String, String> {
    a.s.as_ref()
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .ok_or_else(|| format!("must be a STRING, found {}", attr_kind(a)))
}

/// Names the attribute's declared type, for messages.
pub(super) fn attr_kind(a: &pb::AttributeProto) -> String {
    match a.r#type.map(pb::attribute_proto::AttributeType::try_from) {
        Some(Ok(t)) => t.as_str_name().to_string(),
        Some(Err(_)) => format!("type #{}", a.r#type.unwrap_or_default()),
        None => "an attribute without a type".to_string(),
    }
}
