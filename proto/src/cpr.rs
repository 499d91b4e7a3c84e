//! CPR numbers (Danish civil registration numbers) as a type that never
//! prints its digits.
//!
//! A CPR number identifies the citizen a notice is about. Together with
//! anything about mental health it is special-category personal data
//! (GDPR art. 9), so it must never reach a log line, a metric, an error
//! message or a panic message. [`Cpr`] enforces that in the type system:
//! its [`Debug`](std::fmt::Debug) and [`Display`](std::fmt::Display) print
//! only asterisks, [`CprError`] never carries the input, and the digits are
//! only available through the explicit [`Cpr::digits`] call meant for storage
//! and transmission.
//!
//! # Format
//!
//! `DDMMYYSSSS` or `DDMMYY-SSSS`: the date of birth (day, month, two-digit
//! year) followed by a four-digit sequence number. No spaces or other
//! characters are accepted. The first six digits must be a real calendar
//! date; the century follows from the seventh digit (the first of the
//! sequence number), as the CPR office defines it:
//!
//! | 7th digit | YY 00–36 | YY 37–57 | YY 58–99 |
//! |-----------|----------|----------|----------|
//! | 0–3       | 1900s    | 1900s    | 1900s    |
//! | 4, 9      | 2000s    | 1900s    | 1900s    |
//! | 5–8       | 2000s    | 2000s    | 1800s    |
//!
//! # No modulus-11 check
//!
//! Older CPR numbers satisfy a weighted modulus-11 check, but since 2007 the
//! CPR office has issued numbers that do not (some dates ran out of numbers
//! that pass it). Rejecting numbers that fail the check would therefore
//! reject real citizens, so this module does not perform it.

use std::fmt;

/// A syntactically valid CPR number.
///
/// Holds the ten normalized digits (without the hyphen). `Debug` prints
/// `Cpr(**********)` and `Display` prints `**********`; use
/// [`Cpr::digits`] only where the number must be stored or sent.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Cpr {
    /// Exactly ten ASCII digits, checked by [`Cpr::parse`].
    digits: String,
}

/// Why a string is not a CPR number. Never contains the input or any part
/// of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum CprError {
    /// The input has `len` characters; a CPR number has 10 (or 11 with the
    /// hyphen).
    #[error("CPR number has {len} characters; expected 10 digits (DDMMYYSSSS or DDMMYY-SSSS)")]
    WrongLength {
        /// Number of characters (not bytes) in the input.
        len: usize,
    },
    /// The input has the right length but contains something other than
    /// ASCII digits (apart from a hyphen after the sixth digit).
    #[error("CPR number must consist of digits, optionally with a hyphen after the sixth")]
    NotDigits,
    /// The first six digits, with the century from the seventh, are not a
    /// real calendar date.
    #[error("CPR number does not begin with a valid date of birth")]
    InvalidDate,
}

impl Cpr {
    /// Parses `DDMMYYSSSS` or `DDMMYY-SSSS`.
    ///
    /// # Errors
    ///
    /// [`CprError::WrongLength`] unless the input has 10 characters (11 with
    /// the hyphen), [`CprError::NotDigits`] for any character other than
    /// ASCII digits and that one hyphen, [`CprError::InvalidDate`] when the
    /// date of birth does not exist.
    pub fn parse(input: &str) -> Result<Self, CprError> {
        let len = input.chars().count();
        let digits: String = match len {
            10 => input.to_owned(),
            11 if input.as_bytes().get(6) == Some(&b'-') => {
                // Byte 6 is an ASCII hyphen, so slicing around it is on char
                // boundaries.
                let (head, tail) = input.split_at(6);
                let mut s = String::with_capacity(10);
                s.push_str(head);
                s.push_str(&tail[1..]);
                s
            }
            11 => return Err(CprError::NotDigits),
            _ => return Err(CprError::WrongLength { len }),
        };
        if digits.len() != 10 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(CprError::NotDigits);
        }
        let (year, month, day) = birth_date_of(digits.as_bytes());
        if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
            return Err(CprError::InvalidDate);
        }
        Ok(Self { digits })
    }

    /// The ten digits without a hyphen (`DDMMYYSSSS`), for storage and
    /// transmission only. Never log or display the result.
    pub fn digits(&self) -> &str {
        &self.digits
    }

    /// The date of birth as `(year, month, day)`, with the century derived
    /// from the seventh digit.
    pub fn birth_date(&self) -> (i32, u32, u32) {
        birth_date_of(self.digits.as_bytes())
    }
}

