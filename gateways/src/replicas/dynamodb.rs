//! The replica store on DynamoDB (AWS or any DynamoDB-compatible endpoint).
//!
//! One item per node set: partition key `pk` = `<workspace>#<cluster>`, sort key `sk` = the node
//! set (`compute-small`), so one Query on `pk` reads a whole cluster. Every put is conditional on
//! the stored version; a failed condition hands back the stored item
//! (`ReturnValuesOnConditionCheckFailure::AllOld`).

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::config::http::HttpResponse;
use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType,
    ReturnValuesOnConditionCheckFailure, ScalarAttributeType, TableStatus,
};
use chrono::{DateTime, SecondsFormat, Utc};
use commands::replicas::{ReplicaError, ReplicaStore, ReplicaWrite, Replicas};
use domain::scaling::NodeSet;
use domain::{ClusterId, WorkspaceId};

type Item = HashMap<String, AttributeValue>;

/// How many times one call is tried before the store is reported unavailable.
const TRIES: u32 = 5;
/// The wait before the first retry; it doubles each time, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// How long a table this store created may take to become active.
const TABLE_ACTIVE_WITHIN: Duration = Duration::from_secs(60);

/// How to reach the table.
#[derive(Debug, Clone)]
pub struct DynamoSettings {
    /// The endpoint; `None` = AWS's own for the region.
    pub endpoint: Option<String>,
    pub region: String,
    /// Static keys; `None` = the AWS default chain (environment, web identity, instance role).
    pub credentials: Option<(String, String)>,
    pub table: String,
    /// Create the table (on-demand billing) if it does not exist.
    pub create_table: bool,
    /// How long one attempt of one call may take (each call is tried up to 5 times).
    pub timeout: Duration,
}

/// Replica counts in a DynamoDB table.
pub struct DynamoReplicas {
    client: Client,
    table: String,
    /// "table T at ENDPOINT", for error messages.
    place: String,
}

impl DynamoReplicas {
    /// Builds the client and, with `create_table`, makes sure the table exists (creating it and
    /// waiting until it is active). Without `create_table` nothing is called yet: a missing table
    /// shows on the first call, as [`ReplicaError::Unavailable`].
    pub async fn connect(settings: &DynamoSettings) -> Result<Self, ReplicaError> {
        let shared = crate::aws::loader(&settings.region, settings.credentials.as_ref())
            // This adapter retries by itself (see `retrying`), so that only throttling, 5xx and
            // transport failures are retried, with one schedule.
            .retry_config(aws_config::retry::RetryConfig::disabled())
            .timeout_config(
                aws_config::timeout::TimeoutConfig::builder()
                    .operation_attempt_timeout(settings.timeout)
                    .connect_timeout(settings.timeout.min(Duration::from_secs(5)))
                    .build(),
            )
            .load()
            .await;
        let mut config = aws_sdk_dynamodb::config::Builder::from(&shared);
        if let Some(url) = &settings.endpoint {
            config = config.endpoint_url(url.clone());
        }
        let store = Self {
            client: Client::from_conf(config.build()),
            table: settings.table.clone(),
            place: place(settings),
        };
        if settings.create_table {
            store.ensure_table().await?;
        }
        Ok(store)
    }

