//! The name a cluster member goes by, as its peers know it.

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;

/// A cluster member's name (as in the cluster file). A type of its own so that a
/// peer cannot be confused with a collection, a key or a reason in an event.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PeerName(String);

impl PeerName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Deref for PeerName {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for PeerName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PeerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for PeerName {
    fn from(name: &str) -> PeerName {
        PeerName(name.to_owned())
    }
}

impl From<String> for PeerName {
    fn from(name: String) -> PeerName {
        PeerName(name)
    }
}

impl From<&String> for PeerName {
    fn from(name: &String) -> PeerName {
        PeerName(name.clone())
    }
}

impl PartialEq<str> for PeerName {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for PeerName {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}
