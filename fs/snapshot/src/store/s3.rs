//! A store in an S3-compatible bucket, through the `object_store` crate. Endpoint, region and
//! credentials come from the AWS_* environment variables (`AWS_ENDPOINT_URL` for a server
//! other than AWS; plain http is allowed for such an endpoint). S3 PUTs are atomic, so a
//! manifest is visible whole or not at all; listings are strongly consistent.
use std::sync::Arc;
use std::time::SystemTime;

use futures::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path;
use object_store::{ObjectStore, PutPayload};

use super::Store;
use crate::error::{Result, SnapshotError};

pub struct S3Store {
    bucket: String,
    prefix: String,
    store: Arc<dyn ObjectStore>,
    runtime: tokio::runtime::Runtime,
}

impl S3Store {
    /// `spec` is `BUCKET[/PREFIX]`.
    pub fn open(spec: &str) -> Result<S3Store> {
        let (bucket, prefix) = spec.split_once('/').unwrap_or((spec, ""));
        if bucket.is_empty() {
            return Err(SnapshotError::Usage("an S3 store is s3://BUCKET[/PREFIX]".into()));
        }
        let mut b = AmazonS3Builder::from_env().with_bucket_name(bucket);
        let endpoint = std::env::var("AWS_ENDPOINT_URL").or_else(|_| std::env::var("AWS_ENDPOINT")).unwrap_or_default();
        if endpoint.starts_with("http://") {
            b = b.with_allow_http(true);
        }
        if !endpoint.is_empty() {
            // An S3-compatible server on one host name: bucket in the path, not the host.
            b = b.with_endpoint(endpoint).with_virtual_hosted_style_request(false);
        }
        if std::env::var("AWS_DEFAULT_REGION").is_err() && std::env::var("AWS_REGION").is_err() {
            b = b.with_region("us-east-1");
        }
        // object_store retries a failed request for up to three minutes by default: a server
        // that is gone should fail the snapshot in seconds, with the store's error.
        b = b.with_retry(object_store::RetryConfig {
            max_retries: 3,
            retry_timeout: std::time::Duration::from_secs(15),
            ..Default::default()
        });
        let store = b.build().map_err(|e| SnapshotError::store(&format!("s3://{spec}"), format!("cannot set up: {e}")))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("mafs-s3")
            .enable_all()
            .build()
            .map_err(|e| SnapshotError::io("cannot start the S3 client's runtime", e))?;
        Ok(S3Store { bucket: bucket.to_string(), prefix: prefix.trim_matches('/').to_string(), store: Arc::new(store), runtime })
    }

    fn path(&self, key: &str) -> Path {
        if self.prefix.is_empty() {
            Path::from(key)
        } else {
            Path::from(format!("{}/{key}", self.prefix))
        }
    }

    fn fail(&self, what: String, e: object_store::Error) -> SnapshotError {
        SnapshotError::store(&self.describe(), format!("{what}: {e}"))
    }
}

impl Store for S3Store {
    fn put(&self, key: &str, data: &[u8]) -> Result<()> {
        let payload = PutPayload::from(data.to_vec());
        self.runtime.block_on(self.store.put(&self.path(key), payload)).map_err(|e| self.fail(format!("cannot write {key}"), e))?;
        Ok(())
    }

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.runtime
            .block_on(async {
                match self.store.get(&self.path(key)).await {
                    Ok(r) => r.bytes().await.map(|b| Some(b.to_vec())),
                    Err(object_store::Error::NotFound { .. }) => Ok(None),
                    Err(e) => Err(e),
                }
            })
            .map_err(|e| self.fail(format!("cannot read {key}"), e))
    }

    fn list(&self, prefix: &str) -> Result<Vec<(String, SystemTime)>> {
        let p = self.path(prefix.trim_end_matches('/'));
        let strip = if self.prefix.is_empty() { String::new() } else { format!("{}/", self.prefix) };
        let metas: Vec<object_store::ObjectMeta> =
            self.runtime.block_on(self.store.list(Some(&p)).try_collect()).map_err(|e| self.fail(format!("cannot list {prefix}"), e))?;
        let mut out: Vec<(String, SystemTime)> = metas
            .into_iter()
            .map(|m| {
                let key = m.location.as_ref().strip_prefix(&strip).unwrap_or(m.location.as_ref()).to_string();
                (key, SystemTime::from(m.last_modified))
            })
            .collect();
        out.sort();
        Ok(out)
    }

    fn delete(&self, key: &str) -> Result<()> {
        match self.runtime.block_on(self.store.delete(&self.path(key))) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.fail(format!("cannot delete {key}"), e)),
        }
    }

    fn describe(&self) -> String {
        if self.prefix.is_empty() {
            format!("s3://{}", self.bucket)
        } else {
            format!("s3://{}/{}", self.bucket, self.prefix)
        }
    }
}
