use kilotune::*;
fn main() {
    for p in std::env::args().skip(1) {
        let b = Base::load(&p, LoadOptions::default()).unwrap();
        println!("{p}: {} nodes {:?}", b.graph().nodes.len(), b.graph().op_histogram());
        println!("  {:?}", b.linears().iter().map(|l| l.module.clone()).take(8).collect::<Vec<_>>());
    }
}