    /// Runs `call` up to [`TRIES`] times while it fails transiently.
    async fn retrying<T, E, F, Fut>(
        &self,
        op: &'static str,
        mut call: F,
    ) -> Result<T, SdkError<E, HttpResponse>>
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, SdkError<E, HttpResponse>>>,
    {
        let mut attempt = 1;
        loop {
            match call().await {
                Ok(v) => return Ok(v),
                Err(e) if attempt < TRIES && should_retry(&e) => {
                    let delay = backoff(attempt);
                    tracing::warn!(
                        backend = "dynamodb",
                        table = %self.table,
                        op,
                        attempt,
                        delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                        error = %describe(&e),
                        "replica store call failed; retrying"
                    );
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn unavailable<E>(&self, what: &str, e: &SdkError<E, HttpResponse>) -> ReplicaError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let detail = describe(e);
        tracing::warn!(backend = "dynamodb", table = %self.table, error = %detail, "replica store: could not {what}");
        if e.code() == Some("ResourceNotFoundException") {
            return ReplicaError::Unavailable(format!(
                "could not {what}: DynamoDB {} does not exist (create it, or set create_table so \
                 Clusterra creates it): {detail}",
                self.place
            ));
        }
        ReplicaError::Unavailable(format!(
            "could not {what} in DynamoDB {} (tried {TRIES} times): {detail}",
            self.place
        ))
    }

    async fn ensure_table(&self) -> Result<(), ReplicaError> {
        let described = self
            .retrying("DescribeTable", || {
                self.client.describe_table().table_name(&self.table).send()
            })
            .await;
        match described {
            Ok(out) => {
                if out.table().and_then(|t| t.table_status()) == Some(&TableStatus::Active) {
                    return Ok(());
                }
            }
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_resource_not_found_exception()) =>
            {
                self.create_table().await?;
            }
            Err(e) => return Err(self.unavailable("check that the table exists", &e)),
        }
        self.wait_until_active().await
    }

    async fn create_table(&self) -> Result<(), ReplicaError> {
        let built = (|| {
            Ok::<_, aws_sdk_dynamodb::error::BuildError>((
                [
                    AttributeDefinition::builder()
                        .attribute_name("pk")
                        .attribute_type(ScalarAttributeType::S)
                        .build()?,
                    AttributeDefinition::builder()
                        .attribute_name("sk")
                        .attribute_type(ScalarAttributeType::S)
                        .build()?,
                ],
                [
                    KeySchemaElement::builder()
                        .attribute_name("pk")
                        .key_type(KeyType::Hash)
                        .build()?,
                    KeySchemaElement::builder()
                        .attribute_name("sk")
                        .key_type(KeyType::Range)
                        .build()?,
                ],
            ))
        })();
        let (attributes, keys) = built.map_err(|e| {
            ReplicaError::Unavailable(format!(
                "could not describe DynamoDB {} to create it: {e}",
                self.place
            ))
        })?;
        let request = self
            .client
            .create_table()
            .table_name(&self.table)
            .billing_mode(BillingMode::PayPerRequest)
            .set_attribute_definitions(Some(attributes.to_vec()))
            .set_key_schema(Some(keys.to_vec()));
        match self
            .retrying("CreateTable", || request.clone().send())
            .await
        {
            Ok(_) => {
                tracing::info!(backend = "dynamodb", table = %self.table, "created the replica table");
                Ok(())
            }
            // Another process created it first: fine, it is the same table.
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_resource_in_use_exception()) =>
            {
                Ok(())
            }
            Err(e) => Err(self.unavailable("create the table", &e)),
        }
    }

    async fn wait_until_active(&self) -> Result<(), ReplicaError> {
        let deadline = tokio::time::Instant::now() + TABLE_ACTIVE_WITHIN;
        let mut pause = Duration::from_millis(100);
        loop {
            let out = self
                .retrying("DescribeTable", || {
                    self.client.describe_table().table_name(&self.table).send()
                })
                .await;
            match out {
                Ok(out)
                    if out.table().and_then(|t| t.table_status()) == Some(&TableStatus::Active) =>
                {
                    return Ok(());
                }
                Ok(_) => {}
                // Just created: some servers do not list it for a moment.
                Err(e)
                    if e.as_service_error()
                        .is_some_and(|s| s.is_resource_not_found_exception()) => {}
                Err(e) => return Err(self.unavailable("wait for the table", &e)),
            }
            if tokio::time::Instant::now() + pause > deadline {
                return Err(ReplicaError::Unavailable(format!(
                    "DynamoDB {} was not active within {} s of being created",
                    self.place,
                    TABLE_ACTIVE_WITHIN.as_secs()
                )));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(MAX_BACKOFF);
        }
    }

    async fn get_item(&self, key: Item) -> Result<Option<Replicas>, ReplicaError> {
        let request = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key))
            .consistent_read(true);
        let out = self
            .retrying("GetItem", || request.clone().send())
            .await
            .map_err(|e| self.unavailable("read a replica count", &e))?;
        out.item().map(parse_item).transpose()
    }
}

