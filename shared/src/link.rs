//! Invite link codec: v2 (`atmosphere://join?…&endpoints={json}`), v1 (`…&endpoint=ws://…`)
//! and the web form (`http(s)://HOST/join#…`).
//! STUB: the public API below is fixed; the implementation is being written.

use crate::path::PathKind;
use serde::{Deserialize, Serialize};

/// The ways to reach a host. Missing paths are `None` (serialised as `null`, never omitted).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoints {
    #[serde(default)]
    pub local: Option<String>,
    #[serde(default)]
    pub public: Option<String>,
    #[serde(default)]
    pub relay: Option<String>,
}

impl Endpoints {
    /// The endpoint for one path.
    pub fn get(&self, path: PathKind) -> Option<&str> {
        match path {
            PathKind::Local => self.local.as_deref(),
            PathKind::Public => self.public.as_deref(),
            PathKind::Relay => self.relay.as_deref(),
        }
    }

    /// Present endpoints in preference order (local → public → relay).
    pub fn iter(&self) -> impl Iterator<Item = (PathKind, &str)> + '_ {
        PathKind::ALL.into_iter().filter_map(move |p| self.get(p).map(|u| (p, u)))
    }

    /// The seed's legacy single `endpoint`: the first of public, local, relay that exists.
    pub fn legacy(&self) -> Option<&str> {
        self.public.as_deref().or(self.local.as_deref()).or(self.relay.as_deref())
    }
}

/// A decoded invite link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invite {
    /// 1 for the legacy single-endpoint form, 2 for the multi-endpoint form.
    pub version: u8,
    pub token: String,
    pub mesh_name: String,
    pub endpoints: Endpoints,
}

/// Why a link could not be decoded. Each variant names what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    #[error("not an invite link: {0}")]
    NotALink(String),
}

impl Invite {
    /// Parses any supported link form. Never panics.
    pub fn parse(_link: &str) -> Result<Invite, LinkError> {
        todo!()
    }

    /// `atmosphere://join?token=…&mesh=…&endpoints=…` (mesh and endpoints percent-encoded).
    pub fn to_v2_link(&self) -> String {
        todo!()
    }

    /// `atmosphere://join?token=…&mesh=…&endpoint=…` (legacy endpoint).
    pub fn to_v1_link(&self) -> String {
        todo!()
    }

    /// `BASE/join#token=…&mesh=…&endpoints=…` where BASE is e.g. `http://192.168.1.2:11451`.
    pub fn to_web_link(&self, _base: &str) -> String {
        todo!()
    }
}
