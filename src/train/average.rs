//! The weights a run ships with `train.neighbour_epochs` above 0: the mean of the kept epoch's
//! and those of up to that many epochs on either side of it. Which epoch the validation loss
//! keeps is partly a draw (R@1 moves by 2–5 points from one epoch to the next in every
//! development world); of a given epoch, the mean of three is the better model, but at the
//! epochs the loss keeps it gained nothing on average, so it is off by default (README,
//! grounding). With 0 the kept epoch's weights pass through unchanged.

use super::error::TrainError;
use candle_core::Tensor;
use std::collections::{BTreeMap, HashMap};

/// A model's parameters by name.
pub(crate) type Weights = HashMap<String, Tensor>;

/// The weights of the epochs the average is over, and of the last few epochs, which become
/// the earlier neighbours when a later epoch is kept.
pub(crate) struct Neighbours {
    radius: usize,
    recent: Vec<(usize, Weights)>,
    window: Vec<(usize, Weights)>,
}

impl Neighbours {
    /// None yet; `radius` epochs on either side of the kept one.
    pub(crate) fn new(radius: usize) -> Neighbours {
        Neighbours {
            radius,
            recent: Vec::new(),
            window: Vec::new(),
        }
    }

    /// Takes epoch `epoch`'s `weights` (the network's own tensors, copied here where held past
    /// this epoch, since the optimiser changes them in place), `kept` when it is the run's new
    /// checkpoint, `kept_epoch` the checkpoint's epoch after it. Returns whether the average
    /// changed.
    pub(crate) fn record(
        &mut self,
        epoch: usize,
        weights: &Weights,
        kept: bool,
        kept_epoch: usize,
    ) -> Result<bool, TrainError> {
        if self.radius == 0 {
            // The kept epoch alone, shipped before the optimiser touches the weights again:
            // nothing to copy, and nothing to hold past this epoch or save for a resume.
            if kept {
                self.window = vec![(epoch, weights.clone())];
            }
            return Ok(kept);
        }
        let joins_window = kept || (!self.window.is_empty() && epoch <= kept_epoch + self.radius);
        let copy = weights
            .iter()
            .map(|(name, tensor)| Ok((name.clone(), tensor.copy()?)))
            .collect::<Result<Weights, TrainError>>()?;
        if kept {
            self.window = self.recent.clone();
        }
        if joins_window {
            self.window.push((epoch, copy.clone()));
        }
        self.recent.push((epoch, copy));
        let surplus = self.recent.len().saturating_sub(self.radius);
        self.recent.drain(..surplus);
        Ok(joins_window)
    }

    /// The epochs averaged, in order.
    pub(crate) fn epochs(&self) -> Vec<usize> {
        self.window.iter().map(|(epoch, _)| *epoch).collect()
    }

    /// The mean of the window's weights; one epoch's are returned as they are, bit for bit.
    pub(crate) fn average(&self) -> Result<Weights, TrainError> {
        let Some(((_, first), rest)) = self.window.split_first() else {
            return Ok(Weights::new());
        };
        if rest.is_empty() {
            return Ok(first.clone());
        }
        let share = 1.0 / self.window.len() as f64;
        first
            .iter()
            .map(|(name, tensor)| {
                let mut sum = tensor.clone();
                for (epoch, weights) in rest {
                    let other = weights.get(name).ok_or_else(|| {
                        TrainError::Data(format!("epoch {epoch}'s weights lack {name}"))
                    })?;
                    sum = (sum + other)?;
                }
                Ok((name.clone(), sum.affine(share, 0.0)?))
            })
            .collect()
    }

    /// Everything held, as tensors named `recent/EPOCH/NAME` and `window/EPOCH/NAME`, for
    /// the state an interrupted run resumes from; none without neighbours.
    pub(crate) fn to_tensors(&self) -> Weights {
        let mut tensors = Weights::new();
        if self.radius == 0 {
            return tensors;
        }
        for (part, epochs) in [("recent", &self.recent), ("window", &self.window)] {
            for (epoch, weights) in epochs {
                for (name, tensor) in weights {
                    tensors.insert(format!("{part}/{epoch}/{name}"), tensor.clone());
                }
            }
        }
        tensors
    }

    /// What [`Neighbours::to_tensors`] saved, picked out of `tensors` (which may hold more).
    pub(crate) fn from_tensors(radius: usize, tensors: &Weights) -> Neighbours {
        let (mut recent, mut window) = (BTreeMap::new(), BTreeMap::new());
        for (key, tensor) in tensors {
            let mut fields = key.splitn(3, '/');
            let (Some(part), Some(Ok(epoch)), Some(name)) = (
                fields.next(),
                fields.next().map(str::parse::<usize>),
                fields.next(),
            ) else {
                continue;
            };
            let held: &mut BTreeMap<usize, Weights> = match part {
                "recent" => &mut recent,
                "window" => &mut window,
                _ => continue,
            };
            held.entry(epoch)
                .or_default()
                .insert(name.to_string(), tensor.clone());
        }
        Neighbours {
            radius,
            recent: recent.into_iter().collect(),
            window: window.into_iter().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn weights(value: f32) -> Weights {
        Weights::from([(
            "w".to_string(),
            Tensor::new(&[value, 2.0 * value], &Device::Cpu).unwrap(),
        )])
    }

    fn mean(neighbours: &Neighbours) -> Vec<f32> {
        neighbours.average().unwrap()["w"].to_vec1().unwrap()
    }

    #[test]
    fn the_kept_epoch_is_averaged_with_its_neighbours_on_either_side() {
        let mut neighbours = Neighbours::new(1);
        // Epoch 1 kept; 2 not (its neighbour); 3 kept; 4 not (its neighbour); 5 not.
        assert!(neighbours.record(1, &weights(1.0), true, 1).unwrap());
        assert_eq!(mean(&neighbours), [1.0, 2.0]);
        assert!(neighbours.record(2, &weights(3.0), false, 1).unwrap());
        assert_eq!(neighbours.epochs(), [1, 2]);
        assert!(neighbours.record(3, &weights(5.0), true, 3).unwrap());
        assert_eq!(neighbours.epochs(), [2, 3]);
        assert!(neighbours.record(4, &weights(10.0), false, 3).unwrap());
        assert!(!neighbours.record(5, &weights(100.0), false, 3).unwrap());
        assert_eq!(neighbours.epochs(), [2, 3, 4]);
        assert_eq!(mean(&neighbours), [6.0, 12.0]);
        // What an interrupted run saves, it resumes with.
        let again = Neighbours::from_tensors(1, &neighbours.to_tensors());
        assert_eq!(again.epochs(), [2, 3, 4]);
        assert_eq!(mean(&again), [6.0, 12.0]);
        assert_eq!(
            again.recent.iter().map(|(e, _)| *e).collect::<Vec<_>>(),
            [5]
        );
    }

    #[test]
    fn without_neighbours_the_kept_epochs_weights_are_shipped_unchanged() {
        let mut neighbours = Neighbours::new(0);
        assert!(neighbours.record(1, &weights(1.0), true, 1).unwrap());
        assert!(!neighbours.record(2, &weights(3.0), false, 1).unwrap());
        assert!(neighbours.record(3, &weights(0.1), true, 3).unwrap());
        assert_eq!(neighbours.epochs(), [3]);
        assert_eq!(mean(&neighbours), [0.1, 0.2]);
        assert!(Neighbours::new(2).average().unwrap().is_empty());
        assert!(neighbours.to_tensors().is_empty());
    }
}
