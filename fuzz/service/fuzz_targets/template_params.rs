//! Template parameters: any JSON object renders or is refused, never a panic; what renders is a
//! valid submit body.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(params) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let Ok(catalog) = commands::templates::Catalog::builtin() else {
        return;
    };
    let ids: Vec<String> = catalog.list().map(|t| t.id.clone()).collect();
    for id in ids {
        if let Ok(body) = catalog.render(&id, &params) {
            let _ = domain::submit::canonicalize(&body);
        }
    }
});
