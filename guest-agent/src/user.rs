//! Who the workload runs as: `user[:group]` resolved against the root's /etc/passwd and
//! /etc/group, the way Docker resolves `--user` and an image's `User`.

use std::fmt;

/// The identity the workload runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary groups: every group of /etc/group that lists the user by name.
    pub groups: Vec<u32>,
    /// Home directory from /etc/passwd, `/` when the user has no entry.
    pub home: String,
}

/// Why a `user[:group]` could not be resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserError {
    /// A user name that /etc/passwd does not hold.
    NoSuchUser(String),
    /// A group name that /etc/group does not hold.
    NoSuchGroup(String),
}

impl fmt::Display for UserError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoSuchUser(name) => {
                write!(f, "unable to find user {name}: no entry in /etc/passwd")
            }
            Self::NoSuchGroup(name) => {
                write!(f, "unable to find group {name}: no entry in /etc/group")
            }
        }
    }
}

struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
    home: &'a str,
}

struct GroupEntry<'a> {
    name: &'a str,
    gid: u32,
    members: Vec<&'a str>,
}

fn passwd_entries(passwd: &str) -> impl Iterator<Item = PasswdEntry<'_>> {
    passwd.lines().filter_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        let [name, _, uid, gid, _, home, ..] = fields.as_slice() else {
            return None;
        };
        Some(PasswdEntry {
            name,
            uid: uid.parse().ok()?,
            gid: gid.parse().ok()?,
            home,
        })
    })
}

fn group_entries(group: &str) -> impl Iterator<Item = GroupEntry<'_>> {
    group.lines().filter_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        let [name, _, gid, members, ..] = fields.as_slice() else {
            return None;
        };
        Some(GroupEntry {
            name,
            gid: gid.parse().ok()?,
            members: members.split(',').filter(|m| !m.is_empty()).collect(),
        })
    })
}

/// Resolves `spec` (`user`, `uid`, `user:group`, `uid:gid`, empty for root) against the text of
/// /etc/passwd and /etc/group (either may be empty when the image lacks the file).
pub fn resolve(spec: &str, passwd: &str, group: &str) -> Result<Credentials, UserError> {
    let (user, group_spec) = match spec.split_once(':') {
        Some((user, group)) => (user, Some(group)),
        None => (spec, None),
    };
    let user = if user.is_empty() { "0" } else { user };

    let entry = match user.parse::<u32>() {
        Ok(uid) => passwd_entries(passwd).find(|e| e.uid == uid),
        Err(_) => Some(
            passwd_entries(passwd)
                .find(|e| e.name == user)
                .ok_or_else(|| UserError::NoSuchUser(user.to_string()))?,
        ),
    };
    let uid = user
        .parse()
        .unwrap_or_else(|_| entry.as_ref().map_or(0, |e| e.uid));
    let (mut gid, home, name) = match &entry {
        Some(e) => (e.gid, e.home.to_string(), Some(e.name)),
        None => (0, "/".to_string(), None),
    };

    if let Some(group_spec) = group_spec.filter(|g| !g.is_empty()) {
        gid = match group_spec.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => group_entries(group)
                .find(|g| g.name == group_spec)
                .map(|g| g.gid)
                .ok_or_else(|| UserError::NoSuchGroup(group_spec.to_string()))?,
        };
    }

    let mut groups = vec![gid];
    if let Some(name) = name {
        for entry in group_entries(group).filter(|g| g.members.contains(&name)) {
            if !groups.contains(&entry.gid) {
                groups.push(entry.gid);
            }
        }
    }
    Ok(Credentials {
        uid,
        gid,
        groups,
        home,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
                          app:x:1000:1000:App:/home/app:/bin/sh\n\
                          broken line\n";
    const GROUP: &str = "root:x:0:\napp:x:1000:\nstaff:x:50:app,other\nwheel:x:10:root\n";

    #[test]
    fn empty_means_root() {
        let creds = resolve("", PASSWD, GROUP).unwrap();
        assert_eq!((creds.uid, creds.gid, creds.home.as_str()), (0, 0, "/root"));
        assert_eq!(creds.groups, vec![0, 10]);
    }

    #[test]
    fn names_resolve_with_their_groups() {
        let creds = resolve("app", PASSWD, GROUP).unwrap();
        assert_eq!(creds.uid, 1000);
        assert_eq!(creds.gid, 1000);
        assert_eq!(creds.groups, vec![1000, 50]);
        assert_eq!(creds.home, "/home/app");
    }

    #[test]
    fn a_group_overrides_the_primary_group() {
        let creds = resolve("app:staff", PASSWD, GROUP).unwrap();
        assert_eq!((creds.uid, creds.gid), (1000, 50));
        let creds = resolve("app:7", PASSWD, GROUP).unwrap();
        assert_eq!(creds.gid, 7);
    }

    #[test]
    fn unknown_numbers_are_taken_as_they_are() {
        let creds = resolve("4242:4343", "", "").unwrap();
        assert_eq!(
            (creds.uid, creds.gid, creds.home.as_str()),
            (4242, 4343, "/")
        );
        let creds = resolve("1000", PASSWD, GROUP).unwrap();
        assert_eq!((creds.gid, creds.home.as_str()), (1000, "/home/app"));
    }

    #[test]
    fn unknown_names_are_errors() {
        assert_eq!(
            resolve("nobody", PASSWD, GROUP),
            Err(UserError::NoSuchUser("nobody".into()))
        );
        assert_eq!(
            resolve("app:nogroup", PASSWD, GROUP),
            Err(UserError::NoSuchGroup("nogroup".into()))
        );
    }
}
