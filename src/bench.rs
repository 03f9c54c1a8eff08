//! `fedcrm bench secagg`: measured, never asserted.

use anyhow::Result;

pub fn secagg(_n: usize, _d: usize, _drop: f64, _json: bool) -> Result<()> {
    anyhow::bail!("not yet implemented")
}
