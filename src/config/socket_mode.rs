//! The detection socket's permission bits as users write them: a number, or octal text.

use serde::{Deserialize, Serialize};

/// Unix permission bits of the detection socket. A TOML or JSON integer is the number it is
/// (`0o660`, or `432`); text is octal (`"0660"`, `"660"`, `"0o660"`), and so is `IV_SOCKET_MODE`
/// (read as text: `0660` in the environment means the octal mode, not six hundred and sixty).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketMode(pub u32);

impl SocketMode {
    /// Parses octal text.
    fn from_octal(text: &str) -> Result<Self, String> {
        let t = text.trim();
        let digits = t.strip_prefix("0o").unwrap_or(t);
        let v = u32::from_str_radix(digits, 8)
            .map_err(|_| format!("socket mode {text:?} is not octal"))?;
        Self::checked(u64::from(v), text)
    }

    /// Refuses bits beyond the permission bits (no setuid, setgid or sticky bit on a socket).
    fn checked(v: u64, shown: &str) -> Result<Self, String> {
        if v > 0o777 {
            return Err(format!(
                "socket mode {shown} has bits beyond 0777 (only permission bits are allowed)"
            ));
        }
        Ok(SocketMode(v as u32))
    }

    /// Whether every local user may connect (any "other" bit).
    pub fn grants_other(self) -> bool {
        self.0 & 0o007 != 0
    }
}

impl Serialize for SocketMode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{:04o}", self.0))
    }
}

impl<'de> Deserialize<'de> for SocketMode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            S(String),
            N(u64),
        }
        match Raw::deserialize(d)? {
            Raw::S(s) => Self::from_octal(&s),
            Raw::N(n) => Self::checked(n, &format!("{n:#o}")),
        }
        .map_err(serde::de::Error::custom)
    }
}
