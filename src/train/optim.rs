//! The optimiser: AdamW with its moments kept as named tensors, so a run can be saved and
//! resumed exactly.

use super::error::TrainError;
use crate::config::TrainConfig;
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use std::collections::HashMap;

/// Adam with decoupled weight decay, its moments kept as named tensors so they can be saved.
pub(crate) struct AdamW {
    pub(crate) vars: Vec<(String, Var)>,
    pub(crate) moments: Vec<(Var, Var)>,
    pub(crate) learning_rate: f64,
    pub(crate) weight_decay: f64,
    pub(crate) step: u64,
}

pub(crate) const BETA1: f64 = 0.9;
pub(crate) const BETA2: f64 = 0.999;
pub(crate) const EPSILON: f64 = 1e-8;

impl AdamW {
    pub(crate) fn new(varmap: &VarMap, config: &TrainConfig) -> Result<AdamW, TrainError> {
        let data = varmap.data().lock().unwrap_or_else(|e| e.into_inner());
        let mut vars: Vec<(String, Var)> =
            data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let moments = vars
            .iter()
            .map(|(_, v)| {
                Ok((
                    Var::zeros(v.shape(), DType::F32, &Device::Cpu)?,
                    Var::zeros(v.shape(), DType::F32, &Device::Cpu)?,
                ))
            })
            .collect::<candle_core::Result<_>>()?;
        Ok(AdamW {
            vars,
            moments,
            learning_rate: config.learning_rate,
            weight_decay: config.weight_decay,
            step: 0,
        })
    }

    pub(crate) fn step(&mut self, loss: &Tensor) -> Result<(), TrainError> {
        let grads = loss.backward()?;
        self.step += 1;
        let t = self.step as i32;
        let (c1, c2) = (1.0 - BETA1.powi(t), 1.0 - BETA2.powi(t));
        for ((_, var), (m, v)) in self.vars.iter().zip(&self.moments) {
            let Some(g) = grads.get(var) else { continue };
            let m_new = ((m.as_tensor() * BETA1)? + (g * (1.0 - BETA1))?)?;
            let v_new = ((v.as_tensor() * BETA2)? + (g.sqr()? * (1.0 - BETA2))?)?;
            let update = ((&m_new / c1)? / ((&v_new / c2)?.sqrt()? + EPSILON)?)?;
            let decayed = (var.as_tensor() * (1.0 - self.learning_rate * self.weight_decay))?;
            var.set(&(decayed - (update * self.learning_rate)?)?)?;
            m.set(&m_new)?;
            v.set(&v_new)?;
        }
        Ok(())
    }

    /// The moments as named tensors, for the resumable state.
    pub(crate) fn named_moments(&self) -> HashMap<String, Tensor> {
        let mut out = HashMap::new();
        for ((name, _), (m, v)) in self.vars.iter().zip(&self.moments) {
            out.insert(format!("adam.m.{name}"), m.as_tensor().clone());
            out.insert(format!("adam.v.{name}"), v.as_tensor().clone());
        }
        out
    }

    pub(crate) fn restore(
        &mut self,
        saved: &HashMap<String, Tensor>,
        step: u64,
    ) -> Result<(), TrainError> {
        for ((name, _), (m, v)) in self.vars.iter().zip(&self.moments) {
            for (kind, var) in [("m", m), ("v", v)] {
                if let Some(t) = saved.get(&format!("adam.{kind}.{name}")) {
                    var.set(t)?;
                }
            }
        }
        self.step = step;
        Ok(())
    }
}
