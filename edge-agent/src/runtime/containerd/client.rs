//! The gRPC connection to containerd: one channel over its unix socket, every request tagged
//! with our namespace (and, while an image or a container is being put together, a lease that
//! keeps containerd's garbage collector off the half-made pieces).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use containerd_client::services::v1::leases_client::LeasesClient;
use containerd_client::services::v1::{CreateRequest, DeleteRequest};
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

/// How long a lease protects what it holds if the agent dies before deleting it: long enough
/// for a slow import, short enough that an abandoned half-import is collected the same day.
const LEASE_EXPIRY: Duration = Duration::from_secs(3600);

/// Why talking to containerd failed.
#[derive(Debug, thiserror::Error)]
pub enum ContainerdError {
    /// The socket cannot be reached.
    #[error("cannot connect to containerd at {}: {source}", socket.display())]
    Connect {
        /// The socket.
        socket: PathBuf,
        /// Why.
        source: tonic::transport::Error,
    },
    /// A call failed.
    #[error("containerd {what}: {}", status.message())]
    Call {
        /// What was being done.
        what: &'static str,
        /// containerd's answer.
        status: Status,
    },
}

impl ContainerdError {
    /// Whether containerd said the object does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, ContainerdError::Call { status, .. } if status.code() == Code::NotFound)
    }

    /// Whether containerd said the object exists already.
    pub fn is_already_exists(&self) -> bool {
        matches!(self, ContainerdError::Call { status, .. } if status.code() == Code::AlreadyExists)
    }
}

/// A call's error with what was being done.
pub(crate) fn call(what: &'static str) -> impl FnOnce(Status) -> ContainerdError {
    move |status| ContainerdError::Call { what, status }
}

/// A connection to one containerd, in one namespace.
#[derive(Clone, Debug)]
pub struct Connection {
    pub(crate) channel: Channel,
    namespace: String,
    socket: PathBuf,
}

impl Connection {
    /// Connects to the containerd listening on `socket`; requests go to `namespace`.
    ///
    /// # Errors
    /// [`ContainerdError::Connect`] when the socket does not answer.
    pub async fn connect(socket: &Path, namespace: &str) -> Result<Self, ContainerdError> {
        let channel = containerd_client::connect(socket).await.map_err(|source| {
            ContainerdError::Connect {
                socket: socket.to_owned(),
                source,
            }
        })?;
        Ok(Connection {
            channel,
            namespace: namespace.to_owned(),
            socket: socket.to_owned(),
        })
    }

    /// The socket this connection talks to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `message` as a request in our namespace, held by `lease` when given.
    pub(crate) fn request<T>(&self, message: T, lease: Option<&Lease>) -> Request<T> {
        let mut request = Request::new(message);
        let metadata = request.metadata_mut();
        // Namespaces and lease ids are ours: plain ASCII, validated when the runtime is made.
        if let Ok(value) = self.namespace.parse() {
            metadata.insert("containerd-namespace", value);
        }
        if let Some(lease) = lease
            && let Ok(value) = lease.id.parse()
        {
            metadata.insert("containerd-lease", value);
        }
        request
    }

    /// Creates a lease that expires by itself after [`LEASE_EXPIRY`].
    pub(crate) async fn lease(&self, purpose: &str) -> Result<Lease, ContainerdError> {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        let id = format!("warren-{purpose}-{}-{}", now.as_nanos(), fastrand::u32(..));
        let expire = now + LEASE_EXPIRY;
        let mut labels = std::collections::HashMap::new();
        labels.insert(
            "containerd.io/gc.expire".to_owned(),
            rfc3339(expire.as_secs()),
        );
        let request = self.request(CreateRequest { id, labels }, None);
        let response = LeasesClient::new(self.channel.clone())
            .create(request)
            .await
            .map_err(call("create lease"))?;
        let id = response
            .into_inner()
            .lease
            .map(|l| l.id)
            .unwrap_or_default();
        Ok(Lease { id })
    }

    /// Deletes `lease`: what it held is kept only if something else references it.
    pub(crate) async fn release(&self, lease: Lease) {
        let request = self.request(
            DeleteRequest {
                id: lease.id.clone(),
                sync: false,
            },
            None,
        );
        if let Err(status) = LeasesClient::new(self.channel.clone())
            .delete(request)
            .await
        {
            tracing::warn!(lease = lease.id, error = %status.message(), "cannot delete containerd lease; it expires by itself");
        }
    }
}

/// A containerd lease: resources made under it survive garbage collection until it goes.
#[derive(Debug)]
pub(crate) struct Lease {
    id: String,
}

/// `secs` since the epoch as an RFC 3339 UTC time, as containerd's `gc.expire` label wants.
fn rfc3339(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(days as i64);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day), Howard Hinnant's `civil_from_days`.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::rfc3339;

    #[test]
    fn rfc3339_times() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
    }
}
