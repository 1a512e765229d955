//! Every complete pipeline shown in docs/pipeline.md (a YAML block with a top-level `jobs:`)
//! must be valid, so the reference cannot drift from the parser.

#[test]
fn pipelines_in_the_reference_are_valid() {
    let doc = include_str!("../../docs/pipeline.md");
    let mut checked = 0;
    for (i, block) in doc.split("```yaml\n").skip(1).enumerate() {
        let yaml = block.split("```").next().unwrap();
        let complete = yaml.lines().any(|l| l.starts_with("jobs:"));
        if !complete || yaml.contains("  ...") {
            continue;
        }
        if let Err(e) = pipelines::validate_str(yaml, &format!("docs block {}", i + 1)) {
            panic!("a pipeline in docs/pipeline.md is invalid:\n{yaml}\n{e}");
        }
        checked += 1;
    }
    assert!(
        checked >= 8,
        "only {checked} complete pipelines found in the reference"
    );
}
