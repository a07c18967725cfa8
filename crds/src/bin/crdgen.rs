//! Prints every ferry CRD as one YAML stream: `cargo run -p ferry-crds --bin crdgen > charts/ferry/crds/ferry.yaml`.

fn main() {
    print!("{}", ferry_crds::crds_yaml());
}
