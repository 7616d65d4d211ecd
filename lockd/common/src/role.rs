//! A replica's role as `status` reports it.

/// raft's roles, plus `Removed` for a replica that applied (or was told of) its own removal
/// and takes no part any more.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    Leader,
    Follower,
    Candidate,
    PreCandidate,
    Removed,
}

impl Role {
    pub const ALL: [Role; 5] = [Role::Leader, Role::Follower, Role::Candidate, Role::PreCandidate, Role::Removed];

    /// The name in `StatusResponse.role`.
    pub fn name(self) -> &'static str {
        match self {
            Role::Leader => "leader",
            Role::Follower => "follower",
            Role::Candidate => "candidate",
            Role::PreCandidate => "pre-candidate",
            Role::Removed => "removed",
        }
    }

    /// The role a `StatusResponse.role` names, if this library knows it.
    pub fn from_name(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.name() == s)
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
