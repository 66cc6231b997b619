//! The caller's credentials sent with every call: a ServiceAccount token from a file.

use std::{
    path::PathBuf,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant, SystemTime},
};

use tonic::{Request, Status, metadata::MetadataValue, service::Interceptor};

/// How long a read token is used before the file is looked at again, even if its
/// modification time says nothing changed (a bind-mounted file may keep its mtime).
const REREAD_AFTER: Duration = Duration::from_secs(60);

/// Adds `authorization: Bearer <token from file>` to each call, when a file is set.
#[derive(Clone)]
pub(crate) struct CallCredentials {
    file: Option<Arc<TokenFile>>,
}

struct TokenFile {
    path: PathBuf,
    // Held only to look at or replace the cached value; never across an await.
    cached: Mutex<Option<Cached>>,
}

struct Cached {
    read_at: Instant,
    modified: Option<SystemTime>,
    header: MetadataValue<tonic::metadata::Ascii>,
}

impl CallCredentials {
    pub(crate) fn new(path: Option<PathBuf>) -> Self {
        Self {
            file: path.map(|path| {
                Arc::new(TokenFile {
                    path,
                    cached: Mutex::new(None),
                })
            }),
        }
    }
}

impl Interceptor for CallCredentials {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(file) = &self.file {
            let header = file.header()?;
            request.metadata_mut().insert("authorization", header);
        }
        Ok(request)
    }
}

impl TokenFile {
    fn header(&self) -> Result<MetadataValue<tonic::metadata::Ascii>, Status> {
        let modified = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok();
        let mut cached = self.cached.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(c) = cached.as_ref()
            && c.modified == modified
            && c.read_at.elapsed() < REREAD_AFTER
        {
            return Ok(c.header.clone());
        }
        let token = std::fs::read_to_string(&self.path).map_err(|e| {
            Status::unauthenticated(format!(
                "cannot read the token file {}: {}",
                self.path.display(),
                e.kind()
            ))
        })?;
        let mut header = MetadataValue::try_from(format!("Bearer {}", token.trim()))
            .map_err(|_| Status::unauthenticated("the token file holds no valid token"))?;
        header.set_sensitive(true);
        *cached = Some(Cached {
            read_at: Instant::now(),
            modified,
            header: header.clone(),
        });
        Ok(header)
    }
}
