//! The S3 destination: objects in an S3-compatible bucket through the
//! `object_store` crate (AWS S3, MinIO, moto, s3s, ...).
//!
//! Keys are those of the directory destination (see
//! [`destination`](super::destination)); a `PutObject` of a key replaces the
//! object, so a batch delivered again after a crash overwrites itself. Error
//! output goes under the error output prefix in the same bucket (type
//! `s3-failed`), or to the backup directory when one is set.
//!
//! Settings: `bucket`, `endpoint` (default AWS's for the region; an
//! `http://` endpoint is allowed, for local servers), `region` (default
//! `us-east-1`), `access_key_id` / `secret_access_key` (default: the
//! `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` environment variables and
//! the rest of `object_store`'s environment), and `path_style` (default true:
//! `<endpoint>/<bucket>/<key>`; false for virtual-hosted requests). The
//! client makes at most [`CLIENT_RETRIES`] quick retries of its own; the
//! delivery stream's retry duration governs the rest.

use std::sync::Arc;
use std::time::Duration;

use object_store::ObjectStore;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use serde::{Deserialize, Serialize};

use super::destination::Destination;
use super::error::FirehoseError;

/// Retries of one request by the S3 client itself.
pub const CLIENT_RETRIES: usize = 2;
/// Timeout of one S3 request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// The settings of an S3 destination.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Settings {
    /// The bucket.
    pub bucket: String,
    /// Endpoint URL (`None`: AWS's).
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Region.
    #[serde(default = "default_region")]
    pub region: String,
    /// Access key id (`None`: from the environment).
    #[serde(default)]
    pub access_key_id: Option<String>,
    /// Secret access key (`None`: from the environment).
    #[serde(default)]
    pub secret_access_key: Option<String>,
    /// Path-style requests (`<endpoint>/<bucket>/<key>`).
    #[serde(default = "default_path_style")]
    pub path_style: bool,
}

fn default_region() -> String {
    "us-east-1".into()
}

fn default_path_style() -> bool {
    true
}

impl S3Settings {
    /// Settings for `bucket` with the defaults.
    pub fn new(bucket: impl Into<String>) -> Self {
        Self {
            bucket: bucket.into(),
            endpoint: None,
            region: default_region(),
            access_key_id: None,
            secret_access_key: None,
            path_style: true,
        }
    }

    /// Checks the bucket name and the endpoint.
    ///
    /// # Errors
    /// [`FirehoseError::InvalidDestination`].
    pub fn validate(&self) -> Result<(), FirehoseError> {
        let b = &self.bucket;
        let ok = (3..=63).contains(&b.len())
            && b.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
        if !ok {
            return Err(FirehoseError::InvalidDestination(format!(
                "bucket {:?} is not 3 to 63 characters of [a-z0-9.-]",
                b.chars().take(80).collect::<String>()
            )));
        }
        if let Some(e) = &self.endpoint
            && !(e.starts_with("http://") || e.starts_with("https://"))
        {
            return Err(FirehoseError::InvalidDestination(format!(
                "endpoint {:?} is not http:// or https://",
                e.chars().take(200).collect::<String>()
            )));
        }
        if self.access_key_id.is_some() != self.secret_access_key.is_some() {
            return Err(FirehoseError::InvalidDestination(
                "access_key_id and secret_access_key go together".into(),
            ));
        }
        Ok(())
    }
}

/// Objects in an S3 bucket.
#[derive(Debug, Clone)]
pub struct S3Destination {
    store: Arc<AmazonS3>,
}

impl S3Destination {
    /// A destination with `settings`.
    ///
    /// # Errors
    /// Invalid settings, or a client that cannot be built.
    pub fn new(settings: &S3Settings) -> Result<Self, FirehoseError> {
        settings.validate()?;
        let mut b = AmazonS3Builder::from_env()
            .with_bucket_name(&settings.bucket)
            .with_region(&settings.region)
            .with_virtual_hosted_style_request(!settings.path_style)
            .with_retry(object_store::RetryConfig {
                max_retries: CLIENT_RETRIES,
                retry_timeout: REQUEST_TIMEOUT,
                ..object_store::RetryConfig::default()
            })
            .with_client_options(object_store::ClientOptions::new().with_timeout(REQUEST_TIMEOUT));
        if let Some(e) = &settings.endpoint {
            b = b.with_endpoint(e).with_allow_http(e.starts_with("http://"));
        }
        if let (Some(k), Some(s)) = (&settings.access_key_id, &settings.secret_access_key) {
            b = b.with_access_key_id(k).with_secret_access_key(s);
        }
        let store =
            b.build().map_err(|e| FirehoseError::InvalidDestination(format!("S3 client: {e}")))?;
        Ok(Self { store: Arc::new(store) })
    }
}

impl Destination for S3Destination {
    async fn put(&self, key: &str, body: Vec<u8>) -> Result<(), FirehoseError> {
        let path = object_store::path::Path::parse(key)
            .map_err(|_| FirehoseError::InvalidObjectKey(key.chars().take(200).collect()))?;
        self.store.put(&path, body.into()).await.map(|_| ()).map_err(|e| {
            let code = match &e {
                object_store::Error::PermissionDenied { .. }
                | object_store::Error::Unauthenticated { .. } => "S3.AccessDenied",
                object_store::Error::NotFound { .. } => "S3.NoSuchBucket",
                _ => "S3.PutObjectFailed",
            };
            FirehoseError::Rejected { code: code.into(), message: e.to_string() }
        })
    }

    fn error_output_type(&self) -> &'static str {
        "s3-failed"
    }
}
