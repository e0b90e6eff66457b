//! Volumes: named, persistent storage on a node that replicas mount.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::validate::{ValidationError, validate_dns_label, validate_labels};

/// Where a volume's data lives.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VolumeDriver {
    /// A directory under the agent's data dir, on whichever node the replica runs. Data does
    /// not follow a replica that moves.
    #[default]
    Local,
}

/// A named volume.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Volume {
    /// A DNS label, unique in the cluster.
    pub name: String,
    /// Storage backend.
    #[serde(default)]
    pub driver: VolumeDriver,
    /// Size limit where the driver can enforce one; `None` means unlimited.
    #[serde(default)]
    pub size_limit_bytes: Option<u64>,
    /// Operator labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

impl Volume {
    /// Checks the name, size limit and labels.
    ///
    /// # Errors
    /// A [`ValidationError`] on `name`, `size_limit_bytes` or `labels.<key>`.
    pub fn validate(&self) -> Result<(), ValidationError> {
        validate_dns_label("name", &self.name)?;
        if self.size_limit_bytes == Some(0) {
            return Err(ValidationError::new(
                "size_limit_bytes",
                "must be greater than 0 (omit it for no limit)",
            ));
        }
        validate_labels("labels", &self.labels)
    }
}
