//! `/secrets`: a secret's value is sealed at rest with the cluster key before it is
//! proposed; only metadata is ever answered.

use warren_api::rest::SecretCreate;

use super::respond::{ApiResult, ok, written};
use super::{Api, ApiError};
use crate::command::Op;

impl Api {
    pub(super) async fn create_secret(&self, request: SecretCreate) -> ApiResult {
        warren_api::validate::validate_dns_label("name", &request.name)
            .map_err(|e| ApiError::Invalid(e.to_string()))?;
        let value = data_encoding::BASE64
            .decode(request.value_base64.as_bytes())
            .map_err(|_| ApiError::Invalid("value_base64: not valid base64".into()))?;
        if value.len() as u64 > warren_api::secret::MAX_SECRET_BYTES {
            return Err(ApiError::Invalid(format!(
                "value: {} bytes is over the limit of {} bytes",
                value.len(),
                warren_api::secret::MAX_SECRET_BYTES
            )));
        }
        let generation = self.control.read_stale().await.key_generation();
        let sealed = self
            .control
            .cluster_keys()
            .and_then(|keys| crate::secrets::seal_at_rest(&keys, generation, &value))
            .ok_or_else(|| {
                ApiError::NoQuorum(format!(
                    "this control node does not hold cluster key generation {generation} yet; try again in a moment"
                ))
            })?;
        written(
            self.control
                .propose(Op::PutSecret {
                    name: request.name,
                    size_bytes: value.len() as u64,
                    sealed,
                })
                .await?,
        )
    }

    /// Secret metadata only; values never leave the control plane through the API.
    pub(super) async fn list_secrets(&self, stale: bool) -> ApiResult {
        let state = self.read(stale).await?;
        ok(&state
            .secrets
            .values()
            .map(|s| s.meta.clone())
            .collect::<Vec<_>>())
    }

    pub(super) async fn remove_secret(&self, name: &str) -> ApiResult {
        written(
            self.control
                .propose(Op::RemoveSecret(name.to_owned()))
                .await?,
        )
    }
}
