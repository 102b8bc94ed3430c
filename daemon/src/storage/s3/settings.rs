//! What the S3 driver needs to reach a bucket (`storage.s3`, registry:2's
//! keys); the configuration builds it.

/// The smallest multipart part S3 accepts (except the last).
pub const MIN_CHUNK_SIZE: usize = 5 * 1024 * 1024;

#[derive(Clone)]
pub struct S3Config {
    pub bucket: String,
    pub region: String,
    /// `regionendpoint` with a scheme (from `secure` when it had none).
    pub endpoint: Option<String>,
    pub root_directory: String,
    pub access_key: Option<String>,
    pub secret_key: Option<String>,
    pub chunk_size: usize,
    pub force_path_style: bool,
    pub skip_verify: bool,
}

impl std::fmt::Debug for S3Config {
    // Never prints credentials.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Config")
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .field("endpoint", &self.endpoint)
            .field("root_directory", &self.root_directory)
            .field("chunk_size", &self.chunk_size)
            .finish_non_exhaustive()
    }
}
