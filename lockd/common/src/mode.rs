//! DLM lock modes and their compatibility table (VMS / Linux DLM).
use serde::{Deserialize, Serialize};

/// Lock modes, weakest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Mode {
    NL,
    CR,
    CW,
    PR,
    PW,
    EX,
}

/// `COMPAT[a][b]`: a lock in mode `a` may be granted while another session holds `b`.
const COMPAT: [[bool; 6]; 6] = [
    //  NL    CR     CW     PR     PW     EX
    [true, true, true, true, true, true],      // NL
    [true, true, true, true, true, false],     // CR
    [true, true, true, false, false, false],   // CW
    [true, true, false, true, false, false],   // PR
    [true, true, false, false, false, false],  // PW
    [true, false, false, false, false, false], // EX
];

impl Mode {
    pub const ALL: [Mode; 6] = [Mode::NL, Mode::CR, Mode::CW, Mode::PR, Mode::PW, Mode::EX];

    pub fn compatible(self, other: Mode) -> bool {
        COMPAT[self as usize][other as usize]
    }

    /// Whether holding `self` already gives everything a request for `want` would: the modes form
    /// the lattice NL < CR < {CW, PR} < PW < EX, where CW and PR are not comparable.
    pub fn covers(self, want: Mode) -> bool {
        use Mode::*;
        match self {
            EX => true,
            PW => want != EX,
            PR => matches!(want, PR | CR | NL),
            CW => matches!(want, CW | CR | NL),
            CR => matches!(want, CR | NL),
            NL => want == NL,
        }
    }

    /// Whether a holder may change what the lock covers (CW, PW, EX); under NL, CR and PR it
    /// only reads, so a holder that dies leaves nothing half written there.
    pub fn may_change(self) -> bool {
        matches!(self, Mode::CW | Mode::PW | Mode::EX)
    }

    /// The lock value block may be written by a holder of PW or EX (as in the Linux DLM).
    pub fn may_write_lvb(self) -> bool {
        matches!(self, Mode::PW | Mode::EX)
    }

    pub fn from_wire(v: i32) -> Option<Mode> {
        Mode::ALL.get(usize::try_from(v).ok()?).copied()
    }

    pub fn to_wire(self) -> i32 {
        self as i32
    }

    pub fn name(self) -> &'static str {
        match self {
            Mode::NL => "NL",
            Mode::CR => "CR",
            Mode::CW => "CW",
            Mode::PR => "PR",
            Mode::PW => "PW",
            Mode::EX => "EX",
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Mode::ALL
            .into_iter()
            .find(|m| m.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| format!("unknown lock mode {s:?} (NL, CR, CW, PR, PW, EX)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matrix_is_symmetric_and_matches_dlm() {
        for a in Mode::ALL {
            for b in Mode::ALL {
                assert_eq!(a.compatible(b), b.compatible(a), "{a} vs {b}");
            }
        }
        use Mode::*;
        assert!(PR.compatible(PR));
        assert!(!PR.compatible(CW));
        assert!(CW.compatible(CW));
        assert!(!PW.compatible(PW));
        assert!(PW.compatible(CR));
        assert!(!EX.compatible(CR));
        assert!(EX.compatible(NL));
    }

    #[test]
    fn covering_mode_is_never_less_restrictive() {
        // If `a` covers `b`, every mode compatible with `a` must be compatible with `b`:
        // otherwise a cached `a` could hide a conflict that a fresh `b` would have.
        for a in Mode::ALL {
            for b in Mode::ALL {
                if a.covers(b) {
                    for c in Mode::ALL {
                        if a.compatible(c) {
                            assert!(b.compatible(c), "{a} covers {b} but {c} breaks it");
                        }
                    }
                }
            }
        }
        assert!(!Mode::PR.covers(Mode::CW));
        assert!(!Mode::CW.covers(Mode::PR));
    }

    #[test]
    fn wire_round_trip() {
        for m in Mode::ALL {
            assert_eq!(Mode::from_wire(m.to_wire()), Some(m));
            assert_eq!(m.name().parse::<Mode>(), Ok(m));
        }
        assert_eq!(Mode::from_wire(6), None);
        assert_eq!(Mode::from_wire(-1), None);
    }
}