#[async_trait]
impl ReplicaStore for DynamoReplicas {
    async fn put(&self, w: &ReplicaWrite) -> Result<Replicas, ReplicaError> {
        let key = key(&w.workspace, &w.cluster_id, w.node_set);
        let Some(version) = w.expected_version.checked_add(1) else {
            let current = self.get_item(key).await?;
            return Err(ReplicaError::Conflict {
                current: current.map(Box::new),
            });
        };
        let new = Replicas {
            workspace: w.workspace.clone(),
            cluster_id: w.cluster_id.clone(),
            node_set: w.node_set,
            desired: w.desired,
            version,
            updated_at: w.now,
            decided_at: w.decided_at,
        };
        let mut request = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item(&new)))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld);
        request = if w.expected_version == 0 {
            request.condition_expression("attribute_not_exists(pk)")
        } else {
            request
                .condition_expression("#v = :expected")
                .expression_attribute_names("#v", "version")
                .expression_attribute_values(
                    ":expected",
                    AttributeValue::N(w.expected_version.to_string()),
                )
        };
        match self.retrying("PutItem", || request.clone().send()).await {
            Ok(_) => Ok(new),
            Err(e) => {
                let Some(PutItemError::ConditionalCheckFailedException(failed)) =
                    e.as_service_error()
                else {
                    return Err(self.unavailable("write a replica count", &e));
                };
                let current = match failed.item() {
                    Some(stored) => Some(parse_item(stored)?),
                    // Not every server returns the old item: read it.
                    None => self.get_item(key).await?,
                };
                // A retry after a timed-out attempt that did land finds its own write.
                if current.as_ref() == Some(&new) {
                    return Ok(new);
                }
                Err(super::lost_version_check("dynamodb", w, current))
            }
        }
    }

    async fn get(
        &self,
        workspace: &WorkspaceId,
        cluster: &ClusterId,
        set: NodeSet,
    ) -> Result<Option<Replicas>, ReplicaError> {
        self.get_item(key(workspace, cluster, set)).await
    }

    async fn list(
        &self,
        workspace: &WorkspaceId,
        cluster: &ClusterId,
    ) -> Result<Vec<Replicas>, ReplicaError> {
        let query = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk")
            .expression_attribute_values(
                ":pk",
                AttributeValue::S(partition_key(workspace, cluster)),
            )
            .consistent_read(true);
        let mut items = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let page = query.clone().set_exclusive_start_key(start.take());
            let out = self
                .retrying("Query", || page.clone().send())
                .await
                .map_err(|e| self.unavailable("list replica counts", &e))?;
            for stored in out.items() {
                items.push(parse_item(stored)?);
            }
            match out.last_evaluated_key() {
                Some(last) if !last.is_empty() => start = Some(last.clone()),
                _ => break,
            }
        }
        // Node-set order (family, then size), which is not the sort key's alphabetical order.
        items.sort_by_key(|r| r.node_set);
        Ok(items)
    }

    fn backend(&self) -> &'static str {
        "dynamodb"
    }
}

fn place(settings: &DynamoSettings) -> String {
    match &settings.endpoint {
        Some(url) => format!("table {:?} at {url}", settings.table),
        None => format!(
            "table {:?} in AWS region {}",
            settings.table, settings.region
        ),
    }
}

fn partition_key(workspace: &WorkspaceId, cluster: &ClusterId) -> String {
    format!("{workspace}#{cluster}")
}

fn key(workspace: &WorkspaceId, cluster: &ClusterId, set: NodeSet) -> Item {
    HashMap::from([
        (
            "pk".to_string(),
            AttributeValue::S(partition_key(workspace, cluster)),
        ),
        ("sk".to_string(), AttributeValue::S(set.to_string())),
    ])
}

