//! One constant node per reader for large weights that several nodes read.
//!
//! tract 0.23 folds a constant subgraph at load only within `CONST_FOLD_MEM_BUDGET` (4 MiB,
//! tract-core's optim/prop_const.rs) when the constant feeds more than one node. A decoder's
//! token table tied to its LM head feeds two: the embedding `Gather` and the head's matmul. The
//! matmul's packing of that table (`OptMatMulPack`) then runs at every call instead of once:
//! on SmolLM2-135M fp32 it repacked the 113 MB head at each decode step, 60 of the step's 75 ms.
//!
//! Giving each reader its own `Const` node over the same `Arc<Tensor>` (no copy) lets tract fold
//! the matmul's packing into a constant like every other weight's; the `Gather` keeps reading the
//! table as stored. Memory: the packed copy every other weight has, made once at load instead of
//! at every step.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::konst::Const;

/// tract-core's `CONST_FOLD_MEM_BUDGET` (not exported): the largest shared constant it folds.
const TRACT_FOLD_BUDGET: usize = 4 << 20;

/// Gives every reader of a constant larger than tract's fold budget its own `Const` node sharing
/// the tensor. Returns how many nodes were added.
pub(crate) fn unshare_large_constants(model: &mut TypedModel) -> TractResult<usize> {
    let mut added = 0;
    for id in 0..model.nodes.len() {
        let node = &model.nodes[id];
        let Some(konst) = node.op_as::<Const>() else { continue };
        let successors = node.outputs[0].successors.clone();
        let value = konst.val().clone();
        // Exotic constants (tract's packed block-quant weights) are tract's own, never shared here.
        if successors.len() < 2
            || konst.exotic_fact().is_some()
            || value.datum_type().size_of() * value.len() <= TRACT_FOLD_BUDGET
        {
            continue;
        }
        let fact = node.outputs[0].fact.clone();
        let name = node.name.clone();
        for (i, inlet) in successors.into_iter().enumerate().skip(1) {
            let op = Const::new(value.clone())?;
            let copy = model.add_node(format!("{name}.reader{i}"), op, tvec!(fact.clone()))?;
            model.add_edge(OutletId::new(copy, 0), inlet)?;
            added += 1;
        }
    }
    Ok(added)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::tract_core::ops::math;

    /// `x + w` and `x · w` (element-wise) over one constant `w` of `rows × 1024` f32.
    fn two_readers(rows: usize) -> TypedModel {
        let mut model = TypedModel::default();
        let x = model.add_source("x", f32::fact([rows, 1024])).unwrap();
        let data: Vec<f32> = (0..rows * 1024).map(|i| (i % 97) as f32 / 97.0).collect();
        let w = tract_ndarray::Array2::from_shape_vec((rows, 1024), data).unwrap().into_tensor();
        let w = model.add_const("w", w).unwrap();
        let a = model.wire_node("sum", math::add(), &[x, w]).unwrap()[0];
        let b = model.wire_node("product", math::mul(), &[x, w]).unwrap()[0];
        model.select_output_outlets(&[a, b]).unwrap();
        model
    }

    fn run(model: TypedModel, rows: usize) -> Vec<Arc<Tensor>> {
        let x = tract_ndarray::Array2::from_elem((rows, 1024), 0.5f32).into_tensor();
        let plan = model.into_optimized().unwrap().into_runnable().unwrap();
        plan.run(tvec!(x.into())).unwrap().into_iter().map(|t| t.into_arc_tensor()).collect()
    }

    /// Past tract's 4 MiB budget each reader gets its own node sharing the tensor, and the
    /// model computes the same; within it nothing changes.
    #[test]
    fn large_constants_get_one_node_per_reader() {
        let rows = 1100; // 4.3 MiB of f32
        let mut model = two_readers(rows);
        let want = run(model.clone(), rows);
        assert_eq!(unshare_large_constants(&mut model).unwrap(), 1);
        let consts: Vec<_> = model.nodes.iter().filter_map(|n| n.op_as::<Const>().map(|c| (n, c))).collect();
        assert_eq!(consts.len(), 2);
        assert!(Arc::ptr_eq(consts[0].1.val(), consts[1].1.val()), "the tensor is shared, not copied");
        assert!(consts.iter().all(|(n, _)| n.outputs[0].successors.len() == 1));
        assert_eq!(run(model, rows), want);

        let mut small = two_readers(1000); // 3.9 MiB
        assert_eq!(unshare_large_constants(&mut small).unwrap(), 0);
    }
}
