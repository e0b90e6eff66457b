//! Registry credentials: the `user:password` a service's registry-auth secret holds, checked
//! before a pull uses it, and whether a registry's refusal means credentials are missing or
//! wrong.

use std::fmt;

use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;

use crate::runtime::RegistryAuthSecret;

/// Longest user name or password we pass on; a secret holding more is not credentials.
const MAX_FIELD_BYTES: usize = 4096;

/// HTTP Basic credentials for one registry. `Debug` shows the user only.
#[derive(Clone, PartialEq, Eq)]
pub struct RegistryCredentials {
    /// The secret they came from, to name it in errors.
    secret: String,
    user: String,
    password: String,
}

impl fmt::Debug for RegistryCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryCredentials")
            .field("secret", &self.secret)
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

impl RegistryCredentials {
    /// Reads `user:password` (one line; a trailing newline is ignored, the password may hold
    /// `:`) from the secret.
    ///
    /// # Errors
    /// A one-line reason naming the secret, never its content.
    pub fn parse(secret: &RegistryAuthSecret) -> Result<Self, String> {
        let name = &secret.secret;
        let bad = |why: &str| format!("registry credentials in secret {name}: {why}");
        let text = std::str::from_utf8(&secret.plaintext).map_err(|_| bad("not UTF-8"))?;
        let text = text.strip_suffix('\n').unwrap_or(text);
        let text = text.strip_suffix('\r').unwrap_or(text);
        let Some((user, password)) = text.split_once(':') else {
            return Err(bad("expected user:password"));
        };
        if user.is_empty() || password.is_empty() {
            return Err(bad("expected user:password, both non-empty"));
        }
        if text.contains(['\n', '\r'])
            || user.len() > MAX_FIELD_BYTES
            || password.len() > MAX_FIELD_BYTES
        {
            return Err(bad("expected one line of user:password"));
        }
        Ok(RegistryCredentials {
            secret: name.clone(),
            user: user.to_owned(),
            password: password.to_owned(),
        })
    }

    /// The secret these came from.
    pub fn secret(&self) -> &str {
        &self.secret
    }

    pub(crate) fn to_oci(&self) -> RegistryAuth {
        RegistryAuth::Basic(self.user.clone(), self.password.clone())
    }
}

/// Whether the registry refused for want of (valid) credentials: HTTP 401 or 403, or an OCI
/// error code `UNAUTHORIZED` or `DENIED`.
pub(crate) fn is_refusal(error: &OciDistributionError) -> bool {
    match error {
        OciDistributionError::UnauthorizedError { .. }
        | OciDistributionError::AuthenticationFailure(_) => true,
        OciDistributionError::ServerError { code, .. } => matches!(code, 401 | 403),
        OciDistributionError::RegistryError { envelope, .. } => envelope
            .errors
            .iter()
            .any(|e| matches!(e.code, OciErrorCode::Unauthorized | OciErrorCode::Denied)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(plaintext: &[u8], expected: Result<(&str, &str), &str>) {
        let secret = RegistryAuthSecret {
            secret: "regcred".to_owned(),
            plaintext: plaintext.to_vec(),
        };
        let got = RegistryCredentials::parse(&secret);
        let got = got
            .as_ref()
            .map(|c| (c.user.as_str(), c.password.as_str()))
            .map_err(String::as_str);
        assert_eq!(got, expected, "{plaintext:?}");
    }

    #[test]
    fn parses_user_colon_password() {
        check(b"puller:pa55", Ok(("puller", "pa55")));
        check(b"puller:pa55\n", Ok(("puller", "pa55")));
        check(b"puller:pa:55\r\n", Ok(("puller", "pa:55")));
        check(
            b"puller",
            Err("registry credentials in secret regcred: expected user:password"),
        );
        check(
            b":pa55",
            Err("registry credentials in secret regcred: expected user:password, both non-empty"),
        );
        check(
            b"a:b\nc:d",
            Err("registry credentials in secret regcred: expected one line of user:password"),
        );
        check(
            b"\xff:x",
            Err("registry credentials in secret regcred: not UTF-8"),
        );
    }

    #[test]
    fn debug_hides_the_password() {
        let secret = RegistryAuthSecret {
            secret: "regcred".to_owned(),
            plaintext: b"puller:pa55".to_vec(),
        };
        let credentials = RegistryCredentials::parse(&secret).expect("parse");
        let debug = format!("{credentials:?}");
        assert!(
            debug.contains("puller") && !debug.contains("pa55"),
            "{debug}"
        );
    }
}
