//! Which organisation ids `tvaers init` accepts.
//!
//! Danish health organisations are known to each other by their SOR code
//! (Sundhedsvæsenets Organisationsregister: digits only) or by a GLN
//! location number (GS1, 13 digits with a check digit), so a site id is one
//! of those. Checking the GLN's check digit catches a mistyped digit before
//! it ends up in every peer's config.

/// What the accepted forms are, for errors and `--help`.
pub const ACCEPTED_FORMS: &str = "a SOR code (9 to 18 digits, but not 13) or a 13-digit GLN \
     location number with a valid GS1 check digit";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrgIdKind {
    Sor,
    Gln,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OrgIdError {
    #[error("organisation id must contain digits only; expected {ACCEPTED_FORMS}")]
    NotDigits,
    #[error("organisation id has {0} digits; expected {ACCEPTED_FORMS}")]
    WrongLength(usize),
    #[error(
        "organisation id has 13 digits but its GLN check digit is wrong (expected {expected}); \
         check for a mistyped digit. Accepted: {ACCEPTED_FORMS}"
    )]
    BadCheckDigit { expected: u32 },
}

/// Checks an organisation id and says which form it is.
pub fn check(id: &str) -> Result<OrgIdKind, OrgIdError> {
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
        return Err(OrgIdError::NotDigits);
    }
    match id.len() {
        13 => {
            let expected = gs1_check_digit(&id[..12]);
            let actual = u32::from(id.as_bytes()[12] - b'0');
            if actual == expected {
                Ok(OrgIdKind::Gln)
            } else {
                Err(OrgIdError::BadCheckDigit { expected })
            }
        }
        9..=18 => Ok(OrgIdKind::Sor),
        n => Err(OrgIdError::WrongLength(n)),
    }
}

/// The GS1 mod-10 check digit of `digits` (ASCII digits): weights 3 and 1
/// alternate from the rightmost digit, which gets 3.
pub fn gs1_check_digit(digits: &str) -> u32 {
    let sum: u32 = digits
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, b)| {
            let d = u32::from(b - b'0');
            if i % 2 == 0 { d * 3 } else { d }
        })
        .sum();
    (10 - sum % 10) % 10
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gln_with_a_valid_check_digit() {
        // GS1's own example GLN and a Danish one computed by hand.
        assert_eq!(check("4012345000009"), Ok(OrgIdKind::Gln));
        assert_eq!(gs1_check_digit("579000000000"), 5);
        assert_eq!(check("5790000000005"), Ok(OrgIdKind::Gln));
    }

    #[test]
    fn gln_with_a_wrong_check_digit() {
        assert_eq!(
            check("5790000000001"),
            Err(OrgIdError::BadCheckDigit { expected: 5 })
        );
        // Swapping two digits is caught too.
        assert!(check("4012345000090").is_err());
    }

    #[test]
    fn sor_codes() {
        assert_eq!(check("123456789"), Ok(OrgIdKind::Sor));
        assert_eq!(check("265161000016006"), Ok(OrgIdKind::Sor));
        assert_eq!(check("123456789012345678"), Ok(OrgIdKind::Sor));
    }

    #[test]
    fn other_forms_are_refused_and_the_error_names_the_forms() {
        for (id, err) in [
            ("12345678", OrgIdError::WrongLength(8)),
            ("1234567890123456789", OrgIdError::WrongLength(19)),
            ("kommune.vordingborg", OrgIdError::NotDigits),
            ("", OrgIdError::NotDigits),
            ("12345678a", OrgIdError::NotDigits),
            ("１２３４５６７８９", OrgIdError::NotDigits),
        ] {
            assert_eq!(check(id), Err(err.clone()), "{id}");
            let text = err.to_string();
            assert!(text.contains("SOR code") && text.contains("GLN"), "{text}");
        }
    }
}
