//! The bandwidth limits a daemon takes (flags, config file, `limit`): checked alike by the
//! CLI, which refuses a value out of range as a usage error, and by the daemon.

/// The lowest limit taken (10 KiB/s): below it a piece would wait for hours, or for
/// longer than a `Duration` holds.
pub const MIN_LIMIT_MIB_S: f64 = 0.01;
/// The highest limit taken (about a TiB/s: no link is faster).
pub const MAX_LIMIT_MIB_S: f64 = 1e6;

/// Checks a configured limit: a number of MiB/s in
/// [`MIN_LIMIT_MIB_S`]`..=`[`MAX_LIMIT_MIB_S`].
pub fn check_limit(name: &str, mib_per_s: f64) -> Result<f64, String> {
    if (MIN_LIMIT_MIB_S..=MAX_LIMIT_MIB_S).contains(&mib_per_s) {
        Ok(mib_per_s)
    } else {
        // Not in full when huge or tiny: `1e300` would print 301 digits.
        let shown = if mib_per_s == 0.0 || (1e-3..1e9).contains(&mib_per_s.abs()) {
            format!("{mib_per_s}")
        } else {
            format!("{mib_per_s:e}")
        };
        Err(format!(
            "{name}: {shown} is not a number of MiB/s in {MIN_LIMIT_MIB_S}..={MAX_LIMIT_MIB_S}"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_out_of_range_are_refused_in_a_line() {
        assert_eq!(check_limit("upload", 5.0), Ok(5.0));
        for bad in [0.001, 2e6, 1e300, 1e-300, -1.0, f64::NAN] {
            let e = check_limit("upload", bad).unwrap_err();
            assert!(e.starts_with("upload: ") && e.len() < 80, "{e}");
        }
        assert!(check_limit("upload", 1e300).unwrap_err().contains("1e300"));
        assert!(
            check_limit("max_upload_mib_s", 1e-30).is_err(),
            "would wait for ever"
        );
        for bad in [0.0, f64::INFINITY] {
            assert!(check_limit("max_upload_mib_s", bad).is_err());
        }
        assert_eq!(check_limit("max_upload_mib_s", 12.5), Ok(12.5));
    }
}
