use kilotune::*;
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let bytes = std::fs::read(&args[1]).unwrap();
    let m = onnx::proto::ModelProto::decode(&bytes).unwrap();
    let (mut g, _) = onnx::import_model(&m, None).unwrap();
    let names: Vec<&str> = args[3].split(',').collect();
    g.outputs = names.iter().map(|n| g.value_named(n).unwrap()).collect();
    graph::fold::fold_constants(&mut g).unwrap();
    let r = &args[2];
    let feeds = g.inputs.iter().filter_map(|i| { let n = &g.values[i.value].name; let p = format!("{r}/{n}.npy"); std::path::Path::new(&p).exists().then(|| (i.value, npy::read(&p).unwrap())) }).collect();
    let plan = backend::cpu::Plan::new(&g);
    let outs = plan.execute(&g, feeds).unwrap();
    for (n, t) in names.iter().zip(outs) { npy::write(format!("/tmp/dbg_{n}.npy"), &t).unwrap(); println!("{n} {:?} {:?}", t.shape(), t.dtype()); }
}
