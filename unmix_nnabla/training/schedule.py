"""The learning-rate schedule and early stopping of training, both on the validation loss,
both with their state in checkpoints (`StateDict`)."""
import numpy as np


class StateDict:
    """An object whose whole state is its attributes: saved in and restored from a checkpoint."""

    def state_dict(self):
        return dict(vars(self))

    def load_state_dict(self, state):
        vars(self).update(state)


class ReduceLROnPlateau(StateDict):
    """Multiply the learning rate by `gamma` after `patience` epochs without a relative
    improvement of 1e-4, then wait `cooldown` epochs (PyTorch's scheduler, which
    open-unmix-pytorch and Sony's scripts use)."""

    def __init__(self, lr, gamma, patience, cooldown=10):
        self.lr, self.gamma, self.patience, self.cooldown = lr, gamma, patience, cooldown
        self.best, self.bad_epochs, self.cooldown_left = np.inf, 0, 0

    def step(self, loss):
        if loss < self.best * (1 - 1e-4):
            self.best, self.bad_epochs = loss, 0
        else:
            self.bad_epochs += 1
        if self.cooldown_left > 0:
            self.cooldown_left -= 1
            self.bad_epochs = 0
        if self.bad_epochs > self.patience:
            self.lr *= self.gamma
            self.cooldown_left, self.bad_epochs = self.cooldown, 0
        return self.lr


class EarlyStopping(StateDict):
    """Stop after `patience` epochs without a better validation loss."""

    def __init__(self, patience):
        self.patience, self.best, self.bad_epochs = patience, np.inf, 0

    def step(self, loss):
        """→ True when this loss is the best so far."""
        if loss < self.best:
            self.best, self.bad_epochs = loss, 0
            return True
        self.bad_epochs += 1
        return False

    @property
    def stop(self):
        return self.bad_epochs >= self.patience
