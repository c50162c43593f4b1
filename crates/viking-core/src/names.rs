//! Generated names for jobs that were not given one, in Docker's style
//! (`adjective_surname`), with a short random suffix so that two servers
//! generating at once rarely collide (a collision is caught by the store's
//! create-if-absent anyway).

const LEFT: &[&str] = &[
    "admiring", "bold", "brave", "calm", "clever", "eager", "fervent", "gallant", "happy", "jolly",
    "keen", "lucid", "merry", "nifty", "quirky", "serene", "stoic", "swift", "vivid", "zealous",
];
const RIGHT: &[&str] = &[
    "bjorn", "erik", "floki", "freya", "gunnar", "harald", "ingrid", "ivar", "lagertha", "leif",
    "olaf", "ragnar", "rollo", "sigrid", "sven", "thora", "torvi", "ubbe", "ulf", "astrid",
];

/// A name from a random number (the caller owns the randomness).
pub fn generate(r: u64) -> String {
    let l = LEFT[(r % LEFT.len() as u64) as usize];
    let rr = RIGHT[((r / 31) % RIGHT.len() as u64) as usize];
    format!("{l}_{rr}_{:04x}", (r >> 32) & 0xffff)
}

#[cfg(test)]
mod tests {
    #[test]
    fn generated_names_are_valid() {
        for r in [0u64, 1, 12345, u64::MAX, 0xdead_beef_cafe] {
            crate::job::validate_name(&super::generate(r)).unwrap();
        }
    }
}
