"""The exceptions harness raises on purpose: bad input, a diverged run, a run stopped early,
machinery that keeps failing."""


class HarnessError(Exception):
    """Bad input from the user (config, names, data paths). The CLI prints it on one line, exit 2."""


class Diverged(RuntimeError):
    """The loss or a gradient became non-finite at optimiser step `step` (counted from 1)."""

    def __init__(self, epoch: int, step: int, what: str):
        super().__init__(f"non-finite {what} at epoch {epoch}, step {step}")
        self.epoch, self.step, self.what = epoch, step, what


class Pruned(Exception):
    """Raised by a training-loop callback to stop a run early on purpose (a sweep's pruner):
    the run is recorded as pruned, not failed."""


class MachineryError(RuntimeError):
    """Trial after trial was interrupted by the machinery (a store, the network, the disk): the
    sweep stops rather than spend its points. The CLI prints it on one line, exit 1."""
