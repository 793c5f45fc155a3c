//! A retried call with an idempotency key gets one effect and the first
//! call's answer: a framework whose Accept or Kill committed is never told,
//! on a retry of it, that it was refused (the double answer a client that
//! timed out would act on: launching again elsewhere, or giving up on a
//! task that runs). Frameworks record every refusal of a keyed call whose
//! key the committed log already holds.

use super::Oracle;
use crate::sim::Sim;

pub const NAME: &str = "keyed calls answered once";

#[derive(Debug)]
pub struct Idempotency;

impl Oracle for Idempotency {
    fn name(&self) -> &'static str {
        NAME
    }

    fn after_step(&mut self, sim: &mut Sim) -> Result<(), String> {
        for fw in &mut sim.frameworks {
            if let Some(first) = fw.refused_after_effect.first() {
                let detail = format!("{}: {first}", fw.name);
                fw.refused_after_effect.clear();
                return Err(detail);
            }
        }
        Ok(())
    }
}