fn item(r: &Replicas) -> Item {
    let mut item = key(&r.workspace, &r.cluster_id, r.node_set);
    let mut put = |name: &str, value| {
        item.insert(name.to_string(), value);
    };
    put("workspace", AttributeValue::S(r.workspace.to_string()));
    put("cluster_id", AttributeValue::S(r.cluster_id.to_string()));
    put("node_set", AttributeValue::S(r.node_set.to_string()));
    put("desired", AttributeValue::N(r.desired.to_string()));
    put("version", AttributeValue::N(r.version.to_string()));
    put(
        "updated_at",
        AttributeValue::S(r.updated_at.to_rfc3339_opts(SecondsFormat::AutoSi, true)),
    );
    put("decided_at", AttributeValue::N(r.decided_at.to_string()));
    item
}

fn parse_item(item: &Item) -> Result<Replicas, ReplicaError> {
    let text = |name: &str| item.get(name).and_then(|v| v.as_s().ok());
    let number = |name: &str| item.get(name).and_then(|v| v.as_n().ok());
    let corrupt = |field: &str| {
        ReplicaError::Corrupt(format!(
            "DynamoDB item (pk {:?}, sk {:?}): missing or bad {field}",
            text("pk").map_or("?", String::as_str),
            text("sk").map_or("?", String::as_str),
        ))
    };
    Ok(Replicas {
        workspace: text("workspace")
            .and_then(|s| WorkspaceId::new(s.clone()).ok())
            .ok_or_else(|| corrupt("workspace"))?,
        cluster_id: text("cluster_id")
            .and_then(|s| ClusterId::new(s.clone()).ok())
            .ok_or_else(|| corrupt("cluster_id"))?,
        node_set: text("node_set")
            .and_then(|s| NodeSet::parse(s))
            .ok_or_else(|| corrupt("node_set"))?,
        desired: number("desired")
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| corrupt("desired"))?,
        version: number("version")
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| corrupt("version"))?,
        updated_at: text("updated_at")
            .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
            .map(|t| t.with_timezone(&Utc))
            .ok_or_else(|| corrupt("updated_at"))?,
        decided_at: number("decided_at")
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| corrupt("decided_at"))?,
    })
}

/// Whether a failed call is worth another try: throttling, server errors and transport failures
/// (timeouts, refused or dropped connections) are; a failed condition or a bad request never is.
fn should_retry<E: ProvideErrorMetadata>(e: &SdkError<E, HttpResponse>) -> bool {
    match e {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            true
        }
        SdkError::ServiceError(s) => {
            retryable_service_error(s.err().code(), s.raw().status().as_u16())
        }
        _ => false,
    }
}

fn retryable_service_error(code: Option<&str>, status: u16) -> bool {
    match code {
        Some("ConditionalCheckFailedException") => false,
        Some(
            "ProvisionedThroughputExceededException"
            | "ThrottlingException"
            | "Throttling"
            | "RequestLimitExceeded"
            | "InternalServerError"
            | "ServiceUnavailable",
        ) => true,
        _ => status >= 500,
    }
}

/// The wait before retry number `attempt` (1 = the first retry).
fn backoff(attempt: u32) -> Duration {
    FIRST_BACKOFF
        .saturating_mul(
            1u32.checked_shl(attempt.saturating_sub(1))
                .unwrap_or(u32::MAX),
        )
        .min(MAX_BACKOFF)
}

