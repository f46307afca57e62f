//! Turning an `[[experiment]]` into the ordered list of phases to run. Pure: no I/O.
//!
//! A *condition* is one (mode, MPS, sampling) combination. Each repeat runs every condition;
//! odd repeats run them in reverse (A B | B A), so slow drift such as thermal throttling
//! affects every condition alike instead of favouring whichever ran first.

use serde::{Deserialize, Serialize};

use crate::config::{ExperimentConfig, Mode, OnOff};

/// MPS as one phase sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PhaseMps {
    Off,
    On,
    /// Some models on MPS, the rest without (the seed's mixed strategy).
    Mixed,
}

impl PhaseMps {
    pub fn as_str(self) -> &'static str {
        match self {
            PhaseMps::Off => "off",
            PhaseMps::On => "on",
            PhaseMps::Mixed => "mixed",
        }
    }

    /// Whether the MPS control daemon must be running for this phase.
    pub fn needs_mps(self) -> bool {
        !matches!(self, PhaseMps::Off)
    }
}

pub fn mode_str(m: Mode) -> &'static str {
    match m {
        Mode::Alone => "alone",
        Mode::Together => "together",
        Mode::Mixed => "mixed",
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhasePlan {
    pub idx: u32,
    pub mode: Mode,
    pub mps: PhaseMps,
    pub sampling: bool,
    pub repeat: u32,
    /// Models running in this phase (one for `alone`).
    pub models: Vec<String>,
    /// The subset of `models` that joins MPS.
    pub mps_models: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub experiment: String,
    pub phases: Vec<PhasePlan>,
}

impl Plan {
    pub fn needs_mps(&self) -> bool {
        self.phases.iter().any(|p| p.mps.needs_mps())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Condition {
    mode: Mode,
    mps: PhaseMps,
    sampling: bool,
}

fn conditions(e: &ExperimentConfig) -> Vec<Condition> {
    let mut out = Vec::new();
    for &mode in &e.modes {
        let mps_options: Vec<PhaseMps> = match mode {
            Mode::Mixed => vec![PhaseMps::Mixed],
            _ => e
                .mps
                .iter()
                .map(|m| match m {
                    OnOff::Off => PhaseMps::Off,
                    OnOff::On => PhaseMps::On,
                })
                .collect(),
        };
        for mps in mps_options {
            for s in &e.sampling {
                out.push(Condition {
                    mode,
                    mps,
                    sampling: *s == OnOff::On,
                });
            }
        }
    }
    out
}

/// The phases of one run of `e`, in execution order.
pub fn plan(e: &ExperimentConfig) -> Plan {
    let conds = conditions(e);
    let mut phases = Vec::new();
    for repeat in 0..e.repeats {
        let order: Vec<&Condition> = if repeat % 2 == 0 {
            conds.iter().collect()
        } else {
            conds.iter().rev().collect()
        };
        for c in order {
            let groups: Vec<Vec<String>> = match c.mode {
                Mode::Alone => e.models.iter().map(|m| vec![m.clone()]).collect(),
                Mode::Together | Mode::Mixed => vec![e.models.clone()],
            };
            for models in groups {
                let mps_models = match c.mps {
                    PhaseMps::Off => Vec::new(),
                    PhaseMps::On => models.clone(),
                    PhaseMps::Mixed => models
                        .iter()
                        .filter(|m| e.mixed_mps_models.contains(m))
                        .cloned()
                        .collect(),
                };
                phases.push(PhasePlan {
                    idx: phases.len() as u32,
                    mode: c.mode,
                    mps: c.mps,
                    sampling: c.sampling,
                    repeat,
                    models,
                    mps_models,
                });
            }
        }
    }
    Plan {
        experiment: e.name.clone(),
        phases,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::FailurePolicy;

    fn exp(models: &[&str], modes: Vec<Mode>, mps: Vec<OnOff>, repeats: u32) -> ExperimentConfig {
        ExperimentConfig {
            name: "e".into(),
            kind: Default::default(),
            models: models.iter().map(|s| s.to_string()).collect(),
            modes,
            mps,
            iterations: Some(10),
            duration_s: None,
            warmup: 1,
            repeats,
            schedule: None,
            sampling: vec![OnOff::On],
            mixed_mps_models: vec!["b".into()],
            cooldown_s: 0,
            phase_timeout_s: 60,
            on_failure: FailurePolicy::Continue,
            output_tolerance: 0.0,
        }
    }

    #[test]
    fn seed_matrix_has_alone_per_model_and_one_together() {
        let p = plan(&exp(
            &["a", "b"],
            vec![Mode::Alone, Mode::Together],
            vec![OnOff::Off, OnOff::On],
            1,
        ));
        let shape: Vec<(Mode, PhaseMps, usize)> = p
            .phases
            .iter()
            .map(|p| (p.mode, p.mps, p.models.len()))
            .collect();
        assert_eq!(
            shape,
            vec![
                (Mode::Alone, PhaseMps::Off, 1),
                (Mode::Alone, PhaseMps::Off, 1),
                (Mode::Alone, PhaseMps::On, 1),
                (Mode::Alone, PhaseMps::On, 1),
                (Mode::Together, PhaseMps::Off, 2),
                (Mode::Together, PhaseMps::On, 2),
            ]
        );
        assert!(p
            .phases
            .iter()
            .enumerate()
            .all(|(i, ph)| ph.idx as usize == i));
    }

    #[test]
    fn repeats_alternate_order_abba() {
        let p = plan(&exp(
            &["a"],
            vec![Mode::Together],
            vec![OnOff::Off, OnOff::On],
            2,
        ));
        let order: Vec<(u32, PhaseMps)> = p.phases.iter().map(|p| (p.repeat, p.mps)).collect();
        assert_eq!(
            order,
            vec![
                (0, PhaseMps::Off),
                (0, PhaseMps::On),
                (1, PhaseMps::On),
                (1, PhaseMps::Off)
            ]
        );
    }

    #[test]
    fn mixed_puts_only_the_named_subset_on_mps() {
        let p = plan(&exp(
            &["a", "b"],
            vec![Mode::Mixed],
            vec![OnOff::Off, OnOff::On],
            1,
        ));
        assert_eq!(
            p.phases.len(),
            1,
            "mixed is one condition whatever `mps` says"
        );
        assert_eq!(p.phases[0].mps_models, vec!["b".to_string()]);
        assert!(p.needs_mps());
    }

    #[test]
    fn sampling_off_doubles_the_conditions() {
        let mut e = exp(&["a"], vec![Mode::Together], vec![OnOff::Off], 1);
        e.sampling = vec![OnOff::On, OnOff::Off];
        let p = plan(&e);
        assert_eq!(
            p.phases.iter().map(|p| p.sampling).collect::<Vec<_>>(),
            vec![true, false]
        );
        assert!(!p.needs_mps());
    }
}
