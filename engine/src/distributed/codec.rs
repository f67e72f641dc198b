//! [`VeilCodec`]: how Veil's plan parts travel in DataFusion's protobuf
//! plans to Ballista's scheduler and executors.
//!
//! - The governance barrier (`GovernedScanExec`): its source, its hidden
//!   input (a nested physical plan), its row predicate, its masked and
//!   passed-on columns. On arrival it is the same opaque barrier.
//! - Masks: `veil_udfs::encode_mask`, keys sealed under the cluster key
//!   (never in clear). A codec without the key (the scheduler's) decodes
//!   them sealed: they plan and travel on, and refuse to run.
//! - `decimal_mul` / `_add` / `_sub` and `avg_of_sum`: their operand types.
//! - DataFusion's own functions travel by name. Any other function (Veil's
//!   statement-bound checks, its memory-bounded wrappers of DataFusion's
//!   functions, which share a name with the function they wrap) and any
//!   other Veil operator cannot be encoded: such a plan runs on the front
//!   end instead (`distributed/mod.rs`).

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

use ballista_core::serde::BallistaPhysicalExtensionCodec;
use datafusion::common::{internal_datafusion_err, internal_err, plan_err, Result};
use datafusion::execution::{SessionStateBuilder, TaskContext};
use datafusion::logical_expr::{AggregateUDF, ScalarUDF, WindowUDF};
use datafusion::physical_plan::ExecutionPlan;
use datafusion_proto::physical_plan::{
    PhysicalExtensionCodec, PhysicalPlanDecodeContext, PhysicalProtoConverterExtension,
};
use datafusion_proto::protobuf::{PhysicalExprNode, PhysicalPlanNode};
use prost::Message;
use veil_udfs::{decode_mask, encode_mask, ClusterKey};

use crate::avg_sums::AvgOfSum;
use crate::decimal_arith::{DecimalArith, DecimalOp};
use crate::governance::node::GovernedScanExec;

/// Veil's [`PhysicalExtensionCodec`], which also carries Ballista's own
/// operators (shuffles) through Ballista's codec. The front end's and
/// executors' hold the cluster key; the scheduler's holds none.
#[derive(Debug, Clone)]
pub struct VeilCodec {
    cluster: Option<ClusterKey>,
    ballista: Arc<BallistaPhysicalExtensionCodec>,
}

impl VeilCodec {
    /// The codec of a process that seals (front end) or opens (executor)
    /// mask keys with `cluster`.
    pub fn with_key(cluster: ClusterKey) -> Self {
        Self {
            cluster: Some(cluster),
            ballista: Arc::default(),
        }
    }

    /// The scheduler's codec: masks pass through sealed.
    pub fn sealed() -> Self {
        Self {
            cluster: None,
            ballista: Arc::default(),
        }
    }
}

/// What Veil's operators start with (Ballista's never do: they are a
/// protobuf message whose first byte is a field tag).
const VEIL_NODE: &[u8] = b"veil\0";

/// A Veil operator in a plan.
#[derive(Clone, PartialEq, Message)]
struct VeilNode {
    /// Which operator: `governed_scan`.
    #[prost(string, tag = "1")]
    kind: String,
    /// The data source, `schema.table`.
    #[prost(string, tag = "2")]
    source: String,
    /// The barrier's hidden input.
    #[prost(message, optional, boxed, tag = "3")]
    inner: Option<Box<PhysicalPlanNode>>,
    /// The row predicate, over the input's schema.
    #[prost(message, optional, tag = "4")]
    predicate: Option<PhysicalExprNode>,
    /// Raw columns the barrier's parent masks.
    #[prost(string, repeated, tag = "5")]
    masked: Vec<String>,
    /// Whether only `output` of the input's columns are passed on.
    #[prost(bool, tag = "6")]
    narrowed: bool,
    #[prost(uint64, repeated, tag = "7")]
    output: Vec<u64>,
}

/// A Veil function in a plan.
#[derive(Clone, PartialEq, Message)]
struct VeilFunction {
    /// `mask`, `decimal_arith` or `avg_of_sum`.
    #[prost(string, tag = "1")]
    kind: String,
    /// A mask's wire form (`veil_udfs::encode_mask`).
    #[prost(bytes = "vec", tag = "2")]
    mask: Vec<u8>,
    /// `mul`, `add` or `sub`.
    #[prost(string, tag = "3")]
    op: String,
    /// Operands' (or the averaged column's) precision and scale, in turn.
    #[prost(int32, repeated, tag = "4")]
    decimals: Vec<i32>,
}

const GOVERNED_SCAN: &str = "governed_scan";

/// DataFusion's own functions, by name: a function of a plan that is one
/// of these (equal, not only of the same name) travels by its name.
struct Builtins {
    scalar: HashMap<String, Arc<ScalarUDF>>,
    aggregate: HashMap<String, Arc<AggregateUDF>>,
    window: HashMap<String, Arc<WindowUDF>>,
}

