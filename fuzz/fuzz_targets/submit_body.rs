//! The v0.0.44 submit body: any JSON is refused or canonicalized, never a panic; a canonical
//! body is canonical again, with the same shape, and its sizes pass or fail the limits cleanly.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(body) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    if let Ok(first) = domain::submit::canonicalize(&body) {
        let again = domain::submit::canonicalize(&first.body).expect("a canonical body stays valid");
        assert_eq!(again.shape, first.shape);
        let catalog = domain::scaling::Catalog::parse(
            include_str!("../../fixtures/catalog/shapes.json"),
            512,
        )
        .expect("the built-in catalog parses");
        let limits = domain::scaling::JobLimits::from_catalog(&catalog, 64, 256, 0);
        let _ = limits.check(&first.shape, "job.memory_per_node");
    }
});
