use super::*;

#[test]
fn lines() {
    let text = "apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n- level: None\n  resources:\n  - group: \"\"\n    verbs: [get]\n- level: Metadata\n";
    let loaded = load(text);
    eprintln!("{:#?}", loaded);
    panic!();
}
