//! The request behind an event, read from the event the way kube-apiserver built the
//! event from the request.
//!
//! - `user` is the authenticated user (kube-apiserver evaluates the policy before
//!   impersonation, so `impersonatedUser` plays no part); `user: {}` (a failed
//!   authentication) is no user at all.
//! - `objectRef` present makes it a resource request; its `apiGroup` (absent for the core
//!   group), `resource`, `subresource`, `namespace` (absent when cluster-scoped) and `name`.
//! - A `create` without a subresource has no name when the policy is checked (the request
//!   is a POST to the collection); kube-apiserver fills `objectRef.name` in from the
//!   request body afterwards, so it is not used for `resourceNames`.
//! - `requestURI` without its query is the path for `nonResourceURLs`.
//!
//! Fields are read straight from the event's bytes into borrowed strings: nothing is
//! allocated for a string without escapes.

use std::borrow::Cow;

use auditflow_core::Event;
use serde::Deserialize;

use crate::policy::{Request, Resource, User};

#[derive(Deserialize)]
struct UserInfo<'a> {
    #[serde(borrow, default)]
    username: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    groups: Option<Vec<Cow<'a, str>>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ObjectRef<'a> {
    #[serde(borrow, default)]
    api_group: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    resource: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    subresource: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    namespace: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
}

/// Which parts of the event a policy needs: reading `user` and `requestURI` is skipped
/// when no rule looks at them.
#[derive(Debug, Clone, Copy)]
pub struct Needs {
    pub user: bool,
    pub path: bool,
}

impl Needs {
    pub const ALL: Needs = Needs {
        user: true,
        path: true,
    };
}

/// The request behind `event`.
pub fn request_of(event: &Event, needs: Needs) -> Request<'_> {
    let verb: Cow<'_, str> = read(event, "verb").unwrap_or_default();
    let resource = read::<Option<ObjectRef<'_>>>(event, "objectRef")
        .flatten()
        .map(|object| {
            let subresource = object.subresource.unwrap_or_default();
            let name = if verb == "create" && subresource.is_empty() {
                Cow::Borrowed("")
            } else {
                object.name.unwrap_or_default()
            };
            Resource {
                group: object.api_group.unwrap_or_default(),
                resource: object.resource.unwrap_or_default(),
                subresource,
                namespace: object.namespace.unwrap_or_default(),
                name,
            }
        });
    let user = if needs.user {
        read::<Option<UserInfo<'_>>>(event, "user")
            .flatten()
            .and_then(|user| {
                let name = user.username.filter(|name| !name.is_empty())?;
                Some(User {
                    name,
                    groups: user.groups.unwrap_or_default(),
                })
            })
    } else {
        None
    };
    let path = if needs.path && resource.is_none() {
        match read::<Cow<'_, str>>(event, "requestURI").unwrap_or_default() {
            Cow::Borrowed(uri) => Cow::Borrowed(uri.split('?').next().unwrap_or_default()),
            Cow::Owned(mut uri) => {
                if let Some(query) = uri.find('?') {
                    uri.truncate(query);
                }
                Cow::Owned(uri)
            }
        }
    } else {
        Cow::Borrowed("")
    };
    Request {
        user,
        verb,
        resource,
        path,
    }
}

/// A top-level field deserialised borrowing from the event: from its raw bytes when it is
/// unchanged, from its parsed value otherwise. Absent or of another shape: `None`.
fn read<'e, T: Deserialize<'e>>(event: &'e Event, key: &str) -> Option<T> {
    match event.raw_field(key) {
        Some(raw) => serde_json::from_slice(raw).ok(),
        None => T::deserialize(event.get(key)?).ok(),
    }
}
