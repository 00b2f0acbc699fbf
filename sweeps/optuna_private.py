"""optuna's private API gatscale relies on, in one place: no other module names it, and
`tests/test_private_apis.py` runs `check` against the installed optuna, so a release that moves it
fails there, naming it, instead of when a search resumes.

`FrozenTrial._trial_id`: a trial's id in its storage. `sweeps.tune` settles the trials a dead driver
left RUNNING: it finishes each with `study.tell` and records why with `trial.set_user_attr`, which
takes a live `optuna.Trial(study, trial_id)`, the handle `study.ask` returns. The public API names a
trial by its `number`, which counts within one study, while the id counts over every study in the
storage (a search's journal holds one study per grid point), so a number is not an id, and optuna
has no public call from one to the other.
"""
from __future__ import annotations

import optuna

PINNED = "optuna>=4.0,<6"  # pyproject's pin, which tests/test_private_apis.py holds to this


def moved(api: str, how: str = "is gone") -> str:
    """The error text when a private API changed: what, in which release, and the pin it was written for."""
    return (f"optuna's {api} {how} in optuna {optuna.__version__}; sweeps/optuna_private.py is written for "
            f"{PINNED} (pyproject's pin): adapt it there, or install an optuna in that range")


def trial_handle(study: optuna.Study, frozen: optuna.trial.FrozenTrial) -> optuna.Trial:
    """A live handle on `frozen`, a trial of `study` that may have been created by another process,
    through which it can be told and given user attributes."""
    trial_id = getattr(frozen, "_trial_id", None)
    if not isinstance(trial_id, int):
        raise RuntimeError(moved("FrozenTrial._trial_id"))
    return optuna.Trial(study, trial_id)


def check() -> None:
    """Raise RuntimeError, naming the API, when the installed optuna no longer gives a trial's
    storage id as `trial_handle` reads it: the handle of the second study's first trial (number 0,
    a different storage id) must write to that trial."""
    storage = optuna.storages.InMemoryStorage()
    for name in ("first", "second"):
        study = optuna.create_study(storage=storage, study_name=name)
        study.ask()
    frozen = study.trials[0]
    trial_handle(study, frozen).set_user_attr("probe", 1)
    if study.trials[0].user_attrs.get("probe") != 1:
        raise RuntimeError(moved("FrozenTrial._trial_id", "no longer names the trial's storage id"))
