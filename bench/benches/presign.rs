//! Criterion: signing one presigned URL with aws-sdk-s3's presigner (the work the API does per
//! `POST …/storage/presigned-url` besides auth, the cluster lookup and the append). No network:
//! presigning is local computation.
//!
//! cargo bench -p bench --bench presign

use std::time::Duration;

use commands::storage::{ObjectStore, PresignRequest};
use criterion::{Criterion, criterion_group, criterion_main};
use domain::Email;
use domain::storage::{FileMethod, Location, ObjectKey};
use gateways::s3::{S3Settings, S3Store};

fn presign(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let store = rt.block_on(S3Store::connect(&S3Settings {
        endpoint: Some("http://127.0.0.1:8014".into()),
        public_endpoint: None,
        region: "us-east-1".into(),
        path_style: true,
        credentials: Some(("bench".into(), "bench-secret".into())),
        create_buckets: false,
        timeout: Duration::from_secs(5),
        filesystem_keys: false,
    }));
    let owner = Email::new("ada@lab.org").expect("email");
    let key = ObjectKey::build(Location::Data, &owner, "runs/input.csv").expect("key");
    c.bench_function("presign_put_url", |b| {
        b.iter(|| {
            rt.block_on(store.presign(PresignRequest {
                bucket: "local".into(),
                key: key.clone(),
                method: FileMethod::Put,
                content_type: None,
                content_length: Some(1024),
                start: chrono::Utc::now(),
                expires_in_seconds: 900,
            }))
            .expect("presigned")
        })
    });
}

criterion_group!(benches, presign);
criterion_main!(benches);