fn describe<E>(e: &SdkError<E, HttpResponse>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match e {
        SdkError::ServiceError(s) => format!(
            "HTTP {} {}{}",
            s.raw().status().as_u16(),
            s.err().code().unwrap_or("(no error code)"),
            s.err()
                .message()
                .map(|m| format!(": {m}"))
                .unwrap_or_default()
        ),
        SdkError::TimeoutError(_) => "timed out".to_string(),
        other => format!("{}", DisplayErrorContext(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use domain::scaling::{Family, Size};

    fn sample() -> Replicas {
        Replicas {
            workspace: WorkspaceId::new("acme").expect("id"),
            cluster_id: ClusterId::new("gpu-2").expect("id"),
            node_set: NodeSet {
                family: Family::Memory,
                size: Size::Xlarge,
            },
            desired: 7,
            version: 3,
            updated_at: DateTime::parse_from_rfc3339("2025-03-04T05:06:07.123456789Z")
                .expect("time")
                .with_timezone(&Utc),
            decided_at: 42,
        }
    }

    #[test]
    fn keys_name_the_cluster_and_the_node_set() {
        let r = sample();
        let k = key(&r.workspace, &r.cluster_id, r.node_set);
        assert_eq!(k.len(), 2);
        assert_eq!(k["pk"], AttributeValue::S("acme#gpu-2".into()));
        assert_eq!(k["sk"], AttributeValue::S("memory-xlarge".into()));
    }

    #[test]
    fn an_item_reads_back_as_written() {
        let r = sample();
        let it = item(&r);
        assert_eq!(it["desired"], AttributeValue::N("7".into()));
        assert_eq!(it["version"], AttributeValue::N("3".into()));
        assert_eq!(it["decided_at"], AttributeValue::N("42".into()));
        assert_eq!(
            it["updated_at"],
            AttributeValue::S("2025-03-04T05:06:07.123456789Z".into())
        );
        assert_eq!(parse_item(&it).expect("parse"), r);
    }

    #[test]
    fn an_unreadable_item_is_corrupt_and_says_which_field() {
        for (field, value) in [
            ("desired", AttributeValue::N("-1".into())),
            ("version", AttributeValue::S("3".into())),
            ("node_set", AttributeValue::S("gpu-huge".into())),
            ("updated_at", AttributeValue::S("yesterday".into())),
            ("workspace", AttributeValue::S("Not A Slug".into())),
        ] {
            let mut it = item(&sample());
            it.insert(field.into(), value);
            match parse_item(&it) {
                Err(ReplicaError::Corrupt(m)) => {
                    assert!(m.contains(field) && m.contains("acme#gpu-2"), "{m}")
                }
                other => panic!("{field}: {other:?}"),
            }
        }
        let mut it = item(&sample());
        it.remove("decided_at");
        assert!(matches!(parse_item(&it), Err(ReplicaError::Corrupt(_))));
    }

    #[test]
    fn throttling_and_server_errors_are_retried_a_failed_condition_never() {
        for code in [
            "ProvisionedThroughputExceededException",
            "ThrottlingException",
            "RequestLimitExceeded",
            "InternalServerError",
        ] {
            assert!(retryable_service_error(Some(code), 400), "{code}");
        }
        assert!(retryable_service_error(None, 503));
        assert!(retryable_service_error(Some("Whatever"), 500));
        assert!(!retryable_service_error(
            Some("ConditionalCheckFailedException"),
            400
        ));
        assert!(!retryable_service_error(
            Some("ConditionalCheckFailedException"),
            500
        ));
        assert!(!retryable_service_error(
            Some("ResourceNotFoundException"),
            400
        ));
        assert!(!retryable_service_error(Some("ValidationException"), 400));
    }

    #[test]
    fn timeouts_are_retried_a_request_that_cannot_be_built_is_not() {
        let timeout: SdkError<PutItemError, HttpResponse> =
            SdkError::timeout_error("attempt timed out");
        assert!(should_retry(&timeout));
        let construction: SdkError<PutItemError, HttpResponse> =
            SdkError::construction_failure("bad input");
        assert!(!should_retry(&construction));
    }

    #[test]
    fn backoff_doubles_from_50_ms_and_is_capped() {
        let waits: Vec<u128> = (1..=6).map(|a| backoff(a).as_millis()).collect();
        assert_eq!(waits, vec![50, 100, 200, 400, 800, 1000]);
        assert_eq!(backoff(40), MAX_BACKOFF);
    }
}
