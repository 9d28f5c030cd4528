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
//! Fields are read straight from the event's bytes into borrowed strings: `objectRef` and
//! `user` are each walked once (`auditflow_core::raw`), skipping what the policy never
//! looks at (`user.extra`), and nothing is allocated for a string without escapes or for
//! up to four groups. Where the bytes cannot settle a field (a changed event, escapes in
//! a key, a value of another type) it is deserialised, with the same result.

use std::borrow::Cow;

use auditflow_core::event::RawLookup;
use auditflow_core::{raw, Event};
use serde::Deserialize;
use smallvec::SmallVec;

use crate::policy::{Groups, Request, Resource, User};

#[derive(Default, Deserialize)]
struct UserInfo<'a> {
    #[serde(borrow, default)]
    username: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    groups: Option<Groups<'a>>,
}

#[derive(Default, Deserialize)]
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
    let verb = Cow::Borrowed(event.get_str("verb").unwrap_or_default());
    let resource = object_ref(event).map(|object| {
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
    let user = if needs.user { user_of(event) } else { None };
    let path = if needs.path && resource.is_none() {
        let uri = event.get_str("requestURI").unwrap_or_default();
        Cow::Borrowed(uri.split('?').next().unwrap_or_default())
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

/// The authenticated user behind `event`; `None` for `user: {}` or no user at all.
pub fn user_of(event: &Event) -> Option<User<'_>> {
    user_info(event).and_then(|user| {
        let name = user.username.filter(|name| !name.is_empty())?;
        Some(User {
            name,
            groups: user.groups.unwrap_or_default(),
        })
    })
}

/// `objectRef`, walked in the event's bytes where they settle it, deserialised otherwise.
fn object_ref(event: &Event) -> Option<ObjectRef<'_>> {
    let RawLookup::Found(bytes) = event.raw_path(&["objectRef"]) else {
        return read::<Option<ObjectRef<'_>>>(event, "objectRef").flatten();
    };
    let walked = (|| {
        let mut object = ObjectRef::default();
        // One UTF-8 check for the whole object, not one per string read.
        for member in raw::members(std::str::from_utf8(bytes).ok()?)? {
            let (key, value) = member.ok()?;
            let slot = match key {
                "apiGroup" => &mut object.api_group,
                "resource" => &mut object.resource,
                "subresource" => &mut object.subresource,
                "namespace" => &mut object.namespace,
                "name" => &mut object.name,
                _ => continue,
            };
            *slot = optional_string(value)?;
        }
        Some(object)
    })();
    match walked {
        Some(object) => Some(object),
        // `null`, another shape, or bytes the walk cannot settle: as deserialised.
        None => read::<Option<ObjectRef<'_>>>(event, "objectRef").flatten(),
    }
}

/// `user`, walked in the event's bytes where they settle it, deserialised otherwise. The
/// walk skips `uid` and `extra` without looking inside them.
fn user_info(event: &Event) -> Option<UserInfo<'_>> {
    let RawLookup::Found(bytes) = event.raw_path(&["user"]) else {
        return read::<Option<UserInfo<'_>>>(event, "user").flatten();
    };
    let walked = (|| {
        let mut user = UserInfo::default();
        for member in raw::members(std::str::from_utf8(bytes).ok()?)? {
            let (key, value) = member.ok()?;
            match key {
                "username" => user.username = optional_string(value)?,
                "groups" if value.is_null() => user.groups = None,
                "groups" => {
                    let mut groups = SmallVec::new();
                    for element in raw::elements(value.raw())? {
                        groups.push(element.ok()?.string()?);
                    }
                    user.groups = Some(groups);
                }
                _ => {}
            }
        }
        Some(user)
    })();
    match walked {
        Some(user) => Some(user),
        None => read::<Option<UserInfo<'_>>>(event, "user").flatten(),
    }
}

/// A member that deserialises as `Option<String>`: `Some(None)` for `null`, `None` (the
/// caller deserialises instead) for anything but a string the bytes settle.
fn optional_string(value: raw::Value<'_>) -> Option<Option<Cow<'_, str>>> {
    match value.string() {
        Some(text) => Some(Some(text)),
        None if value.is_null() => Some(None),
        None => None,
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