impl fmt::Debug for Cpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Cpr(**********)")
    }
}

impl fmt::Display for Cpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("**********")
    }
}

impl std::str::FromStr for Cpr {
    type Err = CprError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl TryFrom<&str> for Cpr {
    type Error = CprError;

    fn try_from(s: &str) -> Result<Self, Self::Error> {
        Self::parse(s)
    }
}

/// `(year, month, day)` from ten ASCII digits; month and day are not
/// range-checked here.
fn birth_date_of(d: &[u8]) -> (i32, u32, u32) {
    let n = |i: usize| d.get(i).copied().unwrap_or(b'0').wrapping_sub(b'0');
    let two = |i: usize| n(i) * 10 + n(i + 1);
    let day = u32::from(two(0));
    let month = u32::from(two(2));
    let yy = two(4);
    let century: i32 = match n(6) {
        0..=3 => 1900,
        4 | 9 if yy <= 36 => 2000,
        4 | 9 => 1900,
        _ if yy <= 57 => 2000,
        _ => 1800,
    };
    (century + i32::from(yy), month, day)
}

/// Whether `year` is a leap year in the Gregorian calendar.
pub(crate) fn is_leap_year(year: i32) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

/// Number of days in `month` (1–12) of `year`; 0 for an invalid month.
pub(crate) fn days_in_month(year: i32, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap_year(year) => 29,
        2 => 28,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> Cpr {
        match Cpr::parse(s) {
            Ok(c) => c,
            Err(e) => panic!("expected a valid CPR number, got {e}"),
        }
    }

    fn err(s: &str) -> CprError {
        match Cpr::parse(s) {
            Ok(_) => panic!("expected an invalid CPR number"),
            Err(e) => e,
        }
    }

    #[test]
    fn accepts_both_forms_and_normalizes() {
        let a = ok("0101004000");
        let b = ok("010100-4000");
        assert_eq!(a, b);
        assert_eq!(a.digits(), "0101004000");
        assert_eq!(b.digits(), "0101004000");
    }

    #[test]
    fn century_rules() {
        // 7th digit 0-3: always 1900s.
        assert_eq!(ok("010100-0000").birth_date(), (1900, 1, 1));
        assert_eq!(ok("010136-3999").birth_date(), (1936, 1, 1));
        assert_eq!(ok("311299-2000").birth_date(), (1999, 12, 31));
        // 4 or 9: 2000s up to YY 36, then 1900s.
        assert_eq!(ok("010100-4000").birth_date(), (2000, 1, 1));
        assert_eq!(ok("010136-4000").birth_date(), (2036, 1, 1));
        assert_eq!(ok("010137-4000").birth_date(), (1937, 1, 1));
        assert_eq!(ok("010160-4000").birth_date(), (1960, 1, 1));
        assert_eq!(ok("010136-9000").birth_date(), (2036, 1, 1));
        assert_eq!(ok("010137-9000").birth_date(), (1937, 1, 1));
        // 5-8: 2000s up to YY 57, then 1800s.
        assert_eq!(ok("010157-5000").birth_date(), (2057, 1, 1));
        assert_eq!(ok("010158-5000").birth_date(), (1858, 1, 1));
        assert_eq!(ok("010160-5000").birth_date(), (1860, 1, 1));
        assert_eq!(ok("010110-8000").birth_date(), (2010, 1, 1));
        assert_eq!(ok("010199-8000").birth_date(), (1899, 1, 1));
    }

    #[test]
    fn leap_years() {
        // 2000 is a leap year (divisible by 400).
        assert_eq!(ok("290200-4000").birth_date(), (2000, 2, 29));
        // 1900 is not (divisible by 100 but not 400).
        assert_eq!(err("290200-1000"), CprError::InvalidDate);
        // 1901 is not.
        assert_eq!(err("290201-1000"), CprError::InvalidDate);
        // 1904 is.
        assert_eq!(ok("290204-1000").birth_date(), (1904, 2, 29));
        // 1860 is, 1858 is not.
        assert_eq!(ok("290260-5000").birth_date(), (1860, 2, 29));
        assert_eq!(err("290258-5000"), CprError::InvalidDate);
        assert_eq!(err("300200-4000"), CprError::InvalidDate);
    }

    #[test]
    fn invalid_dates() {
        for s in [
            "310400-1234", // April has 30 days
            "310600-1234",
            "310900-1234",
            "311100-1234",
            "000100-1234", // day 0
            "010000-1234", // month 0
            "011300-1234", // month 13
            "320100-1234", // day 32
            "999999-9999",
        ] {
            assert_eq!(err(s), CprError::InvalidDate, "case {}", s.len());
        }
        assert_eq!(ok("300400-1234").birth_date(), (1900, 4, 30));
        assert_eq!(ok("311200-1234").birth_date(), (1900, 12, 31));
    }

    #[test]
    fn wrong_length() {
        assert_eq!(err(""), CprError::WrongLength { len: 0 });
        assert_eq!(err("010100400"), CprError::WrongLength { len: 9 });
        assert_eq!(err("010100-400"), CprError::NotDigits);
        assert_eq!(err("010100-40000"), CprError::WrongLength { len: 12 });
        assert_eq!(err("01010040000"), CprError::NotDigits);
        assert_eq!(err("010100--4000"), CprError::WrongLength { len: 12 });
    }

    #[test]
    fn not_digits() {
        for s in [
            "010100 4000", // space instead of hyphen
            " 0101004000", // leading space
            "0101004000 ", // trailing space
            "01010-04000", // hyphen in the wrong place
            "0101OO4000",  // letters
            "01010040a0",
            "+101004000",
            "010100/4000",
            "０１０１００４０００", // full-width digits: 10 chars, not ASCII
            "010100−4000",          // U+2212 minus sign
        ] {
            let e = err(s);
            assert_eq!(
                e,
                CprError::NotDigits,
                "case of length {}",
                s.chars().count()
            );
        }
        // Length is counted in characters, not bytes.
        assert_eq!(err("ææææææææææææ"), CprError::WrongLength { len: 12 });
    }

    #[test]
    fn debug_display_and_errors_never_show_digits() {
        let input = "240385-1234";
        let cpr = ok(input);
        let shown = [
            format!("{cpr}"),
            format!("{cpr:?}"),
            format!("{cpr:#?}"),
            format!("{:?}", Some(cpr.clone())),
        ];
        for s in &shown {
            assert!(!s.contains(input));
            assert!(!s.contains(cpr.digits()));
            assert!(!s.contains("240385"));
            assert!(!s.contains("1234"));
            assert!(!s.chars().any(|c| c.is_ascii_digit()), "shown: {s}");
        }
        assert_eq!(format!("{cpr}"), "**********");
        assert_eq!(format!("{cpr:?}"), "Cpr(**********)");

        for bad in [
            "310485-1234",
            "310485-12345",
            "3104851234x",
            "31048512a4",
            "310485 1234",
        ] {
            let e = err(bad);
            for s in [format!("{e}"), format!("{e:?}"), format!("{e:#?}")] {
                assert!(!s.contains(bad), "error shows input: {s}");
                assert!(!s.contains("310485"), "error shows date: {s}");
                assert!(!s.contains("1234"), "error shows sequence: {s}");
            }
        }
    }

    #[test]
    fn equality_and_hash_use_normalized_digits() {
        use std::collections::HashSet;
        let mut set = HashSet::new();
        set.insert(ok("0101004000"));
        set.insert(ok("010100-4000"));
        set.insert(ok("0101004001"));
        assert_eq!(set.len(), 2);
    }

    #[test]
    fn from_str_and_try_from() {
        let a: Cpr = "010100-4000".parse().unwrap_or_else(|e| panic!("{e}"));
        let b = Cpr::try_from("0101004000").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(a, b);
        assert!("0101".parse::<Cpr>().is_err());
    }

    #[test]
    fn no_modulus_11_check() {
        // 010100-4001 fails the weighted modulus-11 check; it is still
        // accepted because such numbers have been issued since 2007.
        let weights = [4, 3, 2, 7, 6, 5, 4, 3, 2, 1];
        let digits = ok("0101004001");
        let sum: u32 = digits
            .digits()
            .bytes()
            .zip(weights)
            .map(|(b, w)| u32::from(b - b'0') * w)
            .sum();
        assert_ne!(sum % 11, 0);
    }
}
