//! Training or evaluation mode, decided one way for every layer of the library.
//!
//! A forward pass is in **training mode** when its backend records gradients (an `Autodiff`
//! backend: `B::ad_enabled`), or inside [`train_mode`]; otherwise it is in **evaluation mode**.
//! This is Burn's own convention (its `Dropout` does the same): `model.valid()` gives the
//! evaluation model. What the mode switches:
//!
//! | layer | training mode | evaluation mode |
//! |---|---|---|
//! | [`BatchNorm2d`](crate::BatchNorm2d) | batch statistics (recorded for the running ones) | running statistics |
//! | derived CNN (`EvalNetwork`) | drop path, auxiliary head | neither |
//! | recurrent networks | the batch's dropout masks | no dropout (masks ignored) |
//!
//! ```
//! use burn::backend::{Autodiff, Flex};
//! use darts_ops::mode::{is_training, train_mode};
//! let dev = Default::default();
//! assert!(is_training::<Autodiff<Flex>>(&dev));
//! assert!(!is_training::<Flex>(&dev));
//! assert!(train_mode(|| is_training::<Flex>(&dev)));
//! ```

use burn::tensor::backend::Backend;
use std::cell::Cell;

thread_local! {
    static FORCED: Cell<Option<bool>> = const { Cell::new(None) };
}

/// Whether a forward pass on `device` runs in training mode.
pub fn is_training<B: Backend>(device: &B::Device) -> bool {
    FORCED
        .with(|f| f.get())
        .unwrap_or_else(|| B::ad_enabled(device))
}

fn forced<R>(mode: bool, f: impl FnOnce() -> R) -> R {
    let previous = FORCED.with(|c| c.replace(Some(mode)));
    let out = f();
    FORCED.with(|c| c.set(previous));
    out
}

/// Run `f` in training mode on every backend, including those without autodiff (finite-difference
/// checks and fast inner-backend evaluations of the training objective). Scopes nest.
pub fn train_mode<R>(f: impl FnOnce() -> R) -> R {
    forced(true, f)
}

/// Run `f` in evaluation mode on every backend, autodiff ones included: gradients still flow,
/// but BatchNorm uses (and does not update) its running statistics. SDARTS-ADV's attack runs
/// this way, as the reference's `model.eval()` during the attack. Scopes nest.
///
/// ```
/// use burn::backend::{Autodiff, Flex};
/// use darts_ops::mode::{eval_mode, is_training};
/// let dev = Default::default();
/// assert!(!eval_mode(|| is_training::<Autodiff<Flex>>(&dev)));
/// ```
pub fn eval_mode<R>(f: impl FnOnce() -> R) -> R {
    forced(false, f)
}
