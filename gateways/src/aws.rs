//! What the AWS adapters (S3, DynamoDB) share: the SDK's configuration loader with this
//! project's HTTP client (rustls with ring, no second TLS stack), the region and, when given,
//! static keys. Each adapter adds its own timeouts and retry policy.

use aws_config::{BehaviorVersion, ConfigLoader, Region};
use aws_sdk_s3::config::Credentials;

/// The loader for `region`; without `credentials`, the AWS default chain.
pub(crate) fn loader(region: &str, credentials: Option<&(String, String)>) -> ConfigLoader {
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
            aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    let loader = aws_config::defaults(BehaviorVersion::latest())
        .http_client(http)
        .region(Region::new(region.to_string()));
    match credentials {
        Some((id, secret)) => loader.credentials_provider(Credentials::new(
            id.clone(),
            secret.clone(),
            None,
            None,
            "clusterra-config",
        )),
        None => loader,
    }
}