static BUILTINS: LazyLock<Builtins> = LazyLock::new(|| {
    let state = SessionStateBuilder::new().with_default_features().build();
    Builtins {
        scalar: state.scalar_functions().clone(),
        aggregate: state.aggregate_functions().clone(),
        window: state.window_functions().clone(),
    }
});

fn unshippable<T>(what: &str, name: &str) -> Result<T> {
    plan_err!("{what} {name} cannot run on the cluster")
}

fn decimal(pair: &[i32]) -> Result<(u8, i8)> {
    match pair {
        [p, s] => Ok((
            u8::try_from(*p).map_err(|_| internal_datafusion_err!("bad precision {p}"))?,
            i8::try_from(*s).map_err(|_| internal_datafusion_err!("bad scale {s}"))?,
        )),
        _ => plan_err!("a decimal type is a precision and a scale"),
    }
}

impl PhysicalExtensionCodec for VeilCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
        ctx: &TaskContext,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let Some(buf) = buf.strip_prefix(VEIL_NODE) else {
            return self.ballista.try_decode(buf, inputs, ctx, proto_converter);
        };
        let node = VeilNode::decode(buf)
            .map_err(|e| internal_datafusion_err!("not a Veil operator: {e}"))?;
        if node.kind != GOVERNED_SCAN {
            return plan_err!("unknown Veil operator {:?}", node.kind);
        }
        // The front end nests the hidden input; a Ballista node passes it on
        // as the (open) barrier's child.
        let decode = PhysicalPlanDecodeContext::new(ctx, self);
        let inner = match (node.inner, inputs) {
            (Some(inner), []) => proto_converter.proto_to_execution_plan(&inner, &decode)?,
            (None, [inner]) => Arc::clone(inner),
            _ => return internal_err!("a governed scan without its input"),
        };
        let predicate = node
            .predicate
            .map(|p| proto_converter.proto_to_physical_expr(&p, &inner.schema(), &decode))
            .transpose()?;
        let output = node.narrowed.then(|| {
            node.output
                .iter()
                .map(|i| *i as usize)
                .collect::<Arc<[usize]>>()
        });
        let barrier = GovernedScanExec::new(
            node.source,
            inner,
            predicate,
            node.masked.into(),
            None,
            output,
        )?;
        // Open, so that Ballista's scheduler gives each task its own
        // partitions of the hidden input (see `GovernedScanExec::opened`).
        Ok(Arc::new(barrier.opened()))
    }

    fn try_encode(
        &self,
        node: Arc<dyn ExecutionPlan>,
        buf: &mut Vec<u8>,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<()> {
        let Some(barrier) = node.downcast_ref::<GovernedScanExec>() else {
            // Ballista's operators; any other is refused there.
            return self.ballista.try_encode(node, buf, proto_converter);
        };
        let (source, inner, predicate, masked, output) = barrier.parts();
        let message = VeilNode {
            kind: GOVERNED_SCAN.into(),
            source: source.into(),
            // An open barrier's input is its child, which DataFusion encodes.
            inner: match barrier.is_open() {
                true => None,
                false => Some(Box::new(
                    proto_converter.execution_plan_to_proto(inner, self)?,
                )),
            },
            predicate: predicate
                .map(|p| proto_converter.physical_expr_to_proto(p, self))
                .transpose()?,
            masked: masked.to_vec(),
            narrowed: output.is_some(),
            output: output
                .map(|o| o.iter().map(|i| *i as u64).collect())
                .unwrap_or_default(),
        };
        buf.extend_from_slice(VEIL_NODE);
        message
            .encode(buf)
            .map_err(|e| internal_datafusion_err!("cannot encode a governed scan: {e}"))
    }

    fn try_decode_udf(&self, name: &str, buf: &[u8]) -> Result<Arc<ScalarUDF>> {
        let function = VeilFunction::decode(buf)
            .map_err(|e| internal_datafusion_err!("not a Veil function {name}: {e}"))?;
        let udf = match function.kind.as_str() {
            "mask" => decode_mask(&function.mask, self.cluster.as_ref())?,
            "decimal_arith" => {
                let op = match function.op.as_str() {
                    "mul" => DecimalOp::Mul,
                    "add" => DecimalOp::Add,
                    "sub" => DecimalOp::Sub,
                    other => return plan_err!("unknown decimal operation {other:?}"),
                };
                let (l, r) = function.decimals.split_at(function.decimals.len().min(2));
                let arith = DecimalArith::new(op, decimal(l)?, decimal(r)?)
                    .ok_or_else(|| internal_datafusion_err!("{name} of unsupported types"))?;
                ScalarUDF::new_from_impl(arith)
            }
            "avg_of_sum" => {
                let (precision, scale) = decimal(&function.decimals)?;
                ScalarUDF::new_from_impl(AvgOfSum::new(precision, scale))
            }
            other => return plan_err!("unknown Veil function kind {other:?} ({name})"),
        };
        Ok(Arc::new(udf))
    }

    fn try_encode_udf(&self, node: &ScalarUDF, buf: &mut Vec<u8>) -> Result<()> {
        if BUILTINS
            .scalar
            .get(node.name())
            .is_some_and(|b| b.as_ref() == node)
        {
            return Ok(());
        }
        let any: &dyn std::any::Any = node.inner().as_ref();
        let function = if let Some(arith) = any.downcast_ref::<DecimalArith>() {
            let (op, (lp, ls), (rp, rs)) = arith.parts();
            VeilFunction {
                kind: "decimal_arith".into(),
                op: match op {
                    DecimalOp::Mul => "mul",
                    DecimalOp::Add => "add",
                    DecimalOp::Sub => "sub",
                }
                .into(),
                decimals: vec![lp.into(), ls.into(), rp.into(), rs.into()],
                ..Default::default()
            }
        } else if let Some(avg) = any.downcast_ref::<AvgOfSum>() {
            let (precision, scale) = avg.input();
            VeilFunction {
                kind: "avg_of_sum".into(),
                decimals: vec![precision.into(), scale.into()],
                ..Default::default()
            }
        } else {
            // A process without the cluster key (the scheduler) passes on
            // the sealed masks it received.
            match encode_mask(node, self.cluster.as_ref()) {
                Some(mask) => VeilFunction {
                    kind: "mask".into(),
                    mask: mask?,
                    ..Default::default()
                },
                None => return unshippable("function", node.name()),
            }
        };
        function
            .encode(buf)
            .map_err(|e| internal_datafusion_err!("cannot encode {}: {e}", node.name()))
    }

    fn try_encode_udaf(&self, node: &AggregateUDF, _buf: &mut Vec<u8>) -> Result<()> {
        match BUILTINS.aggregate.get(node.name()) {
            Some(b) if b.as_ref() == node => Ok(()),
            _ => unshippable("aggregate function", node.name()),
        }
    }

    fn try_encode_udwf(&self, node: &WindowUDF, _buf: &mut Vec<u8>) -> Result<()> {
        match BUILTINS.window.get(node.name()) {
            Some(b) if b.as_ref() == node => Ok(()),
            _ => unshippable("window function", node.name()),
        }
    }
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::datatypes::DataType;
    use datafusion::logical_expr::{create_udf, ColumnarValue, Volatility};

    use super::*;

    fn encoded(codec: &VeilCodec, udf: &ScalarUDF) -> Result<Vec<u8>> {
        let mut buf = vec![];
        codec.try_encode_udf(udf, &mut buf)?;
        Ok(buf)
    }

    #[test]
    fn decimal_functions_travel_with_their_operand_types() {
        let codec = VeilCodec::sealed();
        let arith = DecimalArith::new(DecimalOp::Mul, (15, 2), (15, 2)).unwrap();
        for udf in [
            ScalarUDF::new_from_impl(arith),
            ScalarUDF::new_from_impl(AvgOfSum::new(15, 2)),
        ] {
            let buf = encoded(&codec, &udf).unwrap();
            assert!(!buf.is_empty());
            assert_eq!(
                codec.try_decode_udf(udf.name(), &buf).unwrap().as_ref(),
                &udf
            );
        }
    }

    #[test]
    fn datafusion_functions_travel_by_name_and_lookalikes_not_at_all() {
        let codec = VeilCodec::sealed();
        let upper = datafusion::functions::string::upper();
        assert!(encoded(&codec, &upper).unwrap().is_empty());
        // A function of this process under a DataFusion name (as Veil's
        // memory-bounded wrappers are) must not become DataFusion's there.
        let lookalike = create_udf(
            "upper",
            vec![DataType::Utf8],
            DataType::Utf8,
            Volatility::Immutable,
            Arc::new(|args: &[ColumnarValue]| Ok(args[0].clone())),
        );
        let refused = encoded(&codec, &lookalike).unwrap_err().to_string();
        assert!(
            refused.contains("upper cannot run on the cluster"),
            "{refused}"
        );
    }

    #[test]
    fn garbage_is_an_error() {
        let codec = VeilCodec::sealed();
        assert!(codec.try_decode_udf("x", b"\xff\xff\xff").is_err());
        let wrong_kind = VeilFunction {
            kind: "nope".into(),
            ..Default::default()
        }
        .encode_to_vec();
        assert!(codec.try_decode_udf("x", &wrong_kind).is_err());
        let short = VeilFunction {
            kind: "avg_of_sum".into(),
            decimals: vec![300],
            ..Default::default()
        }
        .encode_to_vec();
        assert!(codec.try_decode_udf("x", &short).is_err());
    }
}
