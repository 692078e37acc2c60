//! Quantities as people read them in messages: memory in binary units (what an allocation
//! takes), disk space in decimal units (what `df` shows).

/// `bytes` for people: GiB (or TiB, PiB, ...) with one decimal.
pub fn memory_text(bytes: u128) -> String {
    let mut value = bytes as f64 / f64::from(1u32 << 30);
    let mut units = ["GiB", "TiB", "PiB", "EiB", "ZiB", "YiB"].iter().peekable();
    let mut unit = units.next().expect("a unit");
    while value >= 1024.0 && units.peek().is_some() {
        value /= 1024.0;
        unit = units.next().expect("peeked");
    }
    format!("{value:.1} {unit}")
}

/// Bytes in decimal units, 3 significant digits: `512 B`, `1.23 MB`, `61.0 GB`.
pub fn bytes_text(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["kB", "MB", "GB", "TB", "PB"];
    if bytes < 1000 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1000.0;
    let mut unit = 0;
    while value >= 999.5 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    let decimals = match value {
        v if v < 9.995 => 2,
        v if v < 99.95 => 1,
        _ => 0,
    };
    format!("{value:.decimals$} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_in_decimal_units() {
        let texts: Vec<String> = [0, 999, 1000, 1234, 99_949, 999_499, 999_500, 61_000_000_000]
            .into_iter()
            .map(bytes_text)
            .collect();
        assert_eq!(
            texts,
            ["0 B", "999 B", "1.00 kB", "1.23 kB", "99.9 kB", "999 kB", "1.00 MB", "61.0 GB"]
        );
    }

    #[test]
    fn memory_reads_in_binary_units_from_gib_on() {
        let texts: Vec<String> = [0u128, 1 << 29, 1 << 30, 1536 << 20, 1 << 40, 3 << 50]
            .into_iter()
            .map(memory_text)
            .collect();
        assert_eq!(
            texts,
            ["0.0 GiB", "0.5 GiB", "1.0 GiB", "1.5 GiB", "1.0 TiB", "3.0 PiB"]
        );
    }
}
