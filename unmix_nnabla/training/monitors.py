"""What a training run shows while it runs: NNabla `Monitor` series and the loss plot."""
import os

from nnabla.monitor import Monitor, MonitorSeries

from unmix_nnabla.base.files import atomic_path, writing_into


def make_monitors(folder, name):
    """NNabla Monitor series of the training loss, validation loss and learning rate, in
    folder/<name>_monitor."""
    with writing_into(folder):
        monitor = Monitor(os.path.join(folder, name + "_monitor"))
    return {"train": MonitorSeries("Training loss", monitor, interval=1, verbose=False),
            "valid": MonitorSeries("Validation loss", monitor, interval=1, verbose=False),
            "lr": MonitorSeries("Learning rate", monitor, interval=1, verbose=False)}


def plot_losses(history, path, title, ylabel):
    """The training and validation losses per epoch, as a PNG written atomically."""
    import matplotlib  # deferred: plots only
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # deferred: plots only
    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(epochs, [h["train_loss"] for h in history], label="training")
    ax.plot(epochs, [h["valid_loss"] for h in history], label="validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.set_yscale("log")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
