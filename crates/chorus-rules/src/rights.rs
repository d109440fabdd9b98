//! What an access token may do: rights per collection.
//!
//! A token's rights are a comma-separated list of grants: `admin`, or `read:C` /
//! `write:C` where `C` is a collection name or `*` for every collection, e.g.
//! `read:*,write:orders`. `admin` may do everything: read and write every collection
//! and change the cluster (collection settings, conflict resolution, reload, tokens).
//! `write` does not include `read`: grant both to a client that reads before it writes.

use crate::collections::check_collection_name;
use std::fmt;

/// One kind of access.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Right {
    Read,
    Write,
    Admin,
}

impl Right {
    pub fn name(self) -> &'static str {
        match self {
            Right::Read => "read",
            Right::Write => "write",
            Right::Admin => "admin",
        }
    }
}

/// The grants of one token, in the order written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rights {
    grants: Vec<Grant>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Grant {
    Admin,
    /// `read` or `write` on one collection, or on all (`None`).
    On(Right, Option<String>),
}

impl Rights {
    /// Parses `admin`, `read:C`, `write:C` (`C` a collection or `*`), comma-separated.
    pub fn parse(text: &str) -> Result<Rights, String> {
        let usage = "rights are a comma-separated list of admin, read:COLLECTION, \
                     write:COLLECTION (COLLECTION may be *)";
        let mut grants = Vec::new();
        for item in text.split(',').map(str::trim) {
            let grant = match item.split_once(':') {
                None if item == "admin" => Grant::Admin,
                Some((right, collection)) => {
                    let right = match right {
                        "read" => Right::Read,
                        "write" => Right::Write,
                        _ => return Err(format!("{item:?}: {usage}")),
                    };
                    let collection = match collection {
                        "*" => None,
                        name => {
                            check_collection_name(name).map_err(|e| format!("{item:?}: {e}"))?;
                            Some(name.to_owned())
                        }
                    };
                    Grant::On(right, collection)
                }
                None => return Err(format!("{item:?}: {usage}")),
            };
            grants.push(grant);
        }
        Ok(Rights { grants })
    }

    /// Whether these rights allow `right` on `collection` (`None`: every collection,
    /// or none in particular, as for cluster-wide reads such as the change feed).
    pub fn allow(&self, right: Right, collection: Option<&str>) -> bool {
        self.grants.iter().any(|grant| match grant {
            Grant::Admin => true,
            Grant::On(granted, on) => {
                *granted == right
                    && right != Right::Admin
                    && (on.is_none() || on.as_deref() == collection)
            }
        })
    }
}

impl fmt::Display for Rights {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, grant) in self.grants.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            match grant {
                Grant::Admin => f.write_str("admin")?,
                Grant::On(right, on) => {
                    write!(f, "{}:{}", right.name(), on.as_deref().unwrap_or("*"))?
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_allow_what_they_name_and_nothing_else() {
        let r = Rights::parse("read:*,write:orders").unwrap();
        assert!(r.allow(Right::Read, Some("users")));
        assert!(r.allow(Right::Read, None));
        assert!(r.allow(Right::Write, Some("orders")));
        assert!(!r.allow(Right::Write, Some("users")));
        assert!(!r.allow(Right::Write, None), "not every collection");
        assert!(!r.allow(Right::Admin, None));
        let admin = Rights::parse("admin").unwrap();
        assert!(admin.allow(Right::Admin, None) && admin.allow(Right::Write, Some("x")));
        assert_eq!(r.to_string(), "read:*,write:orders");
        assert_eq!(Rights::parse(&r.to_string()).unwrap(), r);
        for bad in [
            "",
            "root",
            "read",
            "read:",
            "write:_tokens",
            "delete:x",
            "admin:x",
        ] {
            assert!(Rights::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
